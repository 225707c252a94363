"""`audit(store, target)`: identify, walk, verify, and assemble the report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect_wandb.artifact_files import local_folder
from prefect_wandb.audit.checks import Verifier
from prefect_wandb.audit.entries import (
    CONFIG_SECTION,
    FAILED,
    ArtifactEntry,
    AuditPromotion,
    AuditReport,
    CodeEntry,
    DownstreamRun,
    FileEntry,
    RunEntry,
    WandbEntry,
    conclude,
    finish,
)
from prefect_wandb.audit.identify import identify, near_misses
from prefect_wandb.audit.signatures import SIGNATURE_ORDER, check_signatures
from prefect_wandb.audit.walk import Walk
from prefect_wandb.records import SyncLogRecord
from prefect_wandb.refs import digest_alias
from prefect_wandb.store import ArtifactRecord, LineageStore, RunRecord


def _summary(rec: ArtifactRecord) -> dict:
    """The scalar facts of an artifact's metadata (lists only when short), for the tree."""
    skip = {"inputs", "files", "producer", "raw_files", "notes", "confusion_matrix", "mirrors", "train",
            "verify", "verify_bundle"}
    out: dict[str, Any] = {}
    for k, v in rec.metadata.items():
        if k in skip or v is None:
            continue
        if isinstance(v, (str, int, float, bool)) or isinstance(v, list) and len(v) <= 12 and all(isinstance(x, (int, float, str)) for x in v) or isinstance(v, dict) and len(json.dumps(v, default=str)) <= 200:
            out[k] = v
    return out


def _run_entry(run_id: str, run: RunRecord | None, used: list, produced: list, sync_rows: list[SyncLogRecord],
               role: str) -> RunEntry:
    """A run of the walk as the report shows it; `run` None: one the store does not hold (job type "?", status
    "missing")."""
    env = (run.env if run else None) or {}
    upload = next((r for r in sync_rows if r.action == "upload"), None)
    return RunEntry(
        run_id=run_id, job_type=run.job_type if run else "?", status=run.status if run else "missing",
        started_at=run.started_at if run else None, finished_at=run.finished_at if run else None,
        error=run.error if run else None, flow_run_id=(run.flow_run_id if run else None) or env.get("flow_run_id"),
        group=run.run_group if run else None,
        code=CodeEntry(git_commit=env.get("git_commit"), git_dirty=env.get("git_dirty"),
                       source_dir=env.get("source_dir")),
        python=env.get("python"), platform=env.get("platform"), seed=env.get("seed"),
        packages=env.get("packages") or {},
        config=(run.config if run else None) or {}, config_section=CONFIG_SECTION.get(run.job_type if run else ""),
        summary=(run.summary if run else None) or {},
        wandb=WandbEntry(mode=run.wandb_mode if run else None, run_id=run_id,
                         url=(run.wandb_url if run else None) or (upload.detail if upload and upload.detail and
                                                                  upload.detail.startswith("http") else None),
                         dir=run.wandb_dir if run else None, project=run.wandb_project if run else None,
                         entity=run.wandb_entity if run else None,
                         synced_at=upload.done_at if upload else None,
                         inputs_declared=[r.ref for r in sync_rows if r.action == "use"]),
        used=[a.label for a in used], produced=[a.label for a in produced], role=role,
    )


def _graph_edges(w: Walk) -> list[list[str]]:
    edges = []
    for run_id in w.upstream_runs + w.downstream_runs:
        for u in w.used.get(run_id, []):
            if u.artifact_id in w.arts:
                edges.append([f"artifact:{u.label}", f"run:{run_id}"])
        for p in w.produced.get(run_id, []):
            if p.artifact_id in w.arts:
                edges.append([f"run:{run_id}", f"artifact:{p.label}"])
    return edges


def audit(store: LineageStore, target: str, *, check_raw_files: bool = True,
          public_key: Path | None = None) -> AuditReport:
    """The whole audit of `target` (`as_json(report)` is the `--json` output); `report.exit_code` is the CLI's
    exit code.

    `public_key`: the trusted key attested files are verified with (else each attestation's own signer.pub)."""
    ident = identify(store, target)
    report = AuditReport(query=target, query_kind=ident.kind, query_path=str(ident.path) if ident.path else None,
                         query_sha256=ident.sha256 if ident.kind == "file" else None, identified_by=ident.how,
                         lineage_db=str(store.path))
    if not ident.matches:
        if ident.kind == "ref":
            message = f"{target}: no such artifact version in the lineage store {store.path}"
        else:
            what = f"file sha256 {ident.sha256}" if ident.kind == "file" else f"folder digest {ident.sha256}"
            message = (f"{target}: not produced by any recorded run ({what} is in no artifact of the lineage "
                       f"store {store.path})")
        conclude(report, "unknown", message)
        if ident.kind == "file" and ident.path is not None:
            report.near_misses = near_misses(store, ident.path)
        return report

    w = Walk(store)
    seen: set = set()
    for rec in ident.matches:
        report.subjects.append(rec.label)
        report.upstream.append(w.upstream(rec, seen, role="subject"))
        w.roles[rec.artifact_id] = "subject"
    w.downstream({r.artifact_id for r in ident.matches})

    deleted = store.deletions()
    v = Verifier(deleted)
    if ident.kind == "file" and ident.how == "sha256":
        subj = ident.matches[0]
        v.add("query-file", subj.label, str(ident.path), "ok", ident.sha256, ident.sha256,
              f"same content as {subj.label}/{ident.relpath}")
    for rec in w.arts.values():
        v.artifact(rec, w.used)
        if check_raw_files:
            v.raw_files(rec)
    queried = (ident.matches[0].artifact_id, ident.path) if ident.kind == "file" and ident.how == "sha256" and \
        ident.path is not None else None
    report.signatures = check_signatures(store, w.arts, v, public_key=public_key, query=queried)
    # the queried file was named: make sure it is checked
    if ident.kind == "file" and ident.how == "location" and not any(c.path == str(ident.path) for c in v.checks):
        v.add("query-file", ident.matches[0].label, str(ident.path), "unrecorded", None, ident.sha256,
              "in an artifact folder but not on record")

    by_label: dict[str, ArtifactEntry] = {}
    for aid, rec in sorted(w.arts.items()):
        lab = rec.label
        # its own files and record; a signature that does not verify is shown as such ("signature"), not as a
        # changed file
        checks = [c for c in v.checks if c.artifact == lab and c.kind != "signature"]
        files: list[FileEntry] = []
        for f in rec.files:
            where = str(local_folder(rec.path) / f.relpath)
            c = next((c for c in checks if c.kind == "artifact-file" and c.path == where), None)
            files.append(FileEntry(f.relpath, f.sha256, f.size, c.status if c else "unchecked",
                                   c.actual if c else None))
        raw = []
        for r in rec.metadata.get("raw_files", []):
            c = next((c for c in checks if c.kind == "raw-file" and (
                c.path == r["stored"] if r.get("stored") else Path(c.path or "").name == r["name"])), None)
            raw.append({**r, "path": c.path if c else None, "status": c.status if c else "unchecked"})
        sig = [e.status for e in report.signatures if e.artifact == lab]
        by_label[lab] = ArtifactEntry(
            label=lab, name=rec.name, type=rec.type, version=rec.version, digest=rec.digest,
            wandb_alias=digest_alias(rec.digest), path=rec.path, role=w.roles[aid],
            producer_run_id=rec.producer_run_id, producers=store.producers(aid),
            consumers=store.consumers(aid), created_at=rec.created_at, files=files, raw_files=raw,
            summary=_summary(rec), aliases=store.aliases_of(aid), metadata=rec.metadata,
            status="tampered" if any(c.status in FAILED for c in checks) else
                   "deleted" if any(c.status == "deleted" for c in checks) else "ok",
            deleted=deleted.get(aid),
            # the worst of its attestations' verdicts
            signature=next(s for s in SIGNATURE_ORDER if s in sig) if sig else None,
        )
    report.artifacts = by_label
    for run_id in w.upstream_runs + w.downstream_runs:
        report.runs[run_id] = _run_entry(run_id, w.runs[run_id], w.used[run_id], w.produced[run_id],
                                         store.sync_log(run_id),
                                         "upstream" if run_id in w.upstream_runs else "downstream")
    report.downstream = [DownstreamRun(r, report.runs[r].job_type, report.runs[r].status,
                                       [a.label for a in w.used[r]], [a.label for a in w.produced[r]])
                         for r in w.downstream_runs]
    def compared_with(p) -> str | None:  # the metrics artifact production's value was read from
        return store.artifact(p.production_metrics_id).label if p.production_metrics_id is not None else None

    for aid in sorted(w.arts):
        for p in store.promotions(aid):
            report.promotions.append(AuditPromotion.of(p, w.arts[aid].label, "decision about it", compared_with(p)))
    # decisions where one of these models was the production model compared against
    for p in store.promotions(production_artifact_ids=list(w.arts)):
        if p.production_artifact_id is None or p.artifact_id == p.production_artifact_id:
            continue
        report.promotions.append(AuditPromotion.of(p, store.artifact(p.artifact_id).label,
                                                   f"compared against {w.arts[p.production_artifact_id].label}",
                                                   compared_with(p)))
    report.promotions.sort(key=lambda p: p.promotion_id)  # the history in the order it was decided
    report.checks = v.checks
    report.edges = _graph_edges(w)
    finish(report)
    return report
