"""`mnist-pipeline sync` and `audit --online`: what to send to W&B, and sending it through a backend.

The plan comes from the lineage store and the offline run folders alone (no network); `run_sync` carries it out
through a `WandbBackend`: `wandb_io.WandbClient` (the real W&B) or `recording.RecordingWandb` (records the calls in
order and answers from an in-memory W&B, for `sync --dry-run` and the tests). What
has been done is kept in the store (`sync_log`, `promotions.wandb_applied_at`), so a second sync sends nothing:
re-running `wandb sync` on an uploaded run would duplicate its artifact versions (wandb issue #3962).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from mnist_pipeline.lineage.refs import wandb_ref
from mnist_pipeline.lineage.store import LineageStore, RunRecord
from mnist_pipeline.lineage.wandb_io import synced_marker


class WandbBackend(Protocol):
    """What `sync` and `audit --online` ask of W&B. `wandb_io.WandbClient` is the real one; `recording.RecordingWandb`
    records the calls and answers from an in-memory W&B (`sync --dry-run`, tests)."""

    def check(self) -> str: ...  # the entity to use when a run names none; raises WandbUnavailable
    def run_exists(self, entity: str | None, project: str, run_id: str) -> bool: ...
    def upload(self, run_dir: Path, entity: str | None, project: str, run_id: str) -> str | None: ...
    def run_inputs(self, entity: str | None, project: str, run_id: str) -> set[str]: ...
    def declare_inputs(self, entity: str | None, project: str, run_id: str, refs: list[str]) -> None: ...
    def add_aliases(self, ref: str, aliases: list[str]) -> list[str]: ...
    def lookup_artifact(self, ref: str) -> dict | None: ...


def find_offline_dir(run: RunRecord, search_dirs: Sequence[Path] = ()) -> Path | None:
    """The `offline-run-*-<id>` folder of a recorded run: where it was recorded, else under `search_dirs`."""
    rid = run.run_id
    candidates = [Path(run.wandb_dir)] if run.wandb_dir else []
    for base in map(Path, search_dirs):
        candidates.append(base)
        candidates += sorted(base.glob(f"offline-run-*-{rid}")) + sorted(base.glob(f"wandb/offline-run-*-{rid}"))
    return next((c for c in candidates if (c / f"run-{rid}.wandb").is_file()), None)


def plan_sync(store: LineageStore, *, search_dirs: Sequence[Path] = (), run_ids: Sequence[str] | None = None) -> dict:
    """What a sync has to do, from the store and the offline run folders alone (no network): per run an upload
    and one `use` per recorded input, then the promotions not yet applied. Done work is marked 'done'."""
    done = {(r["run_id"], r["action"], r["ref"]): r for r in store.sync_log()}
    uploaded = {r for r, a, _ in done if a == "upload"}
    runs = []
    for run in store.runs():
        rid = run.run_id
        if run_ids and rid not in run_ids:
            continue
        entry = {"run_id": rid, "job_type": run.job_type, "status": run.status, "mode": run.wandb_mode,
                 "project": run.wandb_project, "entity": run.wandb_entity, "run_dir": None, "actions": [],
                 "note": ""}
        runs.append(entry)
        if run.wandb_mode == "online":
            entry["note"] = "recorded online: W&B has it and its inputs already"
            continue
        if run.wandb_mode not in ("offline", None):
            entry["note"] = f"W&B mode was {run.wandb_mode}: nothing to upload"
            continue
        if run.status == "running":
            entry["note"] = "still running: sync it once it has finished"
            continue
        d = find_offline_dir(run, search_dirs)
        entry["run_dir"] = str(d) if d else None
        up = {"action": "upload", "ref": str(d) if d else (run.wandb_dir or ""), "status": "pending", "detail": ""}
        if rid in uploaded:
            row = next(v for (r, a, _), v in done.items() if r == rid and a == "upload")
            up.update(status="done", ref=row["ref"], detail=f"uploaded {row['done_at']}")
        elif d is None:
            up.update(status="missing", detail=f"offline run folder not found (recorded at {run.wandb_dir})")
        elif synced_marker(d).exists():
            up.update(marker=True, detail="already uploaded by `wandb sync` (its .synced marker)")
        entry["actions"].append(up)
        for u in store.edges(rid)["used"]:
            ref = wandb_ref(run.wandb_entity, run.wandb_project, u.name, u.digest)
            row = done.get((rid, "use", ref))
            entry["actions"].append({"action": "use", "ref": ref, "artifact": f"{u.name}:v{u.version}",
                                     "producer_run_id": u.producer_run_id,
                                     "status": "done" if row else "pending",
                                     "detail": f"declared {row['done_at']}" if row else ""})
    promotions = []
    for p in store.promotions():
        if p.wandb_applied_at is not None:
            continue
        art = store.artifact(p.artifact_id)
        producer = store.run(art.producer_run_id)
        if run_ids and art.producer_run_id not in run_ids:
            continue
        promotions.append({
            "promotion_id": p.promotion_id, "artifact": f"{art.name}:v{art.version}", "decision": p.decision,
            "ref": wandb_ref(producer.wandb_entity if producer else None,
                             (producer.wandb_project if producer else None) or "", art.name, art.digest),
            "aliases": p.aliases,
            "producer_run_id": art.producer_run_id, "status": "pending", "detail": ""})
    return {"runs": runs, "promotions": promotions}


def run_sync(store: LineageStore, plan: dict, backend: WandbBackend, *, dry_run: bool = False, entity: str | None = None) -> dict:
    """Carry out `plan` through `backend`, in order: check, uploads, input edges (per run), promotions.

    The check comes first and raises WandbUnavailable before anything is sent or written. Each finished step
    is recorded in the store at once (unless `dry_run`), so an interrupted sync resumes where it stopped and a
    repeated one sends nothing. A step that fails is reported and the steps that depend on it are 'blocked'.
    `entity`: the answer of a `backend.check()` the caller already made (the check is then not repeated)."""
    entity = entity or backend.check()
    online = {r.run_id for r in store.runs() if r.wandb_mode == "online"}
    uploaded = {r["run_id"] for r in store.sync_log() if r["action"] == "upload"} | online

    def record(*args):
        if not dry_run:
            store.mark_synced(*args)

    for run in plan["runs"]:
        for a in run["actions"]:
            if a["action"] != "upload" or a["status"] != "pending":
                continue
            try:
                if a.get("marker"):
                    pass
                elif backend.run_exists(run["entity"], run["project"], run["run_id"]):
                    a["detail"] = "already in W&B: not uploaded again (no duplicate versions)"
                else:
                    url = backend.upload(Path(a["ref"]), run["entity"], run["project"], run["run_id"])
                    a["detail"] = url or "uploaded"
                a["status"] = "done"
                uploaded.add(run["run_id"])
                record(run["run_id"], "upload", a["ref"], a["detail"])
            except Exception as e:
                a.update(status="failed", detail=f"{type(e).__name__}: {e}")

    for run in plan["runs"]:
        uses = [a for a in run["actions"] if a["action"] == "use" and a["status"] == "pending"]
        if not uses:
            continue
        if run["run_id"] not in uploaded:
            for a in uses:
                a.update(status="blocked", detail="the run itself is not in W&B")
            continue
        ready = []
        for a in uses:
            if a["producer_run_id"] not in uploaded:
                a.update(status="blocked", detail=f"its producing run {a['producer_run_id']} is not in W&B")
            else:
                ready.append(a)
        if not ready:
            continue
        try:
            present = backend.run_inputs(run["entity"], run["project"], run["run_id"])
            todo = []
            for a in ready:
                if a["ref"].rsplit("/", 1)[-1] in present:
                    a.update(status="done", detail="already declared in W&B")
                else:
                    todo.append(a)
            if todo:
                backend.declare_inputs(run["entity"], run["project"], run["run_id"], [a["ref"] for a in todo])
                for a in todo:
                    a.update(status="done", detail="declared: use_artifact on the resumed run")
            for a in ready:
                record(run["run_id"], "use", a["ref"], a["detail"])
        except Exception as e:
            for a in ready:
                if a["status"] == "pending":
                    a.update(status="failed", detail=f"{type(e).__name__}: {e}")

    for p in plan["promotions"]:
        if p["producer_run_id"] not in uploaded:
            p.update(status="blocked", detail=f"its producing run {p['producer_run_id']} is not in W&B")
            continue
        try:
            added = backend.add_aliases(p["ref"], p["aliases"])
            p.update(status="done", detail=f"added {', '.join(added)}" if added else "aliases already set")
            if not dry_run:
                store.mark_promotion_applied(p["promotion_id"])
        except Exception as e:
            p.update(status="failed", detail=f"{type(e).__name__}: {e}")

    statuses = [a["status"] for r in plan["runs"] for a in r["actions"]] + [p["status"] for p in plan["promotions"]]
    return {**plan, "entity": entity, "dry_run": dry_run,
            "counts": {s: statuses.count(s) for s in sorted(set(statuses))},
            "ok": not any(s in ("failed", "blocked", "missing") for s in statuses)}


def wandb_findings(report: dict, backend: WandbBackend) -> dict[str, dict | None]:
    """What W&B holds for each artifact version of an audit report (None where it holds nothing)."""
    backend.check()
    out = {}
    for lab, art in report["artifacts"].items():
        run = report["runs"].get(art["producer_run_id"], {}).get("wandb", {})
        ref = wandb_ref(run.get("entity"), run.get("project") or "", art["name"], art["digest"])
        out[lab] = backend.lookup_artifact(ref)
    return out
