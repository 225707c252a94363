"""`audit` and `sync`: the auditor's commands. No Prefect import, so they start fast.

audit: prove which data, code and settings made a file (an ONNX or weights file found anywhere, or an artifact
reference), and that nothing was swapped since. sync: upload offline W&B runs and complete W&B's lineage graph.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from prefect_wandb.audit import AuditError, apply_wandb_findings, audit
from prefect_wandb.audit.render import render_tree, write_report
from prefect_wandb.cli.args import Parents, add_command, err, open_store, program
from prefect_wandb.exit_codes import Exit
from prefect_wandb.records import as_json

if TYPE_CHECKING:  # sync imports wandb: only the sync command pays for it
    from prefect_wandb.store import LineageStore
    from prefect_wandb.sync import Action, PromotionPlan, SyncPlan

AUDIT_EPILOG = """\
verdicts: 0 VERIFIED (identified, and every digest it could reach matches the files on disk), 3 TAMPERED (a file
or a lineage record differs from its recorded digest, or an attested file's signature does not verify; the file and
the failed check are named), 4 unknown (not produced by any recorded run); --online: 5 when W&B is unreachable,
refuses the key or a W&B read fails. A file without an attestation is "unsigned": shown, not a failure.

examples:
  {prog} audit /srv/models/model.onnx --lineage-db runs/lineage.db
  {prog} audit NAME:production --json
  {prog} audit model.onnx --public-key keys/signing.pub   (its signature against a trusted key)
  {prog} audit NAME-onnx:v3 --report audit.html     (or .md with a Mermaid graph, or .svg)
"""

SYNC_EPILOG = """\
Steps, in order: `wandb sync` of each offline run folder; for each run, resume it and `use_artifact` every
input it recorded, on the exact version (`name:sha256-<digest[:16]>`); then the recorded promotions as aliases
(`candidate`, `production`). Online runs whose W&B calls failed (an artifact upload, an input edge, an alias)
get the same: only what W&B is missing, on the resumed run. Done steps are kept in the lineage store, so a second
sync sends nothing. Exit 1 when some steps failed or were blocked (named per run; the others were done and
recorded), 5 when W&B is not usable (no API key, host unreachable, key refused): nothing was sent or changed.

--verify (read-only): every artifact version of the store is looked up in W&B under its `sha256-` alias: same
files (md5), logged by the recorded run, every recorded consumer among its `used_by`, `candidate`/`production`
on the right version. Differences are printed; exit 3 when there are any, 5 when a W&B read fails. A stored file
that no longer has its recorded sha256 is named as the local difference (TAMPERED, as `audit` says it), not blamed
on W&B, and `sync` is not offered for it.
"""


def add_parsers(sub, parents: Parents) -> None:
    """Add `audit` and `sync` to the CLI's sub-command parsers."""
    a = add_command(sub, "audit", parents=[parents.store, parents.json], epilog=AUDIT_EPILOG.format(prog=program().prog),
                    help="prove which data, code and settings made a file or artifact, and re-check every digest "
                    "(exit 0 verified, 3 tampered, 4 unknown)",
                    description="Identify a file (by sha256) or an artifact reference in the lineage store, walk "
                    "its lineage back to the data and forward to its evaluations, validations and promotions, and "
                    "re-verify every digest it can reach.")
    a.add_argument("target", help="a file (ONNX, model.pt, ...) or artifact folder anywhere on disk, or an "
                   "artifact reference: name:vN, name:sha256-<hex>, name:latest, name:production")
    a.add_argument("--report", metavar="FILE", help="also write a report a person can open: .md (Mermaid graph "
                   "+ tree), .html (self-contained SVG graph + tree) or .svg (the graph)")
    a.add_argument("--skip-raw-files", action="store_true", help="do not re-hash the raw source files "
                   "(outside the artifact store; absent ones are never a failure)")
    a.add_argument("--online", action="store_true", help="also look every artifact version up in W&B "
                   "(wandb.Api: logged_by, used_by, file md5s) and fail if W&B holds other content")
    a.add_argument("--public-key", metavar="PUB", help="the signer's public key (PEM) to verify attested files "
                   "with (default: each attestation's own signer.pub, which shows consistency, not trust)")
    a.set_defaults(handler=audit_main)
    s = add_command(sub, "sync", parents=[parents.store, parents.json], epilog=SYNC_EPILOG,
                    help="upload offline W&B runs and complete W&B's lineage graph (input edges, promotions); "
                    "idempotent",
                    description="Upload offline W&B runs (`wandb sync`), then declare the inputs that offline "
                    "mode could not record and apply recorded promotions. Reports what it did per run.")
    s.add_argument("--wandb-dir", action="append", default=[], metavar="DIR",
                   help="also look for offline-run-* folders here (when they were moved); repeatable")
    s.add_argument("--run", action="append", default=[], metavar="RUN_ID", help="only these runs; repeatable")
    s.add_argument("--dry-run", action="store_true", help="print the W&B calls that would be sent, in order, "
                   "with their refs; contacts nothing and changes nothing")
    s.add_argument("--verify", action="store_true", help="read-only: compare W&B with the lineage store and "
                   f"print what differs (exit {int(Exit.VERIFY_FAILED)} when anything does); sends and changes "
                   "nothing")
    s.set_defaults(handler=sync_main)


# --------------------------------------------------------------------------------------------- audit


def audit_main(ns: argparse.Namespace, backend=None) -> int:
    store = open_store(ns.lineage_db, "audit")
    if isinstance(store, Exit):
        return store
    public_key = Path(ns.public_key) if getattr(ns, "public_key", None) else None
    if public_key is not None:  # a bad key is a usage error before the audit starts, not a failed signature
        from prefect_wandb.provenance.keys import KeyFileError, load_public

        try:
            load_public(public_key)
        except KeyFileError as e:
            err("audit", f"--public-key: {e}")
            return Exit.USAGE
    try:
        report = audit(store, ns.target, check_raw_files=not ns.skip_raw_files, public_key=public_key)
    except AuditError as e:
        err("audit", str(e))
        return Exit.USAGE
    if ns.online and report.status != "unknown":
        from prefect_wandb.audit.wandb_findings import wandb_findings
        from prefect_wandb.wandb.client import WandbClient, wandb_error_line

        try:
            apply_wandb_findings(report, wandb_findings(report, backend or WandbClient()))
        except Exception as e:  # WandbUnavailable, or any W&B error: one line, never a traceback
            err("audit", f"--online: {wandb_error_line(e)}")
            return Exit.WANDB_UNAVAILABLE
    if ns.report:
        try:
            report.report = str(write_report(report, Path(ns.report)))
        except (AuditError, OSError) as e:
            err("audit", f"--report: {e}")
            return Exit.USAGE
    if ns.json:
        print(json.dumps(as_json(report), indent=2, default=str))
    else:
        print(render_tree(report), end="")
        if ns.report:
            print(f"report: {report.report}")
    code = Exit(report.exit_code)  # the code its JSON and report file record
    if code != Exit.OK:
        err("audit", report.message)
    return code


# --------------------------------------------------------------------------------------------- sync


def render_sync(result: SyncPlan, calls: list[tuple] | None = None) -> str:
    dry = result.dry_run
    out = [("DRY RUN (nothing sent, nothing recorded): " if dry else "") +
           f"W&B sync; runs that name no entity go to {result.entity}"]

    def line(a: Action | PromotionPlan) -> str:
        was, st = a.was, a.status
        if was == "done":
            state = "already done"
        elif dry and st == "done":
            state = "would be done"
        else:
            state = st
        detail = f" ({a.detail})" if a.detail else ""
        return f"{state}{detail}"

    for run in result.runs:
        out.append(f"{run.job_type} run {run.run_id} [{run.mode}, {run.status}]" + (f": {run.note}" if run.note else ""))
        for a in run.actions:
            what = "upload " + a.ref if a.action == "upload" else f"use    {a.ref} ({a.artifact})"
            out.append(f"  {what}: {line(a)}")
    if result.promotions:
        out.append("promotions")
    for p in result.promotions:
        out.append(f"  {p.artifact} {p.decision} -> aliases {', '.join(p.aliases)} on {p.ref}: {line(p)}")
    if calls is not None:
        out.append("calls that would be sent, in order:")
        out += [f"  {i}. {c[0]}(" + ", ".join(repr(x) for x in c[1:]) + ")" for i, c in enumerate(calls, 1)]
    items = result.steps()
    now = sum(1 for a in items if a.was != "done" and a.status == "done")
    already = sum(1 for a in items if a.was == "done")
    bad = {s: sum(1 for a in items if a.status == s) for s in ("failed", "blocked", "missing")}
    tail = "".join(f", {n} {s}" for s, n in bad.items() if n)
    verb = "would do" if dry else "did"
    out.append(f"{'OK' if result.ok else 'INCOMPLETE'}: {verb} {now} step(s), {already} already done{tail}")
    return "\n".join(out) + "\n"


def sync_main(ns: argparse.Namespace, backend=None) -> int:
    # The store first, read-only (SQLite mode=ro): a missing one is exit 2, an empty or damaged one exit 6, before
    # W&B is asked anything; --dry-run and --verify never open it any other way.
    store = open_store(ns.lineage_db, "sync")
    if isinstance(store, Exit):
        return store
    from prefect_wandb.recording import RecordingWandb
    from prefect_wandb.sync import plan_sync, run_sync
    from prefect_wandb.wandb.client import WandbClient, WandbUnavailable, wandb_error_line

    if getattr(ns, "verify", False):
        return verify_main(ns, backend or WandbClient(), store)
    if backend is None and ns.dry_run:  # what was recorded online is in W&B; the rest is what the plan sends
        backend = RecordingWandb.as_the_store_left_it(store)
    elif backend is None:
        backend = WandbClient()
    entity = None
    if not ns.dry_run:
        try:  # before the store is opened for writing: without a usable W&B nothing is changed
            entity = backend.check()
        except Exception as e:  # WandbUnavailable or any other W&B error: one line
            err("sync", f"{wandb_error_line(e)}; nothing was sent or changed (`{program().prog} sync --dry-run` "
                 "shows the plan)")
            return Exit.WANDB_UNAVAILABLE
        store = open_store(ns.lineage_db, "sync", readonly=False)
        if isinstance(store, Exit):
            return store
    plan = plan_sync(store, search_dirs=[Path(d) for d in ns.wandb_dir], run_ids=ns.run or None)
    for item in plan.steps():
        item.was = item.status
    try:
        result = run_sync(store, plan, backend, dry_run=ns.dry_run, entity=entity)
    except WandbUnavailable as e:
        err("sync", f"{e}; nothing was sent or changed")
        return Exit.WANDB_UNAVAILABLE
    calls = list(getattr(backend, "calls", [])) if ns.dry_run else None
    if ns.json:
        print(json.dumps({**as_json(result), **({"calls": calls} if calls is not None else {})}, indent=2,
                         default=str))
    else:
        print(render_sync(result, calls), end="")
    if not result.ok:
        err("sync", "some steps failed or were blocked (see above); run sync again once they can succeed")
    return Exit.OK if result.ok else Exit.FAILED


def verify_main(ns: argparse.Namespace, backend, store: LineageStore) -> int:
    """`sync --verify`: read-only comparison of W&B with the lineage store (opened read-only)."""
    from prefect_wandb.wandb.client import wandb_error_line
    from prefect_wandb.wandb_compare import render_verify, verdict, verify_wandb

    try:
        result = verify_wandb(store, backend, run_ids=ns.run or None)
    except Exception as e:  # W&B unusable or a W&B read failed: one line, never a traceback
        err("sync", f"--verify: {wandb_error_line(e)}; nothing was changed")
        return Exit.WANDB_UNAVAILABLE
    print(json.dumps(result.as_json(), indent=2, default=str) if ns.json else render_verify(result, program().prog), end="\n" if ns.json else "")
    if not result.ok:
        err("sync", f"--verify: {verdict(result, program().prog)}")
    return Exit.OK if result.ok else Exit.VERIFY_FAILED
