"""`mnist-pipeline reproduce | impact | rollback | unreject | gc`: the operator's commands on the lineage store.

No Prefect import. reproduce imports torch (it re-runs training); the others read the store and the disk only.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

from mnist_pipeline.flows.audit_cli import open_store
from mnist_pipeline.flows.common_args import Parents, add_command, err
from mnist_pipeline.flows.exit_codes import Exit
from prefect_wandb import holds, reproduction_plan, retention
from prefect_wandb import impact as impact_mod
from prefect_wandb import rollback as rollback_mod
from prefect_wandb.layout import TRASH

R = reproduction_plan
RB = rollback_mod
REPRODUCE_EPILOG = """\
verdicts: 0 IDENTICAL (every file of every re-made artifact has its recorded sha256), 3 DIFFERS (the files are
named), 4 unknown or the recorded inputs are gone (deleted by gc, missing, or changed: nothing was re-run), 1 the
re-run failed (the message names the step).

Bit-identity holds on CPU with the same torch and onnx versions, the recorded intra-op thread count (used by
default), the same dataset artifact, config and seed, and the same CPU instruction-set family.
"""
ROLLBACK_EPILOG = """\
The model rolled back from is marked rejected (with the reason): the promotion gate keeps it candidate, also when
the sweep or run that made it runs again, until `mnist-pipeline unreject REF`.

0 production moved (or --dry-run: it would move); 7 REFUSED (the target failed validation, no longer verifies, or
was deleted by gc); 4 no production model, no previous one, or --to names no recorded model; 5 online and the
W&B alias could not be moved (the decision is recorded; `sync` retries it).
"""
UNREJECT_EPILOG = """\
Only the rejection ends: production does not move. The next run or sweep that makes this model again takes it to
the gate, which compares it with production as any candidate (a candidate verdict of the gate itself on the same
test set stands until a run with --force).

0 done; 4 no such model, or it is not rejected; 2 usage; 6 the lineage store is damaged.
"""
GC_EPILOG = """\
Never removed: what an alias (production, candidate) or one of the newest --keep-last models came from or made,
and whatever a running flow run holds, uses or has produced. Deletions are recorded in the lineage store: `audit` says
"deleted by gc on <date>" and `reproduce` says the inputs are gone. Exit 1 when some removals failed (named; the
others were done and recorded).
"""


def add_parsers(sub, parents: Parents) -> None:
    common = [parents.store, parents.json]
    r = add_command(sub, "reproduce", parents=common, epilog=REPRODUCE_EPILOG,
                    help="re-run the recorded stages that made an artifact in a scratch folder and compare every "
                    "file's digest (exit 0 identical, 3 differs, 4 unknown or inputs gone)",
                    description="Re-run training (and export or evaluation) from the recorded dataset artifact, "
                    "config, seed and thread count, in a scratch folder, and compare the files bit for bit.")
    r.add_argument("target", help="a model, ONNX or metrics file or folder, or a reference (convnet:production, "
                   "convnet-onnx:v3)")
    r.add_argument("--workdir", help="where to re-run (kept); default: a temporary folder, removed afterwards")
    r.add_argument("--threads", type=int, default=0, help="intra-op threads (default: the recorded count; another "
                   "count gives other bits on CPU)")
    r.set_defaults(handler=reproduce_main)
    i = add_command(sub, "impact", parents=common, help="everything derived from an artifact: models, ONNX files, "
                    "metrics, validations, promotions and the aliases that depend on it")
    i.add_argument("target", help="a file or folder anywhere on disk, or a reference (mnist:v0, convnet:v2)")
    i.add_argument("--report", metavar="FILE", help="also write the picture: .html (self-contained SVG graph + "
                   "tree) or .svg (the graph)")
    i.set_defaults(handler=impact_main)
    b = add_command(sub, "rollback", parents=common, epilog=ROLLBACK_EPILOG, help="move production back to the "
                    "previous production model (or --to a validated one), recorded as a promotion decision")
    b.add_argument("--to", metavar="REF", help="the model to make production (convnet:v2, a model.pt file); "
                   "default: the production model before the current one")
    b.add_argument("--name", default="convnet", help="the model's artifact name (default: %(default)s)")
    b.add_argument("--reason", default="", help="why, recorded with the decision")
    b.add_argument("--requested-by", default=None, help="who or what asked (default: user@host)")
    b.add_argument("--wandb-mode", choices=["auto", "online", "offline"], default="auto",
                   help="online: move the W&B alias now; offline: leave it to `mnist-pipeline sync` "
                   "(auto: online when a W&B API key is configured)")
    b.add_argument("--dry-run", action="store_true", help="say what would happen; record nothing")
    b.set_defaults(handler=rollback_main)
    u = add_command(sub, "unreject", parents=common, epilog=UNREJECT_EPILOG, help="let the promotion gate consider "
                    "a model again that a rollback rejected")
    u.add_argument("target", metavar="REF", help="the rejected model (convnet:v5, a model.pt file)")
    u.add_argument("--reason", default="", help="why, recorded with it")
    u.add_argument("--requested-by", default=None, help="who or what asked (default: user@host)")
    u.set_defaults(handler=unreject_main)
    g = add_command(sub, "gc", parents=common, epilog=GC_EPILOG, help="remove artifact folders, staging leftovers "
                    "and checkpoints that no alias or recent model needs (dry run unless --apply)")
    g.add_argument("--keep-last", type=int, default=3, metavar="N", help="also keep the newest N models of each "
                   "name and their lineage (default: %(default)s, at least 1)")
    g.add_argument("--older-than", type=float, default=0, metavar="DAYS", help="only remove what is older than "
                   "DAYS days (default: %(default)s)")
    g.add_argument("--apply", action="store_true", help="remove them (default: only print the plan)")
    g.add_argument("--artifacts-dir", default=None, help="the artifact folder (default: beside the lineage store, "
                   "artifacts/)")
    g.set_defaults(handler=gc_main)


def _identify(store, target: str, cmd: str):
    """(records, exit code): the artifact versions a file, folder or reference names."""
    from prefect_wandb.audit import AuditError, identify

    try:
        ident = identify(store, target)
    except AuditError as e:
        err(cmd, str(e))
        return None, Exit.USAGE
    if not ident.matches:
        what = "no such artifact version" if ident.kind == "ref" else "not produced by any recorded run"
        err(cmd, f"{target}: {what} in the lineage store {store.path}")
        return None, Exit.NOT_FOUND
    return ident.matches, Exit.OK


def _deletions(store) -> dict:
    return store.deletions()


# --------------------------------------------------------------------------------------------- impact


def impact_main(ns: argparse.Namespace) -> int:
    store = open_store(ns.lineage_db, "impact")  # read-only
    if isinstance(store, Exit):
        return store
    recs, code = _identify(store, ns.target, "impact")
    if recs is None:
        return code
    report = impact_mod.impact(store, recs[:1])
    if ns.report:
        try:
            report["report"] = str(write_picture(report, Path(ns.report)))
        except (ValueError, OSError) as e:
            err("impact", f"--report: {e}")
            return Exit.USAGE
    if ns.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(impact_mod.render_tree(report))
        if ns.report:
            print(f"report: {report['report']}")
    return Exit.OK


def write_picture(report: dict, path: Path) -> Path:
    from prefect_wandb.impact import render_html, render_svg

    if path.suffix not in (".html", ".svg"):
        raise ValueError(f"{path}: give a .html or .svg file")
    path.write_text(render_html(report) if path.suffix == ".html" else render_svg(report))
    return path.resolve()


# --------------------------------------------------------------------------------------------- reproduce


def _environment() -> dict:
    import platform

    from mnist_pipeline.config import PACKAGES, SOURCE_ROOT
    from prefect_wandb.environment import code_state, package_versions

    return {**code_state(SOURCE_ROOT), "packages": package_versions(PACKAGES), "python": platform.python_version()}


def reproduce_main(ns: argparse.Namespace) -> int:
    store = open_store(ns.lineage_db, "reproduce")  # read-only: a reproduction records nothing
    if isinstance(store, Exit):
        return store
    recs, code = _identify(store, ns.target, "reproduce")
    if recs is None:
        return code
    target = recs[0]
    try:
        recipe = R.plan_reproduction(store, target)
    except R.CannotReproduce as e:
        err("reproduce", str(e))
        return Exit.USAGE
    result: dict = {"target": target.label, "steps": [s.describe() for s in recipe.steps],
                    "dataset": recipe.dataset.label, "lineage_db": str(store.path)}
    gone = R.missing_inputs(recipe, _deletions(store))
    if gone:
        result.update(status="inputs-gone", exit_code=Exit.NOT_FOUND, inputs_gone=gone)
        return _reproduce_out(ns, result, f"the recorded inputs are gone: {'; '.join(gone)}")
    warnings = R.environment_differences(recipe.train.env, _environment())
    for w in warnings:
        err("reproduce", f"warning: {w}")
    result["warnings"] = warnings
    from mnist_pipeline import reproduce as executor

    scratch = Path(ns.workdir) if ns.workdir else Path(tempfile.mkdtemp(prefix="mnist-reproduce-"))
    try:
        if ns.workdir and scratch.exists() and any(scratch.iterdir()):
            err("reproduce", f"--workdir {scratch} is not empty")
            return Exit.USAGE
        run = executor.run(recipe, scratch, threads=ns.threads or None)
    except R.CannotReproduce as e:
        err("reproduce", str(e))
        return Exit.USAGE
    except Exception as e:  # the step's own message, not a traceback
        err("reproduce", f"re-running failed: {type(e).__name__}: {e}")
        return Exit.FAILED
    finally:
        if not ns.workdir:
            shutil.rmtree(scratch, ignore_errors=True)
    result.update(threads=run.threads, notes=run.notes, comparisons=[c.to_dict() for c in run.comparisons],
                  workdir=str(scratch) if ns.workdir else None)
    differing = [f"{c.artifact}/{f}" for c in run.comparisons for f in c.differing]
    if all(c.identical for c in run.comparisons):
        result.update(status="identical", exit_code=Exit.OK)
        return _reproduce_out(ns, result, None)
    result.update(status="differs", exit_code=Exit.VERIFY_FAILED, differing=differing)
    return _reproduce_out(ns, result, f"DIFFERS: {', '.join(differing)}")


def _reproduce_out(ns, result: dict, message: str | None) -> int:
    if ns.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        lines = [f"Reproduce {result['target']} from {result['dataset']}: "
                 + " -> ".join(f"{s['job_type']} (run {s['run_id']})" for s in result["steps"])]
        if "threads" in result:
            lines.append(f"  on CPU, {result['threads']} intra-op thread(s), in a scratch folder")
        for n in result.get("notes", []):
            lines.append(f"  note: {n}")
        for c in result.get("comparisons", []):
            lines.append(f"  {c['artifact']}: {'IDENTICAL' if c['identical'] else 'DIFFERS'} "
                         f"(recorded {c['digest_recorded'][:16]}, reproduced {(c['digest_reproduced'] or '-')[:16]})")
            for f in c["files"]:
                lines.append(f"    {f['status']:9s} {f['relpath']}"
                             + (f"  {(f['recorded'] or '-')[:16]} -> {(f['reproduced'] or '-')[:16]}"
                                if f["status"] != "identical" else ""))
        for g in result.get("inputs_gone", []):
            lines.append(f"  input gone: {g}")
        lines.append(result["status"].upper())
        print("\n".join(lines))
    if message:
        err("reproduce", message)
    return result["exit_code"]


# --------------------------------------------------------------------------------------------- rollback


def _requested_by(ns, command: str = "rollback") -> str:
    if ns.requested_by:
        return ns.requested_by
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()} (mnist-pipeline {command})"


def rollback_main(ns: argparse.Namespace, backend=None) -> int:
    store = open_store(ns.lineage_db, "rollback", readonly=ns.dry_run)  # a dry run writes nothing
    if isinstance(store, Exit):
        return store
    current, previous = RB.previous_production(store, ns.name)
    if current is None:
        err("rollback", f"there is no production {ns.name} model to roll back")
        return Exit.NOT_FOUND
    if ns.to:
        recs, code = _identify(store, ns.to, "rollback")
        if recs is None:
            return code
        target = recs[0]
    elif previous is None:
        err("rollback", f"production {current.label} has no previous production model; give --to REF")
        return Exit.NOT_FOUND
    else:
        target = previous
    result = {"name": ns.name, "from": current.label, "to": target.label, "dry_run": ns.dry_run}
    if target.artifact_id == current.artifact_id:
        err("rollback", f"{target.label} is already production")
        return Exit.USAGE
    problems = RB.refusals(store, target, _deletions(store))
    if problems:
        result.update(status="refused", refusals=problems)
        _rollback_out(ns, result)
        err("rollback", f"REFUSED {target.label}: {'; '.join(problems)}")
        return Exit.REFUSED
    requested_by = _requested_by(ns)
    reason = (f"rollback from {current.label} to {target.label}, requested by {requested_by}"
              + (f": {ns.reason}" if ns.reason else ""))
    result.update(reason=reason, requested_by=requested_by, rejected=current.label)
    if ns.dry_run:
        result["status"] = "would roll back"
        _rollback_out(ns, result)
        return Exit.OK
    decision = store.record_rollback(target.artifact_id, reason=reason, requested_by=requested_by)
    result.update(status="rolled back", promotion_id=decision.promotion_id, wandb="pending `mnist-pipeline sync`")
    code = Exit.OK
    if _online(ns.wandb_mode):
        try:
            _move_alias_online(store, target, decision, backend)
            result["wandb"] = "production alias moved"
        except Exception as e:  # recorded either way; sync applies it later
            result["wandb"] = f"failed ({type(e).__name__}: {e}); `mnist-pipeline sync` applies it later"
            code = Exit.WANDB_UNAVAILABLE
    _rollback_out(ns, result)
    return code


def _online(mode: str) -> bool:
    if mode == "offline":
        return False
    if mode == "online":
        return True
    from prefect_wandb.wandb.credentials import has_api_key

    return has_api_key()


def _move_alias_online(store, target, decision, backend=None) -> None:
    """`production` in W&B where the store has it now (`follow_store`: a flow may have promoted since)."""
    from prefect_wandb.alias_sync import follow_store
    from prefect_wandb.refs import wandb_ref
    from prefect_wandb.wandb.client import WandbClient

    backend = backend or WandbClient()
    entity = backend.check()

    def move(rec, aliases: list[str]) -> bool:
        run = store.run(rec.producer_run_id)
        backend.add_aliases(wandb_ref((run.wandb_entity if run else None) or entity,
                                      (run.wandb_project if run else None) or "", rec.name, rec.digest), aliases)
        return True
    follow_store(store, target.name, ["production"], move)
    store.mark_promotion_applied(decision.promotion_id)


def _rollback_out(ns, result: dict) -> None:
    if ns.json:
        print(json.dumps(result, indent=2, default=str))
        return
    print(f"{result['status'].upper()}: production {result['name']} {result['from']} -> {result['to']}")
    for p in result.get("refusals", []):
        print(f"  refused: {p}")
    if result.get("reason"):
        print(f"  reason: {result['reason']}")
    if result.get("rejected"):
        print(f"  {result['rejected']} {'would be' if result.get('dry_run') else 'is'} rejected: the promotion gate "
              f"keeps it candidate until `mnist-pipeline unreject {result['rejected']}`")
    if result.get("wandb"):
        print(f"  W&B: {result['wandb']}")


# --------------------------------------------------------------------------------------------- unreject


def unreject_main(ns: argparse.Namespace) -> int:
    from prefect_wandb import rejections

    store = open_store(ns.lineage_db, "unreject", readonly=False)
    if isinstance(store, Exit):
        return store
    recs, code = _identify(store, ns.target, "unreject")
    if recs is None:
        return code
    model = recs[0]
    requested_by = _requested_by(ns, "unreject")
    lifted = rejections.unreject(store, model.artifact_id, reason=ns.reason or "no reason given",
                                 requested_by=requested_by) if model.type == "model" else None
    if lifted is None:
        err("unreject", f"{model.label} is not rejected" if model.type == "model" else
            f"{model.label} is a {model.type}, not a model")
        return Exit.NOT_FOUND
    result = {"model": model.label, "status": "unrejected", "was": lifted.describe(), "requested_by": requested_by,
              "reason": ns.reason}
    if ns.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"UNREJECTED {model.label}: the promotion gate considers it again (it was {lifted.describe()})")
    return Exit.OK


# --------------------------------------------------------------------------------------------- gc


def gc_main(ns: argparse.Namespace) -> int:
    store = open_store(ns.lineage_db, "gc", readonly=not ns.apply)  # a plan writes nothing
    if isinstance(store, Exit):
        return store
    if ns.keep_last < 1 or ns.older_than < 0:
        err("gc", "--keep-last must be at least 1 and --older-than at least 0")
        return Exit.USAGE
    artifacts_dir = Path(ns.artifacts_dir).expanduser().resolve() if ns.artifacts_dir else \
        Path(store.path).parent / "artifacts"
    if not artifacts_dir.is_dir():
        err("gc", f"no artifact folder at {artifacts_dir} (give --artifacts-dir)")
        return Exit.USAGE
    from prefect_wandb.environment import process_gone

    if ns.apply:  # a plan reads the store as it is (it may be a read-only copy)
        store.fail_dead_runs(process_gone)  # a killed run must not keep its staging folder (or everything) forever
        holds.expire(store, process_gone)  # nor a killed flow its dataset
    plan = retention.plan(store, artifacts_dir, keep_last=ns.keep_last, older_than_days=ns.older_than,
                          deleted=_deletions(store))
    result = {"apply": ns.apply, "artifacts_dir": str(artifacts_dir), "keep_last": ns.keep_last,
              "older_than_days": ns.older_than, **plan.to_dict(), "removed": [], "failed": [], "skipped": []}
    if ns.apply:
        by = _gc_identity()
        trash = artifacts_dir / TRASH
        for r in plan.removals:
            try:
                if r.kind == "artifact":
                    moved = trash / f"{r.artifact_id}-{os.getpid()}-{Path(r.path).name}"

                    def remove(src=Path(r.path), dst=moved) -> None:
                        dst.parent.mkdir(parents=True, exist_ok=True)
                        src.rename(dst)  # atomic, inside the store's transaction; the bytes go after it

                    done = store.delete_artifact(r.artifact_id, path=r.path, bytes=r.bytes, reason=r.reason,
                                                 deleted_by=by, remove=remove)
                    if done:
                        shutil.rmtree(moved, ignore_errors=True)
                else:
                    done = _remove_path(r)
            except OSError as e:
                result["failed"].append({"path": r.path, "error": str(e)})
                continue
            (result["removed"] if done else result["skipped"]).append(r.path)
        if trash.is_dir() and not any(trash.iterdir()):
            trash.rmdir()
    _gc_out(ns, result)
    return Exit.FAILED if result["failed"] else Exit.OK


def _gc_identity() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"


def _remove_path(r: retention.Removal) -> bool:
    p = Path(r.path)
    if not p.exists():
        return False
    if p.is_dir():
        shutil.rmtree(p)
    else:
        p.unlink()
    return True


def _gc_out(ns, result: dict) -> None:
    if ns.json:
        print(json.dumps(result, indent=2, default=str))
        return
    verb = "removed" if result["apply"] else "would remove"
    lines = [("" if result["apply"] else "DRY RUN (nothing removed; --apply to remove): ")
             + f"gc of {result['artifacts_dir']} (keep the newest {result['keep_last']} model(s)"
             + (f", only older than {result['older_than_days']:g} day(s)" if result["older_than_days"] else "") + ")"]
    for r in result["removals"]:
        what = r["artifact"] or r["kind"]
        state = ""
        if result["apply"]:
            state = " [skipped: in use now]" if r["path"] in result["skipped"] else \
                " [FAILED]" if any(f["path"] == r["path"] for f in result["failed"]) else ""
        lines.append(f"  {verb} {what}: {r['path']} ({retention.human(r['bytes'])}): {r['reason']}{state}")
    if not result["removals"]:
        lines.append("  nothing to remove")
    for lab, why in sorted(result["kept"].items()):
        lines.append(f"  keep {lab}: {why}")
    freed = sum(r["bytes"] for r in result["removals"] if not result["apply"] or r["path"] in result["removed"])
    lines.append(f"space {'freed' if result['apply'] else 'that would be freed'}: {retention.human(freed)}")
    print("\n".join(lines))
