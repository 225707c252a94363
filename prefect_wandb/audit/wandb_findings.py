"""What W&B says about the audited artifacts (`audit --online`): read through a `WandbBackend`
(`wandb_findings`), then folded into the report as more checks (`apply_wandb_findings`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect_wandb.audit.entries import AuditReport, Check, RunEntry, finish
from prefect_wandb.hashing import md5_b64
from prefect_wandb.records import WandbVersion
from prefect_wandb.refs import wandb_ref

if TYPE_CHECKING:
    from prefect_wandb.sync import WandbBackend


def apply_wandb_findings(report: AuditReport, found: dict[str, WandbVersion | None]) -> AuditReport:
    """Fold what W&B says about each artifact (from `wandb_findings`) into the report.

    `found[label]` is None when W&B has no such version (an offline run not synced yet: noted, not a failure),
    else W&B's `WandbVersion` of it. W&B holding
    other content for the same sha256 alias, or naming another producing run, is a mismatch."""
    online = {}
    for lab, info in found.items():
        art = report.artifacts[lab]
        entry: dict[str, Any] = {"found": info is not None}
        if info is None:
            entry["note"] = "not in W&B (offline run not synced yet: `sync`)"
            online[lab] = entry
            continue
        entry.update(ref=info.ref, version=info.version, aliases=info.aliases, logged_by=info.logged_by,
                     used_by=info.used_by)
        producers = set(art.producers)
        if info.logged_by and info.logged_by not in producers:
            report.checks.append(Check("wandb", lab, info.ref, "mismatch", ", ".join(sorted(producers)),
                                       info.logged_by, f"W&B says it was logged by run {info.logged_by}, the "
                                       f"lineage store by {', '.join(sorted(producers))}"))
        for f in art.files:
            remote = info.files.get(f.relpath)
            local = Path(art.path) / f.relpath
            if remote is None or not local.is_file():
                continue
            mine = md5_b64(local)
            ok = remote == mine
            report.checks.append(Check("wandb", lab, str(local), "ok" if ok else "mismatch", remote, mine,
                                       "" if ok else f"md5 {mine} differs from W&B's copy {info.ref} ({remote})"))
        missing = [r for r in art.consumers if _in_wandb(report.runs.get(r))
                   and r not in info.used_by]
        if missing:
            entry["missing_input_edges"] = missing
        for r in missing:
            report.checks.append(Check("wandb", lab, info.ref, "mismatch", r, ", ".join(info.used_by) or "no run",
                                       f"run {r} used {lab} in the lineage store; W&B does not list it among the "
                                       "version's users"))
        held = {a.alias for a in art.aliases} if _in_wandb(report.runs.get(
            art.producer_run_id)) else set()  # an offline run's promotion reaches W&B with its sync
        for alias in sorted(held & {"candidate", "production"}):
            if alias not in info.aliases:
                report.checks.append(Check(
                    "wandb", lab, info.ref, "mismatch", alias, ", ".join(info.aliases),
                    f"alias {alias!r} is on {lab} in the lineage store, not on W&B's version {info.version}"))
        online[lab] = entry
    report.wandb_online = online
    finish(report)
    return report


def _in_wandb(run: RunEntry | None) -> bool:
    """A finished run W&B holds: recorded online, or uploaded by `sync` (its inputs are then declared there)."""
    if run is None or run.status != "finished":
        return False
    return run.wandb.mode == "online" or run.wandb.synced_at is not None


def wandb_findings(report: AuditReport, backend: WandbBackend) -> dict[str, WandbVersion | None]:
    """What W&B holds for each artifact version of an audit report (None where it holds nothing), read as
    `sync --verify` reads it (`verify.lookup_versions`)."""
    from prefect_wandb.wandb_compare import lookup_versions

    refs: dict[str, str] = {}
    for lab, art in report.artifacts.items():
        producer = report.runs.get(art.producer_run_id)
        wb = producer.wandb if producer else None
        refs[lab] = wandb_ref(wb.entity if wb else None, (wb.project if wb else None) or "", art.name, art.digest)
    return lookup_versions(backend, refs)
