"""`gc`: remove what no alias, recent model or running flow needs; every deletion recorded in the lineage store."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shutil
import socket
from pathlib import Path

from prefect_wandb import holds, retention
from prefect_wandb.artifact_files import (
    RemoteArtifactsError,
    artifacts_location,
    cache_root,
    check_remote,
    is_remote,
    local_folder,
    remove_remote,
)
from prefect_wandb.cli.args import Parents, add_command, err, open_store
from prefect_wandb.exit_codes import Exit
from prefect_wandb.layout import TRASH
from prefect_wandb.locations import LocationError
from prefect_wandb.settings import ARTIFACTS_ENV

GC_EPILOG = """\
Never removed: what an alias (production, candidate), the production before the current one (what `rollback`
goes back to) or one of the newest --keep-last models came from or made, and whatever a running flow run holds,
uses or has produced. Deletions are recorded in the lineage store: `audit` says "deleted by gc on <date>" and
`reproduce` says the inputs are gone. Exit 1 when some removals failed (named; the
others were done and recorded).
"""



def add_parsers(sub, parents: Parents) -> None:
    common = [parents.store, parents.json]
    g = add_command(sub, "gc", parents=common, epilog=GC_EPILOG, help="remove artifact folders, staging leftovers "
                    "and checkpoints that no alias, rollback target or recent model needs (dry run unless --apply)")
    g.add_argument("--keep-last", type=int, default=3, metavar="N", help="also keep the newest N models of each "
                   "name and their lineage (default: %(default)s, at least 1)")
    g.add_argument("--older-than", type=float, default=0, metavar="DAYS", help="only remove what is older than "
                   "DAYS days (default: %(default)s)")
    g.add_argument("--apply", action="store_true", help="remove them (default: only print the plan)")
    g.add_argument("--artifacts-dir", default=None, help="the artifact folder, or s3://bucket/prefix (its cache on "
                   "this host too) (default: beside the lineage store, artifacts/; for a store in PostgreSQL, "
                   "$PREFECT_WANDB_ARTIFACTS)")
    g.set_defaults(handler=gc_main)


# --------------------------------------------------------------------------------------------- gc


def gc_main(ns: argparse.Namespace) -> int:
    store = open_store(ns.lineage_db, "gc", readonly=not ns.apply)  # a plan writes nothing
    if isinstance(store, Exit):
        return store
    if ns.keep_last < 1 or ns.older_than < 0:
        err("gc", "--keep-last must be at least 1 and --older-than at least 0")
        return Exit.USAGE
    if not ns.artifacts_dir and store.folder is None:  # a store in a database has no folder beside it
        ns.artifacts_dir = os.environ.get(ARTIFACTS_ENV)
        if not ns.artifacts_dir:
            err("gc", f"the lineage store {store.path} is a database: give --artifacts-dir (or ${ARTIFACTS_ENV})")
            return Exit.USAGE
    try:
        where = artifacts_location(ns.artifacts_dir, "--artifacts-dir") if ns.artifacts_dir else \
            (store.folder or Path()) / "artifacts"
        if isinstance(where, str):
            check_remote(where)
    except (LocationError, RemoteArtifactsError) as e:
        err("gc", str(e))
        return Exit.USAGE
    # a folder, or an S3 location whose cache on this host holds the staging, checkpoints and trash
    artifacts_dir = where.expanduser().resolve() if isinstance(where, Path) else cache_root(where)
    if isinstance(where, Path) and not artifacts_dir.is_dir():
        err("gc", f"no artifact folder at {artifacts_dir} (give --artifacts-dir)")
        return Exit.USAGE
    from prefect_wandb.environment import process_gone

    if ns.apply:  # a plan reads the store as it is (it may be a read-only copy)
        store.fail_dead_runs(process_gone)  # a killed run must not keep its staging folder (or everything) forever
        holds.expire(store, process_gone)  # nor a killed flow its dataset
    plan = retention.plan(store, where if isinstance(where, str) else artifacts_dir, keep_last=ns.keep_last, older_than_days=ns.older_than,
                          deleted=store.deletions())
    result = {"apply": ns.apply, "artifacts_dir": str(where if isinstance(where, str) else artifacts_dir), "keep_last": ns.keep_last,
              "older_than_days": ns.older_than, **plan.to_dict(), "removed": [], "failed": [], "skipped": []}
    if ns.apply:
        by = _gc_identity()
        trash = artifacts_dir / TRASH
        for r in plan.removals:
            try:
                if r.kind == "artifact" and r.artifact_id is not None:
                    local, url = local_folder(r.path), r.path if is_remote(r.path) else None
                    moved = trash / f"{r.artifact_id}-{os.getpid()}-{local.name}"

                    def remove(src=local, dst=moved, url=url) -> None:
                        if url is not None:  # S3 first: refused, the record rolls back and the cache copy stays
                            remove_remote(url)
                            if not src.exists():
                                return
                        dst.parent.mkdir(parents=True, exist_ok=True)
                        src.rename(dst)  # atomic, inside the store's transaction; the bytes go after it

                    done = store.delete_artifact(r.artifact_id, path=r.path, bytes=r.bytes, reason=r.reason,
                                                 deleted_by=by, remove=remove)
                    if done:
                        shutil.rmtree(moved, ignore_errors=True)
                elif r.kind == "unrecorded-upload":
                    remove_remote(r.path)
                    done = True
                else:
                    done = _remove_path(r)
            except (OSError, RemoteArtifactsError) as e:
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
