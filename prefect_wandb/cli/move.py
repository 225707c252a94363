"""`move`: an SQLite lineage store and its artifacts folder moved to PostgreSQL + S3 in one command, checked by an
audit at the new location (`prefect_wandb/move.py`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prefect_wandb.artifact_files import RemoteArtifactsError, artifacts_location, check_remote
from prefect_wandb.cli.args import Parents, add_command, err, open_store, program
from prefect_wandb.exit_codes import Exit
from prefect_wandb.locations import LocationError, StoreURL, path_only, store_location
from prefect_wandb.refs import DigestMismatch

MOVE_EPILOG = """\
The source (--lineage-db, an SQLite file, and --artifacts-dir, its artifacts folder) is only read. The target is a
fresh PostgreSQL database (refused when any run or artifact is in it) and an S3 location. Every version folder is
uploaded to its content-addressed key and read back by sha256 first; then the target's schema is made (as any new
store's) and every row copied in one transaction, ids kept, artifact paths rewritten to their S3 URLs (a version
deleted by gc keeps its record and gets its URL, nothing uploaded). A failure uploads nothing more and commits
nothing: run it again (versions already in S3 are verified, not uploaded again). Last, the audit at the new
location: every record as in the source, every version's objects read back from S3 and hashed.

Refused while a run is `running` in the source and its process is not provably gone. The password of a URL comes
from PGPASSWORD or ~/.pgpass, S3's credentials from the AWS_* variables; neither is ever shown.

0 moved (or --dry-run: it would move), and checked; 2 usage, a target that is not empty, a live run in the source,
a version outside --artifacts-dir, an S3 location that cannot be reached, a source written to during the move
(nothing committed); 1 an upload failed or a version folder differs from its record (nothing committed); 6 a store
cannot be opened or reached; 3 the check at the new location found a difference (named).
"""


def add_parsers(sub, parents: Parents) -> None:
    m = add_command(sub, "move", parents=[parents.store, parents.json], epilog=MOVE_EPILOG,
                    help="move an SQLite lineage store and its artifacts folder to PostgreSQL + S3, then audit "
                    "them there")
    m.add_argument("--artifacts-dir", default=None, help="the source's artifacts folder (default: beside the "
                   "lineage store, artifacts/)")
    m.add_argument("--to-lineage-db", required=True, metavar="URL", help="the target: a fresh PostgreSQL database, "
                   "postgresql+psycopg://USER@HOST:PORT/DB (its password from PGPASSWORD or ~/.pgpass)")
    m.add_argument("--to-artifacts-dir", required=True, metavar="S3_URL", help="the target's artifacts: "
                   "s3://bucket/prefix (credentials and endpoint from the AWS_* variables)")
    m.add_argument("--dry-run", action="store_true", help="say what would be copied and uploaded; change nothing")
    m.set_defaults(handler=move_main)


def _locations(ns) -> tuple[Path, StoreURL, str]:
    """(source artifacts folder, target store URL, target S3 root); LocationError in one line."""
    path_only(ns.lineage_db, "--lineage-db")
    folder = path_only(ns.artifacts_dir, "--artifacts-dir") if ns.artifacts_dir else None
    to_store = store_location(ns.to_lineage_db, "--to-lineage-db")
    if not isinstance(to_store, StoreURL):
        raise LocationError(f"--to-lineage-db: {to_store} is a path: give the target database, "
                            "postgresql+psycopg://user@host:port/database")
    to_root = artifacts_location(ns.to_artifacts_dir, "--to-artifacts-dir")
    if not isinstance(to_root, str):
        raise LocationError(f"--to-artifacts-dir: {to_root} is a folder: give the target, s3://bucket/prefix")
    source_dir = Path(str(folder)) if folder else Path(ns.lineage_db).expanduser().resolve().parent / "artifacts"
    return source_dir, to_store, to_root


def move_main(ns: argparse.Namespace) -> int:
    from prefect_wandb import move as M
    from prefect_wandb.store import StoreError

    try:
        source_dir, to_store, to_root = _locations(ns)
    except LocationError as e:
        err("move", str(e))
        return Exit.USAGE
    source = open_store(ns.lineage_db, "move")  # read-only: the source is never written
    if isinstance(source, Exit):
        return source
    if not source_dir.expanduser().is_dir():
        err("move", f"no artifacts folder at {source_dir} (give --artifacts-dir)")
        return Exit.USAGE
    try:
        plan = M.plan(source, source_dir, to_store, to_root)  # the source's refusals first: it is only read
        check_remote(to_root)
        refused = M.not_empty(M.target_rows(to_store), to_store)
        if refused is not None:
            raise refused
    except (M.MoveRefused, RemoteArtifactsError) as e:
        err("move", str(e))
        return Exit.USAGE
    except StoreError as e:
        err("move", str(e))
        return Exit.STORE
    result = _summary(ns, plan)
    if ns.dry_run:
        result["status"] = "would move"
        _out(ns, result)
        return Exit.OK
    bar = _progress(len(plan.uploads), "upload")
    try:
        result["uploaded"], result["already_in_s3"] = M.upload(plan, lambda v, did: bar(
            f"{'uploaded' if did else 'already in S3'}: {v.record.label} -> {v.url}"))
    except (RemoteArtifactsError, DigestMismatch) as e:
        bar.close()
        err("move", f"{e}; nothing was committed (run it again: what is in S3 is verified, not uploaded again)")
        return Exit.FAILED
    bar.close()
    try:
        target = M.commit(plan)
    except M.MoveRefused as e:
        err("move", str(e))
        return Exit.USAGE
    except StoreError as e:
        err("move", f"{e}; nothing was committed")
        return Exit.STORE
    result["status"] = "moved"
    bar = _progress(len(plan.versions), "check")
    try:
        problems = M.check(plan, target, lambda v: bar(f"checked: {v.record.label}"))
    except (RemoteArtifactsError, StoreError) as e:
        problems = [str(e)]
    bar.close()
    result["check"] = {"versions": len(plan.versions), "ok": not problems, "problems": problems}
    _out(ns, result)
    if problems:
        err("move", f"moved, but the check at {to_store} found {len(problems)} difference(s): {problems[0]}")
        return Exit.VERIFY_FAILED
    return Exit.OK


class _Progress:
    """A tqdm bar on a terminal's stderr; elsewhere one log line per step (on stderr: --json's stdout stays JSON)."""

    def __init__(self, total: int, desc: str):
        self.total, self.n, self.desc = total, 0, desc
        self.bar = None
        if total and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="version", leave=False, file=sys.stderr)

    def __call__(self, line: str) -> None:
        self.n += 1
        if self.bar is not None:
            self.bar.update(1)
        else:
            print(f"{program().prog} move: [{self.n}/{self.total}] {line}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _progress(total: int, desc: str) -> _Progress:
    return _Progress(total, desc)


def _summary(ns, plan) -> dict:
    uploads = plan.uploads
    return {
        "dry_run": ns.dry_run,
        "from": {"lineage_db": str(plan.source.path), "artifacts_dir": str(plan.artifacts_dir)},
        "to": {"lineage_db": plan.to_store.without_password(), "artifacts_dir": plan.to_root},
        "rows": plan.counts(),
        "versions": len(plan.versions),
        "upload": {"versions": len(uploads), "bytes": sum(v.bytes for v in uploads)},
        "deleted_by_gc": sum(v.deleted for v in plan.versions),
        "running_but_gone": plan.gone_running,
    }


def _out(ns, result: dict) -> None:
    if ns.json:
        print(json.dumps(result, indent=2, default=str))
        return
    verb = "would move" if result["dry_run"] else "moved"
    rows = result["rows"]
    print(f"{result['status'].upper()}: {result['from']['lineage_db']} + {result['from']['artifacts_dir']} -> "
          f"{result['to']['lineage_db']} + {result['to']['artifacts_dir']}")
    print(f"  rows {verb}: " + ", ".join(f"{n} {name}" for name, n in rows.items() if n))
    up = result["upload"]
    print(f"  versions: {result['versions']}; {'to upload' if result['dry_run'] else 'in S3'}: {up['versions']} "
          f"({up['bytes']} bytes)" + (f", of which uploaded now {result['uploaded']}, already there "
                                      f"{result['already_in_s3']}" if "uploaded" in result else "")
          + f"; deleted by gc (record only): {result['deleted_by_gc']}")
    if result["running_but_gone"]:
        print(f"  runs left 'running' by a process that is gone (copied as they are; `{program().prog} gc --apply` "
              f"marks them failed): {', '.join(result['running_but_gone'])}")
    check = result.get("check")
    if check is not None:
        print(f"  check at the new location: {'OK' if check['ok'] else 'FAILED'}, {check['versions']} versions "
              "(records as in the source, objects read back from S3 by sha256)")
        for p in check["problems"]:
            print(f"    {p}")
    if not result["dry_run"] and (check is None or check["ok"]):
        print(f"  from now on: --lineage-db {result['to']['lineage_db']} --artifacts-dir "
              f"{result['to']['artifacts_dir']}")
