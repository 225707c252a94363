"""Moving a lineage store and its artifacts folder to PostgreSQL + S3 (the `move` command, `cli/move.py`).

The source (an SQLite file and its artifacts folder) is only read. The target is a fresh database (no row in any of
the store's tables) and an S3 location (`s3://bucket/prefix`):

1. `plan`: every table of `tables.py` read from the source (the columns both have: a new table or column is never
   forgotten; a column a revision renamed is read under its old name in a source from before it), each artifact
   version's URL at the target (`artifact_files.version_url`, the content-addressed key a stage writes), its
   folder under the old artifacts folder; refused (`MoveRefused`) while a run is `running` in
   the source and its process is not provably gone (`environment.process_gone`), or when a recorded path is
   neither under the artifacts folder nor already that URL;
2. `upload`: every version folder that exists (a version deleted by gc keeps its record and gets its URL, with
   nothing uploaded) checked against its record locally, then uploaded and read back by sha256
   (`artifact_files.publish`, as `Stage._finalize` does): a version S3 already holds is verified, not uploaded
   again, so a move that failed half-way runs again; the first failure stops it, before the store hears of it;
3. `commit`: the target's schema made as any new store's (Alembic to head, `LineageStore(url)`), then every row
   copied in ONE write transaction (the store's write lock, which also re-checks that the target is still empty),
   ids kept, artifact paths (and gc's deletion records) rewritten to the URLs, PostgreSQL's sequences set past the
   copied ids (and past SQLite's `sqlite_sequence`: an id is never handed out twice);
4. `check`: the audit at the new location: every table's row count as in the source; for every artifact version
   the target's record has the source's name, digest and files and the URL, and for every version with files, its
   objects read from S3 (no cache) hash to the recorded sha256s.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Table, func, insert, inspect, literal_column, select, text

from prefect_wandb import tables as t
from prefect_wandb.artifact_files import publish, remote_problem, version_url
from prefect_wandb.environment import process_gone
from prefect_wandb.locations import StoreURL
from prefect_wandb.migrations import RENAMED_COLUMNS
from prefect_wandb.records import ArtifactRecord
from prefect_wandb.refs import verify_files
from prefect_wandb.store import LineageStore, StoreError
from prefect_wandb.store_engine import driver_errors, engine_for, first_line

__all__ = ["MoveRefused", "Plan", "Version", "check", "commit", "plan", "target_rows", "upload"]

_CHUNK = 1000  # rows per INSERT (executemany)


class MoveRefused(ValueError):
    """The move cannot start (a live writer in the source, a path outside the artifacts folder, a target that is not
    empty): one line, nothing done."""


@dataclass(frozen=True)
class Version:
    """One artifact version of the source: its record, its folder there (None: deleted by gc, nothing to upload, or
    its path was already the URL), its URL at the target."""

    record: ArtifactRecord
    local: Path | None
    url: str
    deleted: bool

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.record.files)


@dataclass
class Plan:
    source: LineageStore
    artifacts_dir: Path
    to_store: StoreURL
    to_root: str
    rows: dict[str, list[dict]] = field(default_factory=dict)  # table -> its rows in the source, paths rewritten
    versions: list[Version] = field(default_factory=list)
    gone_running: list[str] = field(default_factory=list)  # 'running' runs whose process is gone (copied as they are)
    sequences: dict[str, int] = field(default_factory=dict)  # SQLite's sqlite_sequence (the highest id ever given)
    fingerprint: str = ""  # of the source's rows as read: a source written to meanwhile is not committed

    @property
    def uploads(self) -> list[Version]:
        return [v for v in self.versions if v.local is not None]

    def counts(self) -> dict[str, int]:
        return {name: len(rows) for name, rows in self.rows.items()}


def _live_runs(rows: list[dict]) -> tuple[list[str], list[str]]:
    """The source's 'running' runs: (those whose process may be alive, those whose process is provably gone)."""
    live: list[str] = []
    gone: list[str] = []
    for r in rows:
        if r.get("status") != "running":
            continue
        try:
            proc = json.loads(r.get("env_json") or "{}").get("process") or {}
        except ValueError:
            proc = {}
        proc = {**proc, "lease_expires_at": r.get("lease_expires_at")}
        label = f"{r['run_id']} ({r.get('job_type')}, pid {proc.get('pid')} on {proc.get('host')})"
        (gone if process_gone(proc) else live).append(label)
    return live, gone


def _read_rows(source: LineageStore) -> tuple[dict[str, list[dict]], dict[str, int]]:
    """Every table of `tables.py` as the source has it (the columns both have; a table it lacks: no rows), and its
    sqlite_sequence."""
    out: dict[str, list[dict]] = {}
    sequences: dict[str, int] = {}
    with source.reader() as conn:
        insp = inspect(conn)
        present = set(insp.get_table_names())
        for table in t.metadata.sorted_tables:
            if table.name not in present:
                out[table.name] = []
                continue
            have = {c["name"] for c in insp.get_columns(table.name)}
            # a source from before a revision that renamed a column (read-only opens never migrate): read under
            # the old name
            was = {now: old for old, now in RENAMED_COLUMNS.get(table.name, {}).items() if old in have}
            cols = [c if c.name in have else literal_column(was[c.name], c.type).label(c.name)
                    for c in table.columns if c.name in have or c.name in was]
            order = list(table.primary_key.columns)
            out[table.name] = [dict(r) for r in conn.execute(select(*cols).order_by(*order)).mappings()]
        # (the inspector lists no sqlite_* table)
        if conn.dialect.name == "sqlite" and conn.exec_driver_sql(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence'").first():
            sequences = {name: int(seq) for name, seq in conn.exec_driver_sql("SELECT name, seq FROM sqlite_sequence")}
    return out, sequences


def _fingerprint(rows: dict[str, list[dict]]) -> str:
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()


def plan(source: LineageStore, artifacts_dir: Path, to_store: StoreURL, to_root: str) -> Plan:
    """What moving `source` (its versions under `artifacts_dir`) to `to_store` and `to_root` copies and uploads;
    MoveRefused when it cannot start. Reads only."""
    rows, sequences = _read_rows(source)
    fingerprint = _fingerprint(rows)
    live, gone = _live_runs(rows[t.runs.name])
    if live:
        raise MoveRefused(f"{len(live)} run{'s are' if len(live) > 1 else ' is'} still running in the source "
                          f"({live[0]}{', ...' if len(live) > 1 else ''}): let it finish or stop it (a move takes "
                          "a store nobody writes to)")
    base = artifacts_dir.expanduser().resolve()
    deleted = {r["artifact_id"] for r in rows[t.deletions.name]}
    versions = []
    urls: dict[int, str] = {}
    for rec in source.artifacts():
        url = version_url(to_root, rec.type, rec.name, rec.digest)
        urls[rec.artifact_id] = url
        gc_deleted = rec.artifact_id in deleted
        if rec.path == url:  # already at the target's key (a store that half-used it): nothing to upload here
            versions.append(Version(rec, None, url, gc_deleted))
            continue
        if "://" in rec.path or not Path(rec.path).expanduser().resolve().is_relative_to(base):
            raise MoveRefused(f"{rec.label} is recorded at {rec.path}, not under the artifacts folder {base}: give "
                              "the --artifacts-dir its versions are in")
        versions.append(Version(rec, None if gc_deleted else Path(rec.path), url, gc_deleted))
    for r in rows[t.artifacts.name]:
        r["path"] = urls.get(r["artifact_id"], r["path"])
    for r in rows[t.deletions.name]:
        if r["artifact_id"] in urls:
            r["path"] = urls[r["artifact_id"]]
    return Plan(source=source, artifacts_dir=base, to_store=to_store, to_root=to_root, rows=rows, versions=versions,
                gone_running=gone, sequences=sequences, fingerprint=fingerprint)


def target_rows(to_store: StoreURL) -> dict[str, int]:
    """The rows each of the store's tables has in the target database (only the tables it has; none: {}). Writes
    nothing; StoreError in one line when it cannot be reached."""
    try:
        with driver_errors(), engine_for(to_store).connect() as conn:
            present = set(inspect(conn).get_table_names())
            return {name: int(conn.execute(select(func.count()).select_from(table)).scalar_one())
                    for name, table in t.metadata.tables.items() if name in present}
    except Exception as e:
        if type(e).__module__.startswith(("psycopg", "sqlalchemy")):
            raise StoreError(f"{to_store}: cannot open the lineage store ({first_line(e)})") from None
        raise


def not_empty(counts: dict[str, int], to_store: StoreURL) -> MoveRefused | None:
    if not any(counts.values()):
        return None
    held = ", ".join(f"{n} {name}" for name, n in counts.items() if n)
    return MoveRefused(f"the target {to_store} is not empty ({held}): a move goes into a fresh database")


def upload(p: Plan, progress: Callable[[Version, bool], None] | None = None) -> tuple[int, int]:
    """Every version folder of the plan checked against its record, then uploaded and read back by sha256
    (`publish`); (uploaded, already in S3). The first failure raises (DigestMismatch: the local folder differs
    from its record; RemoteArtifactsError: S3 failed) and nothing more is uploaded."""
    uploaded = present = 0
    for v in p.uploads:
        assert v.local is not None
        verify_files(v.local, v.record.files)
        did = publish(v.local, v.url, v.record.files)
        uploaded, present = uploaded + did, present + (not did)
        if progress is not None:
            progress(v, did)
    return uploaded, present


def _reset_sequences(conn, p: Plan) -> None:
    """Each serial id's sequence past the highest id copied (and SQLite's highest ever given)."""
    for table in t.metadata.sorted_tables:
        col = table.autoincrement_column
        if col is None:
            continue
        ids = [r[col.name] for r in p.rows[table.name] if r.get(col.name) is not None]
        top = max([*ids, p.sequences.get(table.name, 0)], default=0)
        if top > 0:
            conn.execute(text("SELECT setval(pg_get_serial_sequence(:t, :c), :v)"),
                         {"t": table.name, "c": col.name, "v": top})


def commit(p: Plan) -> LineageStore:
    """The target's schema (as any new store's), then every row in one write transaction; MoveRefused (nothing
    written) when the source was written to since `plan` read it (a run started meanwhile), or another writer
    filled the target meanwhile. Returns the target store."""
    if _fingerprint(_read_rows(p.source)[0]) != p.fingerprint:
        raise MoveRefused(f"the source {p.source.path} was written to during the move (a run started or ended): "
                          "nothing was committed; run it again when nothing writes to it")
    target = LineageStore(p.to_store)
    with target.transaction() as conn:
        counts = {name: int(conn.execute(select(func.count()).select_from(table)).scalar_one())
                  for name, table in t.metadata.tables.items()}
        refused = not_empty(counts, p.to_store)
        if refused is not None:
            raise refused
        for table in t.metadata.sorted_tables:
            _insert(conn, table, p.rows[table.name])
        if conn.dialect.name == "postgresql":
            _reset_sequences(conn, p)
    return target


def _insert(conn, table: Table, rows: list[dict]) -> None:
    for i in range(0, len(rows), _CHUNK):
        conn.execute(insert(table), rows[i:i + _CHUNK])


def check(p: Plan, target: LineageStore, progress: Callable[[Version], None] | None = None) -> list[str]:
    """The audit at the new location (see the module): the problems found, [] when the target holds what the source
    does. RemoteArtifactsError when S3 cannot be read."""
    problems = []
    have = target_rows(p.to_store)
    for name, n in p.counts().items():
        if have.get(name, 0) != n:
            problems.append(f"table {name}: {have.get(name, 0)} rows at the target, {n} in the source")
    moved = {a.artifact_id: a for a in target.artifacts()}
    for v in p.versions:
        src, dst = v.record, moved.get(v.record.artifact_id)
        if dst is None:
            problems.append(f"{src.label}: no record at the target")
            continue
        if (dst.name, dst.type, dst.version, dst.digest, dst.files) != (src.name, src.type, src.version, src.digest,
                                                                        src.files):
            problems.append(f"{src.label}: the target's record differs from the source's (digest {dst.digest[:16]}, "
                            f"source {src.digest[:16]})")
        elif dst.path != v.url:
            problems.append(f"{src.label}: recorded at {dst.path} at the target, not {v.url}")
        elif not v.deleted:
            problem = remote_problem(dst.path, dst.files)
            if problem:
                problems.append(f"{src.label}: {problem}")
        if progress is not None:
            progress(v)
    return problems
