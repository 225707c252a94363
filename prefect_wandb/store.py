"""The lineage store: a database with one row per run, artifact version, file and edge (an embedded SQLite file by
default, or a PostgreSQL database shared by many hosts), written through SQLAlchemy Core (`tables.py`), its schema
versions Alembic's (`schema.py`).

It is the record that still holds when W&B is offline (where wandb refuses `use_artifact`), and the one the
audit reads. Writes happen in short transactions that hold the store's write lock from their start (SQLite: `BEGIN
IMMEDIATE` on a WAL database; PostgreSQL: a transaction-scoped advisory lock, `store_engine.py`), so flow runs on
any number of processes and hosts can share one store; a run's outputs and edges
are committed together with its 'finished' status, or not at all. The store raises the driver's own errors
(`sqlite3.IntegrityError`, ...), as before SQLAlchemy; a full disk is one StorageError naming the store.
"""

from __future__ import annotations

import errno
import json
import socket
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, bindparam, delete, func, insert, literal, or_, select, update

from prefect_wandb import rejections
from prefect_wandb import tables as t
from prefect_wandb.locations import StoreURL, store_location
from prefect_wandb.records import (
    ALIASES,
    AliasRecord,
    ArtifactRecord,
    DeletionRecord,
    FileRecord,
    NewArtifact,
    PromotionRecord,
    RunEdges,
    RunRecord,
    Verdict,
    lease_until,
    now,
)
from prefect_wandb.storage import StorageError
from prefect_wandb.store_engine import (
    STORE_TIMEOUT_S,
    driver_errors,
    new_id,
    upsert,
    write_transaction,
)
from prefect_wandb.store_file import disk_full
from prefect_wandb.store_open import StoreError, open_database, open_file, unreachable
from prefect_wandb.store_reads import StoreReads, _row

# The records are defined in `records.py`; callers import them from here, with the store that reads and writes them.
__all__ = ["ALIASES", "AliasRecord", "ArtifactDeleted", "ArtifactRecord", "DeletionRecord", "FileRecord", "LineageStore",
           "NewArtifact", "PromotionRecord", "RunEdges", "RunRecord", "StoreError", "now"]

A, R, P, AL, D, G = t.artifacts, t.runs, t.promotions, t.aliases, t.deletions, t.wandb_gaps


class ArtifactDeleted(RuntimeError):
    """An input was deleted by gc: its record stays, its files are gone."""


class LineageStore(StoreReads):
    _timeout: float = STORE_TIMEOUT_S  # PostgreSQL: $PREFECT_WANDB_STORE_TIMEOUT when it was opened

    def __init__(self, location: Path | str | StoreURL, *, readonly: bool = False):
        """Open (or, unless `readonly`, create and bring to the newest schema) the store at `location`: the path
        of an SQLite file, or a PostgreSQL URL (`postgresql+psycopg://user[:password]@host:port/db`; without a
        password, libpq's PGPASSWORD or ~/.pgpass supplies it). An unknown scheme is a LocationError.

        Read-only (the auditor's commands): the file is opened with SQLite's `mode=ro` (`immutable` on read-only
        media or a full disk: `store_file.readonly_uri`), nothing is created, written or migrated, and a missing,
        empty or foreign file raises StoreError instead of being given a fresh schema; on PostgreSQL nothing is
        migrated, and a database without the store's tables is a StoreError.

        `path` is what messages show: the file's path, or the URL with its password masked (`url` is the
        StoreURL, None for a file; `folder` the file's folder, None for a database)."""
        loc = store_location(location, "lineage store")
        self.readonly = readonly
        self.url: StoreURL | None = loc if isinstance(loc, StoreURL) else None
        self.path: Path | str = loc if isinstance(loc, Path) else loc.masked()
        self.folder: Path | None = loc.parent if isinstance(loc, Path) else None
        if isinstance(loc, Path):
            self._engine = open_file(loc, readonly)
        else:
            self._engine, self._timeout = open_database(loc, loc.masked(), readonly)

    def _unreachable(self, e: BaseException) -> StoreError | None:
        """A database that went away mid-use: one StoreError (`store_open.unreachable`); None for a file."""
        return None if self.url is None else unreachable(str(self.path), self._timeout, e)

    @contextmanager
    def _reached(self) -> Iterator[None]:
        """A database that cannot be reached, met anywhere inside, is one StoreError (`_unreachable`)."""
        try:
            yield
        except Exception as e:
            gone = self._unreachable(e)
            if gone is not None:
                raise gone from None
            raise

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._reached(), driver_errors(), self._engine.connect() as conn:
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One write transaction (`store_engine.write_transaction`); a full disk met anywhere in it (SQLite: at
        BEGIN IMMEDIATE, where it cannot make its -wal/-shm) is one StorageError naming the store, not retried; a
        database that cannot be reached is one StoreError."""
        with self._reached():
            try:
                with driver_errors(), write_transaction(self._engine) as conn:
                    yield conn
            except sqlite3.DatabaseError as e:
                if self.folder is not None and disk_full(e, Path(self.path)):
                    raise StorageError(errno.ENOSPC, self.path) from None
                raise

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One write transaction (SQLAlchemy Core on `tables.py`, any database), for holds, rejections and the
        journal's replay."""
        with self._write() as conn:
            yield conn

    # ------------------------------------------------------------------------------------------- writes

    def start_run(self, run_id: str, job_type: str, *, config: dict, env: dict, flow_run_id: str | None,
                  run_group: str | None, wandb_mode: str, wandb_dir: str | None, wandb_project: str | None,
                  wandb_entity: str | None) -> None:
        """A run 'running', its lease good for `LEASE_S` (its process renews it: `renew_lease`)."""
        with self._write() as conn:
            conn.execute(insert(R).values(
                run_id=run_id, job_type=job_type, status="running", flow_run_id=flow_run_id, run_group=run_group,
                wandb_mode=wandb_mode, wandb_dir=wandb_dir, wandb_project=wandb_project, wandb_entity=wandb_entity,
                config_json=json.dumps(config, sort_keys=True), env_json=json.dumps(env, sort_keys=True),
                started_at=now(), lease_expires_at=lease_until()))

    def renew_lease(self, run_id: str | None = None, flow_run_id: str | None = None) -> None:
        """Extend by `LEASE_S` the lease of a running run and of the holds of its flow run (a stage's heartbeat)."""
        until = lease_until()
        with self._write() as conn:
            if run_id is not None:
                conn.execute(update(R).where(R.c.run_id == run_id, R.c.status == "running").values(
                    lease_expires_at=until))
            if flow_run_id is not None:
                conn.execute(update(t.holds).where(t.holds.c.flow_run_id == flow_run_id).values(
                    lease_expires_at=until))

    @staticmethod
    def _edges(conn: Connection, run_id: str, artifact_ids: list[int], direction: str) -> None:
        """Edges of `run_id` to `artifact_ids` (one already there stays)."""
        if artifact_ids:
            conn.execute(upsert(conn, t.edges).on_conflict_do_nothing(),
                         [{"run_id": run_id, "artifact_id": a, "direction": direction} for a in artifact_ids])

    def finish_run(self, run_id: str, *, used: list[int], produced: list[NewArtifact], summary: dict,
                   wandb_url: str | None, wandb_mode: str) -> list[ArtifactRecord]:
        """Record the outputs, the edges and the 'finished' status in one transaction."""
        with self._write() as conn:
            ids: list[int] = []
            for art in produced:
                aid = conn.execute(select(A.c.artifact_id).where(A.c.name == art.name,
                                                                 A.c.digest == art.digest)).scalar()
                if aid is None:  # a new version; identical content reuses the version that holds it
                    version = conn.execute(select(func.coalesce(func.max(A.c.version) + 1, 0)).where(
                        A.c.name == art.name)).scalar_one()
                    aid = new_id(conn.execute(insert(A).values(
                        name=art.name, type=art.type, version=version, digest=art.digest, path=art.path,
                        metadata_json=json.dumps(art.metadata, sort_keys=True), producer_run_id=run_id,
                        created_at=now())))
                    if art.files:
                        conn.execute(insert(t.artifact_files), [
                            {"artifact_id": aid, "relpath": f.relpath, "sha256": f.sha256, "size": f.size}
                            for f in art.files])
                else:
                    # the same content made again after gc removed it: its folder is back, so is the artifact
                    conn.execute(delete(D).where(D.c.artifact_id == aid))
                ids.append(aid)
            self._edges(conn, run_id, used, "used")
            self._edges(conn, run_id, ids, "produced")
            conn.execute(update(R).where(R.c.run_id == run_id).values(
                status="finished", finished_at=now(), summary_json=json.dumps(summary, sort_keys=True, default=str),
                wandb_url=wandb_url, wandb_mode=wandb_mode))
            return [self._artifact(conn, aid) for aid in ids]

    def fail_run(self, run_id: str, *, used: list[int], error: str) -> None:
        """A failed run keeps its inputs on record (for the audit) and produces nothing."""
        with self._write() as conn:
            self._edges(conn, run_id, used, "used")
            conn.execute(update(R).where(R.c.run_id == run_id).values(status="failed", finished_at=now(),
                                                                       error=error[:4000]))

    def fail_dead_runs(self, is_dead) -> list[str]:
        """Mark 'running' runs whose process is gone as failed: `is_dead(process)`, where `process` is the run's
        env["process"] with its `lease_expires_at` (`environment.process_gone`: on this host, /proc; on another,
        an expired lease). A run killed mid-step never reaches fail_run, and must not stay 'running' for ever.
        Returns their run ids. A run whose lease was renewed meanwhile is left alone."""
        with self._read() as conn:
            rows = conn.execute(select(R.c.run_id, R.c.env_json, R.c.lease_expires_at).where(
                R.c.status == "running")).all()
        procs = {r.run_id: {**(json.loads(r.env_json).get("process") or {}), "lease_expires_at": r.lease_expires_at}
                 for r in rows}
        dead = {k: v for k, v in procs.items() if is_dead(v)}
        if dead:
            ts = now()
            with self._write() as conn:
                for run_id, proc in dead.items():
                    q = update(R).where(R.c.run_id == run_id, R.c.status == "running")
                    if proc.get("host") == socket.gethostname():
                        error = (f"process died: pid {proc.get('pid')} on {proc.get('host')} ended without "
                                 "finishing the run (killed or crashed)")
                    else:  # judged by its lease: unless renewed since
                        q = q.where(R.c.lease_expires_at < ts)
                        error = (f"lease expired: pid {proc.get('pid')} on {proc.get('host')} stopped renewing it "
                                 f"(killed, crashed or cut off); it ran out at {proc.get('lease_expires_at')}")
                    if conn.execute(q.values(status="failed", finished_at=ts, error=error)).rowcount == 0:
                        del dead[run_id]
        return list(dead)

    @staticmethod
    def _production(conn: Connection, artifact_id: int, alias: str) -> tuple[str, int | None]:
        """The name of `artifact_id`, and the version of that name that holds `alias` now (None: none)."""
        name = conn.execute(select(A.c.name).where(A.c.artifact_id == artifact_id)).scalar_one()
        return name, conn.execute(select(AL.c.artifact_id).where(AL.c.name == name, AL.c.alias == alias)).scalar()

    @staticmethod
    def _promotion(conn: Connection, values: dict) -> PromotionRecord:
        pid = new_id(conn.execute(insert(P).values(**values)))
        return PromotionRecord.from_row(_row(conn.execute(select(P).where(P.c.promotion_id == pid)).mappings().one()))

    def record_promotion(self, artifact_id: int, gate: Callable[[int | None], Verdict], *, value: float | None,
                         validation_passed: bool, margin: float, flow_run_id: str | None,
                         test_set: str | None = None, metric: str | None = None,
                         aliases: tuple[str, str] = ("candidate", "production"), run_id: str | None = None
                         ) -> PromotionRecord:
        """Give a model the first of `aliases` (candidate), and the second (production) if `gate(the artifact id
        holding production now)` says so; `value` is the candidate's `metric`. The alias names are the caller's
        policy (`GatePolicy`).

        One write transaction reads the current production model, asks the gate, moves the aliases and records the
        decision: it holds the store's write lock from its start, so of two flow runs racing to promote, the
        second reads only after the first one's commit, and sees its winner. A verdict's `production_metrics_id`
        (where production's value came from) is recorded with it, and as an input of `run_id` (the deciding run)."""
        candidate_alias, production_alias = aliases
        with self._write() as conn:
            name, production = self._production(conn, artifact_id, production_alias)
            decision = gate(production)
            if (source := getattr(decision, "production_metrics_id", None)) is not None and run_id is not None:
                self._edges(conn, run_id, [source], "used")
            ts = now()
            moved = [candidate_alias] + ([production_alias] if decision.decision == "promoted" else [])
            for alias in moved:
                ins = upsert(conn, AL).values(name=name, alias=alias, artifact_id=artifact_id, set_at=ts)
                conn.execute(ins.on_conflict_do_update(  # an alias already on this model keeps its date
                    index_elements=[AL.c.name, AL.c.alias], where=AL.c.artifact_id != ins.excluded.artifact_id,
                    set_={"artifact_id": ins.excluded.artifact_id, "set_at": ins.excluded.set_at}))
            return self._promotion(conn, dict(
                artifact_id=artifact_id, decision=decision.decision, reason=decision.reason,
                candidate_value=value, validation_passed=int(validation_passed),
                production_artifact_id=production, production_value=decision.production_value, margin=margin,
                flow_run_id=flow_run_id, decided_at=ts, test_set=test_set, metric=metric, aliases=json.dumps(moved),
                production_metrics_id=source))

    def mark_promotion_applied(self, promotion_id: int) -> None:
        with self._write() as conn:
            conn.execute(update(P).where(P.c.promotion_id == promotion_id).values(wandb_applied_at=now()))

    def record_rollback(self, artifact_id: int, *, reason: str, requested_by: str,
                        alias: str = "production", candidate: str | None = "candidate") -> PromotionRecord:
        """Move `alias` (production) to `artifact_id`, recorded as a promotion of kind 'rollback', rejecting the model
        rolled back from, in one transaction. The `candidate` alias moves with it when it is on the model rolled
        back from (a rejected model is nobody's candidate); elsewhere it stays. The decision's aliases are those
        it moved, for W&B to follow."""
        with self._write() as conn:
            name, production = self._production(conn, artifact_id, alias)
            moved = [alias]
            if candidate is not None and production is not None and production != artifact_id and \
                    self._production(conn, artifact_id, candidate)[1] == production:
                moved.append(candidate)
            ts = now()
            for a in moved:
                ins = upsert(conn, AL).values(name=name, alias=a, artifact_id=artifact_id, set_at=ts)
                conn.execute(ins.on_conflict_do_update(index_elements=[AL.c.name, AL.c.alias], set_={
                    "artifact_id": ins.excluded.artifact_id, "set_at": ins.excluded.set_at}))
            record = self._promotion(conn, dict(
                artifact_id=artifact_id, decision="promoted", reason=reason, candidate_value=None,
                validation_passed=1, production_artifact_id=production, production_value=None, margin=0,
                flow_run_id=None, decided_at=ts, kind="rollback", requested_by=requested_by,
                aliases=json.dumps(moved)))
            rejections.on_rollback(conn, rolled_back=production, target=artifact_id,
                                   reason=reason, requested_by=requested_by, at=ts)
            return record

    def record_use(self, run_id: str, artifact_id: int) -> None:
        """Record a running run's input as it opens it (not only when it ends), unless gc has deleted it: gc checks
        these edges in its own transaction, so an input in use is never removed, and a removed one never used."""
        with self._write() as conn:
            gone = conn.execute(select(D.c.deleted_at, D.c.deleted_by).where(D.c.artifact_id == artifact_id)).first()
            if gone is not None:
                art = self._artifact(conn, artifact_id)
                raise ArtifactDeleted(f"{art.label} ({art.digest[:16]}) was deleted by gc on "
                                      f"{gone.deleted_at[:10]} ({gone.deleted_by}): its files are gone")
            self._edges(conn, run_id, [artifact_id], "used")

    def delete_artifact(self, artifact_id: int, *, path: str, bytes: int, reason: str, deleted_by: str,
                        remove: Callable[[], None]) -> bool:
        """Record `artifact_id` as deleted and call `remove()` (which takes its folder away) in one transaction,
        unless a run still 'running' uses or produced it, a run of a flow run still running did, or a flow run
        holds it (`holds.py`): then nothing happens and False. `remove` raising rolls the record back."""
        e, h = t.edges, t.holds
        running_flows = select(R.c.flow_run_id).where(R.c.status == "running", R.c.flow_run_id.is_not(None))
        touched = select(literal(1)).select_from(e.join(R, e.c.run_id == R.c.run_id)).where(
            e.c.artifact_id == artifact_id, or_(R.c.status == "running", R.c.flow_run_id.in_(running_flows)))
        held = select(literal(1)).select_from(h).where(h.c.artifact_id == artifact_id)
        with self._write() as conn:
            if conn.execute(touched.limit(1)).first() or conn.execute(held.limit(1)).first():
                return False
            ins = upsert(conn, D).values(artifact_id=artifact_id, path=path, bytes=bytes, reason=reason,
                                         deleted_by=deleted_by, deleted_at=now())
            conn.execute(ins.on_conflict_do_update(index_elements=[D.c.artifact_id], set_={
                c: ins.excluded[c] for c in ("path", "bytes", "reason", "deleted_by", "deleted_at")}))
            remove()
            return True

    def require_artifact(self, name: str, digest: str) -> ArtifactRecord:
        """`find_artifact`, for a version this run has just recorded: its absence is a broken store."""
        rec = self.find_artifact(name, digest)
        if rec is None:
            raise StoreError(f"{self.path}: {name} {digest[:16]} was recorded by this run and is gone from the store")
        return rec

    # ------------------------------------------------------------------------------------------- W&B sync

    def record_wandb_gaps(self, run_id: str, gaps: list, confirmed=()) -> None:
        """W&B's gaps of a run (first kept), for `sync`; a pending one gives way to a new gap or a `confirmed` ref."""
        refs = {*confirmed, *(g.ref for g in gaps)}
        with self._write() as conn:
            if refs:  # a gap recorded before W&B was asked (call 'unconfirmed'), dropped once W&B answered for it
                conn.execute(delete(G).where(G.c.run_id == run_id, G.c.ref == bindparam("gap_ref"),
                                             G.c.call == "unconfirmed"), [{"gap_ref": r} for r in refs])
            if gaps:
                conn.execute(upsert(conn, G).on_conflict_do_nothing(), [
                    {"run_id": run_id, "action": g.action, "ref": g.ref, "call": g.call, "error": g.error,
                     "detail": g.detail, "recorded_at": now()} for g in gaps])

    def mark_synced(self, run_id: str, action: str, ref: str, detail: str | None = None) -> None:
        with self._write() as conn:
            conn.execute(upsert(conn, t.sync_log).values(run_id=run_id, action=action, ref=ref, detail=detail,
                                                         done_at=now()).on_conflict_do_nothing())
