"""The read-side questions several commands ask of the lineage store (pure reads: no Prefect, no W&B)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from prefect_wandb.records import as_json
from prefect_wandb.store import ArtifactRecord, LineageStore


def evaluations(store: LineageStore, model_artifact_id: int, dataset_digest: str | None = None, *,
                job_type: str = "evaluate", metrics_type: str = "metrics",
                test_set_type: str = "dataset") -> list[ArtifactRecord]:
    """The `metrics_type` artifacts of a model's finished `job_type` runs, oldest first; with `dataset_digest`, only
    those measured on the `test_set_type` artifact with that digest. The newest finished evaluation is the last."""
    out = []
    for run_id in store.consumers(model_artifact_id):
        run = store.run(run_id)
        if run is None or run.job_type != job_type or run.status != "finished":
            continue
        edges = store.edges(run_id)
        if dataset_digest is not None and not any(u.type == test_set_type and u.digest == dataset_digest
                                                  for u in edges.used):
            continue
        out += [a for a in edges.produced if a.type == metrics_type]
    return out


@dataclass(frozen=True)
class StageWandb:
    """Where one stage run's W&B records went: its mode, its W&B URL (online) or folder (offline), and what a failed
    W&B call left out (`<action> <ref>` per gap, for `sync`)."""

    job_type: str
    run_id: str
    mode: str | None
    url: str | None
    dir: str | None
    missing: list[str]


@dataclass(frozen=True)
class WandbWhereabouts:
    """Where a flow run's W&B records went: `line` says it for the console, the summary JSON and the Prefect
    artifact; `sync_command` is the `sync` that uploads what W&B is missing (None when nothing is)."""

    mode: str | None  # online, offline, disabled, mixed; None: no stage runs recorded
    line: str
    group_urls: list[str]
    offline_dirs: list[str]
    needs_sync: bool
    sync_command: str | None
    runs: list[StageWandb]

    def as_json(self) -> dict[str, Any]:
        return as_json(self)

    @classmethod
    def from_json(cls, saved: Mapping[str, Any]) -> WandbWhereabouts:
        """Read back from `as_json` (a summary's JSON, a Prefect result)."""
        kept = {f.name: saved[f.name] for f in fields(cls) if f.name in saved}
        runs = [StageWandb(**r) for r in kept.pop("runs", None) or []]
        return cls(**kept, runs=runs)


def where_records_went(store: LineageStore, flow_run_id: str | None, *, offline_reason: str | None = None,
                       command: str = "prefect-wandb") -> WandbWhereabouts:
    """Where a flow run's W&B records went, from the store alone: per stage run its mode and W&B URL or folder, the
    W&B calls that failed, and one `line` for the console, the summary JSON and the Prefect artifact (naming
    `<command> sync` when W&B is missing something)."""
    runs = store.runs(flow_run_id) if flow_run_id else []
    # runnable as shown: a store URL without its password (libpq takes it from PGPASSWORD or ~/.pgpass)
    where = store.url.without_password() if store.url is not None else store.path
    sync_cmd = f"`{command} sync --lineage-db {where}`"
    entries, group_urls, folders, failed_calls = [], [], [], []
    for r in runs:
        gaps = store.wandb_gaps(r.run_id)
        failed_calls += [g.call for g in gaps if not g.error.startswith("not sent:")]
        entries.append(StageWandb(job_type=r.job_type, run_id=r.run_id, mode=r.wandb_mode, url=r.wandb_url,
                                  dir=r.wandb_dir, missing=[f"{g.action} {g.ref}" for g in gaps]))
        if r.wandb_mode == "online" and r.wandb_url and r.run_group:
            url = r.wandb_url.split("/runs/")[0] + f"/groups/{r.run_group}"
            if url not in group_urls:
                group_urls.append(url)
        elif r.wandb_mode == "offline" and r.wandb_dir:
            folder = str(Path(r.wandb_dir).parent)
            if folder not in folders:
                folders.append(folder)
    modes = {e.mode for e in entries}
    needs_sync = bool(folders or any(e.missing for e in entries))
    parts = []
    if group_urls:
        parts.append(f"online at {', '.join(group_urls)}")
    if folders:
        parts.append(f"offline in {', '.join(folders)}" + (f" ({offline_reason})" if offline_reason else ""))
    if modes == {"disabled"}:
        parts.append("disabled (nothing sent to W&B; the lineage store has every record)")
    if failed_calls:
        parts.append(f"W&B failed at {', '.join(dict.fromkeys(failed_calls))}; the lineage store has every record")
    line = "W&B: " + ("; ".join(parts) if parts else "no stage runs recorded")
    if needs_sync:
        line += f"; {sync_cmd} uploads what W&B is missing"
    mode = modes.pop() if len(modes) == 1 else ("mixed" if modes else None)
    return WandbWhereabouts(mode=mode, line=line, group_urls=group_urls, offline_dirs=folders, needs_sync=needs_sync,
                            sync_command=sync_cmd.strip("`") if needs_sync else None, runs=entries)
