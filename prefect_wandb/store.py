"""The lineage store: an embedded SQLite database with one row per run, artifact version, file and edge.

It is the record that still holds when W&B is offline (where wandb refuses `use_artifact`), and the one the
audit reads. Writes happen in short `BEGIN IMMEDIATE` transactions on a WAL database, so two flow runs can share
one store; a run's outputs and edges are committed together with its 'finished' status, or not at all.
"""

from __future__ import annotations

import contextlib
import errno
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from prefect_wandb import rejections
from prefect_wandb.records import (
    ALIASES,
    ArtifactRecord,
    DeletionRecord,
    FileRecord,
    NewArtifact,
    PromotionRecord,
    RunRecord,
)
from prefect_wandb.schema import DROP_PENDING_GAP, ensure_schema
from prefect_wandb.storage import StorageError
from prefect_wandb.store_file import disk_full, readonly_problem, readonly_uri, sidecars_created

if TYPE_CHECKING:
    from prefect_wandb.promotion import Decision

# The records are defined in `records.py`; callers import them from here, with the store that reads and writes them.
__all__ = ["ALIASES", "ArtifactDeleted", "ArtifactRecord", "DeletionRecord", "FileRecord", "LineageStore",
           "NewArtifact", "PromotionRecord", "RunRecord", "StoreError", "now"]


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class StoreError(RuntimeError):
    """The lineage store cannot be used: missing, empty, or not an SQLite database of ours. Names the file."""


class ArtifactDeleted(RuntimeError):
    """An input was deleted by gc: its record stays, its files are gone."""


class LineageStore:
    def __init__(self, path: Path | str, *, readonly: bool = False):
        """Open (or, unless `readonly`, create) the store at `path`.

        Read-only (the auditor's commands): the file is opened with SQLite's `mode=ro` (`immutable` on read-only
        media or a full disk: `store_file.readonly_uri`), nothing is created or written, and a missing, empty or
        foreign file raises StoreError instead of being given a fresh schema."""
        self.path, self.readonly = Path(path), readonly
        if readonly:
            self._readonly_uri = readonly_uri(self.path)  # decided once: immutable on read-only media
            problem = readonly_problem(self.path, self._readonly_uri)
            if problem:
                raise StoreError(f"{self.path}: {problem}")
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with sidecars_created(self.path, lambda e: disk_full(e, self.path)):
                ensure_schema(self._connect)
        except sqlite3.DatabaseError as e:
            if "locked" in str(e):
                raise
            if disk_full(e, self.path):
                raise StorageError(errno.ENOSPC, self.path) from None
            raise StoreError(f"{self.path}: not a readable lineage store ({e})") from None

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN ourselves, so every write transaction is explicit.
        if self.readonly:  # SQLite refuses every write on this connection
            con = sqlite3.connect(self._readonly_uri, uri=True, timeout=30, isolation_level=None)
        else:
            con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA foreign_keys=ON")
        con.execute("PRAGMA busy_timeout=30000")
        return con

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. BEGIN IMMEDIATE takes the write lock up front, so two writers queue
        instead of failing half-way with 'database is locked'."""
        con = self._connect()
        try:
            try:
                for attempt in range(50):
                    try:
                        con.execute("BEGIN IMMEDIATE")  # on a full disk: where SQLite cannot make its -wal/-shm
                        break
                    except sqlite3.OperationalError as e:
                        if "locked" not in str(e) or attempt == 49:
                            raise
                        time.sleep(0.1)
                yield con
                con.execute("COMMIT")
            except BaseException as e:
                if con.in_transaction:  # SQLite has already rolled back after some errors (a full disk)
                    with contextlib.suppress(sqlite3.DatabaseError):
                        con.execute("ROLLBACK")
                if isinstance(e, sqlite3.DatabaseError) and disk_full(e, self.path):
                    raise StorageError(errno.ENOSPC, self.path) from None  # one line naming the store, not retried
                raise
        finally:
            con.close()

    @contextmanager
    def reader(self) -> Iterator[sqlite3.Connection]:
        con = self._connect()
        try:
            yield con
        finally:
            con.close()

    # ------------------------------------------------------------------------------------------- writes

    def start_run(self, run_id: str, job_type: str, *, config: dict, env: dict, flow_run_id: str | None,
                  run_group: str | None, wandb_mode: str, wandb_dir: str | None, wandb_project: str | None,
                  wandb_entity: str | None) -> None:
        with self.transaction() as con:
            con.execute(
                "INSERT INTO runs (run_id, job_type, status, flow_run_id, run_group, wandb_mode, wandb_dir,"
                " wandb_project, wandb_entity, config_json, env_json, started_at)"
                " VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, job_type, flow_run_id, run_group, wandb_mode, wandb_dir, wandb_project, wandb_entity,
                 json.dumps(config, sort_keys=True), json.dumps(env, sort_keys=True), now()))

    def finish_run(self, run_id: str, *, used: list[int], produced: list[NewArtifact], summary: dict,
                   wandb_url: str | None, wandb_mode: str) -> list[ArtifactRecord]:
        """Record the outputs, the edges and the 'finished' status in one transaction."""
        with self.transaction() as con:
            ids: list[int] = []
            for art in produced:
                row = con.execute("SELECT artifact_id FROM artifacts WHERE name = ? AND digest = ?",
                                  (art.name, art.digest)).fetchone()
                if row is None:  # a new version; identical content reuses the version that holds it
                    version = con.execute("SELECT COALESCE(MAX(version) + 1, 0) FROM artifacts WHERE name = ?",
                                          (art.name,)).fetchone()[0]
                    cur = con.execute(
                        "INSERT INTO artifacts (name, type, version, digest, path, metadata_json,"
                        " producer_run_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (art.name, art.type, version, art.digest, art.path,
                         json.dumps(art.metadata, sort_keys=True), run_id, now()))
                    aid = int(cur.lastrowid or 0)
                    con.executemany("INSERT INTO artifact_files VALUES (?, ?, ?, ?)",
                                    [(aid, f.relpath, f.sha256, f.size) for f in art.files])
                else:
                    aid = row[0]
                    # the same content made again after gc removed it: its folder is back, so is the artifact
                    con.execute("DELETE FROM deletions WHERE artifact_id = ?", (aid,))
                ids.append(aid)
            con.executemany("INSERT OR IGNORE INTO edges VALUES (?, ?, 'used')", [(run_id, a) for a in used])
            con.executemany("INSERT OR IGNORE INTO edges VALUES (?, ?, 'produced')", [(run_id, a) for a in ids])
            con.execute("UPDATE runs SET status = 'finished', finished_at = ?, summary_json = ?, wandb_url = ?,"
                        " wandb_mode = ? WHERE run_id = ?",
                        (now(), json.dumps(summary, sort_keys=True, default=str), wandb_url, wandb_mode, run_id))
            return [self._artifact(con, aid) for aid in ids]

    def fail_run(self, run_id: str, *, used: list[int], error: str) -> None:
        """A failed run keeps its inputs on record (for the audit) and produces nothing."""
        with self.transaction() as con:
            con.executemany("INSERT OR IGNORE INTO edges VALUES (?, ?, 'used')", [(run_id, a) for a in used])
            con.execute("UPDATE runs SET status = 'failed', finished_at = ?, error = ? WHERE run_id = ?",
                        (now(), error[:4000], run_id))

    def fail_dead_runs(self, is_dead) -> list[str]:
        """Mark 'running' runs whose process is gone (`is_dead(env["process"])`) as failed: a run killed
        mid-step never reaches fail_run, and must not stay 'running' for ever. Returns their run ids."""
        with self.reader() as con:
            rows = con.execute("SELECT run_id, env_json FROM runs WHERE status = 'running'").fetchall()
        dead = {r["run_id"]: json.loads(r["env_json"]).get("process") or {} for r in rows}
        dead = {k: v for k, v in dead.items() if is_dead(v)}
        if dead:
            with self.transaction() as con:
                for run_id, proc in dead.items():
                    con.execute("UPDATE runs SET status = 'failed', finished_at = ?, error = ? WHERE run_id = ?"
                                " AND status = 'running'",
                                (now(), f"process died: pid {proc.get('pid')} on {proc.get('host')} ended without "
                                 "finishing the run (killed or crashed)", run_id))
        return list(dead)

    def record_promotion(self, artifact_id: int, gate: Callable[[int | None], Decision], *, accuracy: float | None,
                         validation_passed: bool, margin: float, flow_run_id: str | None,
                         test_set: str | None = None) -> PromotionRecord:
        """Alias a model `candidate`, and `production` if `gate(current production artifact id)` says so.

        One BEGIN IMMEDIATE transaction reads the current production model, asks the gate, moves the aliases and
        records the decision: of two flow runs racing to promote, the second sees the first one's winner."""
        with self.transaction() as con:
            name = con.execute("SELECT name FROM artifacts WHERE artifact_id = ?", (artifact_id,)).fetchone()[0]
            row = con.execute("SELECT artifact_id FROM aliases WHERE name = ? AND alias = 'production'",
                              (name,)).fetchone()
            decision = gate(row[0] if row else None)
            ts = now()
            for alias in ["candidate"] + (["production"] if decision.decision == "promoted" else []):  # unmoved: same date
                con.execute("INSERT INTO aliases VALUES (?, ?, ?, ?) ON CONFLICT (name, alias) DO UPDATE SET"
                            " artifact_id = excluded.artifact_id, set_at = excluded.set_at"
                            " WHERE aliases.artifact_id != excluded.artifact_id", (name, alias, artifact_id, ts))
            cur = con.execute(
                "INSERT INTO promotions (artifact_id, decision, reason, candidate_accuracy, validation_passed,"
                " production_artifact_id, production_accuracy, margin, flow_run_id, decided_at, test_set)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (artifact_id, decision.decision, decision.reason, accuracy, int(validation_passed),
                 row[0] if row else None, decision.production_accuracy, margin, flow_run_id, ts, test_set))
            return PromotionRecord.from_row(con.execute("SELECT * FROM promotions WHERE promotion_id = ?",
                                                        (cur.lastrowid,)).fetchone())

    def mark_promotion_applied(self, promotion_id: int) -> None:
        with self.transaction() as con:
            con.execute("UPDATE promotions SET wandb_applied_at = ? WHERE promotion_id = ?", (now(), promotion_id))

    def record_rollback(self, artifact_id: int, *, reason: str, requested_by: str) -> PromotionRecord:
        """Move `production` to `artifact_id`, recorded as a promotion of kind 'rollback', rejecting the model rolled
        back from, in one transaction (the candidate alias stays where it is)."""
        with self.transaction() as con:
            name = con.execute("SELECT name FROM artifacts WHERE artifact_id = ?", (artifact_id,)).fetchone()[0]
            row = con.execute("SELECT artifact_id FROM aliases WHERE name = ? AND alias = 'production'",
                              (name,)).fetchone()
            ts = now()
            con.execute("INSERT OR REPLACE INTO aliases VALUES (?, 'production', ?, ?)", (name, artifact_id, ts))
            cur = con.execute(
                "INSERT INTO promotions (artifact_id, decision, reason, candidate_accuracy, validation_passed,"
                " production_artifact_id, production_accuracy, margin, flow_run_id, decided_at, kind, requested_by)"
                " VALUES (?, 'promoted', ?, NULL, 1, ?, NULL, 0, NULL, ?, 'rollback', ?)",
                (artifact_id, reason, row[0] if row else None, ts, requested_by))
            rejections.on_rollback(con, rolled_back=row[0] if row else None, target=artifact_id, reason=reason,
                                   requested_by=requested_by, at=ts)
            return PromotionRecord.from_row(con.execute("SELECT * FROM promotions WHERE promotion_id = ?",
                                                        (cur.lastrowid,)).fetchone())

    def record_use(self, run_id: str, artifact_id: int) -> None:
        """Record a running run's input as it opens it (not only when it ends), unless gc has deleted it: gc checks
        these edges in its own transaction, so an input in use is never removed, and a removed one never used."""
        with self.transaction() as con:
            gone = con.execute("SELECT deleted_at, deleted_by FROM deletions WHERE artifact_id = ?",
                               (artifact_id,)).fetchone()
            if gone is not None:
                art = self._artifact(con, artifact_id)
                raise ArtifactDeleted(f"{art.label} ({art.digest[:16]}) was deleted by gc on "
                                      f"{gone['deleted_at'][:10]} ({gone['deleted_by']}): its files are gone")
            con.execute("INSERT OR IGNORE INTO edges VALUES (?, ?, 'used')", (run_id, artifact_id))

    def delete_artifact(self, artifact_id: int, *, path: str, bytes: int, reason: str, deleted_by: str,
                        remove: Callable[[], None]) -> bool:
        """Record `artifact_id` as deleted and call `remove()` (which takes its folder away) in one transaction,
        unless a run still 'running' uses or produced it, a run of a flow run still running did, or a flow run
        holds it (`holds.py`): then nothing happens and False. `remove` raising rolls the record back."""
        with self.transaction() as con:
            busy = con.execute(
                "SELECT 1 FROM edges e JOIN runs r USING (run_id) WHERE e.artifact_id = ? AND (r.status = 'running'"
                " OR r.flow_run_id IN (SELECT flow_run_id FROM runs WHERE status = 'running'"
                " AND flow_run_id IS NOT NULL)) UNION SELECT 1 FROM holds WHERE artifact_id = ? LIMIT 1",
                (artifact_id, artifact_id)).fetchone()
            if busy is not None:
                return False
            con.execute("INSERT OR REPLACE INTO deletions VALUES (?, ?, ?, ?, ?, ?)",
                        (artifact_id, path, bytes, reason, deleted_by, now()))
            remove()
            return True

    # ------------------------------------------------------------------------------------------- reads

    def alias(self, name: str, alias: str) -> ArtifactRecord | None:
        with self.reader() as con:
            row = con.execute("SELECT artifact_id FROM aliases WHERE name = ? AND alias = ?", (name, alias)).fetchone()
            return self._artifact(con, row[0]) if row else None

    def promotions(self, artifact_id: int | None = None, *, production_artifact_ids: list[int] | None = None
                   ) -> list[PromotionRecord]:
        """Decisions about `artifact_id` (default: all), or those that compared against one of
        `production_artifact_ids` as the production model."""
        with self.reader() as con:
            if production_artifact_ids is not None:
                q = (f"SELECT * FROM promotions WHERE production_artifact_id IN "
                     f"({','.join('?' * len(production_artifact_ids))})")
                args: tuple = tuple(production_artifact_ids)
            elif artifact_id is not None:
                q, args = "SELECT * FROM promotions WHERE artifact_id = ?", (artifact_id,)
            else:
                q, args = "SELECT * FROM promotions", ()
            return [PromotionRecord.from_row(r) for r in con.execute(q + " ORDER BY promotion_id", args)]

    def deletions(self) -> dict[int, DeletionRecord]:
        """Artifact versions gc has removed, by artifact id."""
        with self.reader() as con:
            return {r["artifact_id"]: DeletionRecord(**dict(r)) for r in con.execute("SELECT * FROM deletions")}

    def aliases_of(self, artifact_id: int) -> list[dict]:
        """The aliases an artifact version holds now, with when each was set."""
        with self.reader() as con:
            return [dict(r) for r in con.execute("SELECT alias, set_at FROM aliases WHERE artifact_id = ?"
                                                 " ORDER BY alias", (artifact_id,))]

    def _artifact(self, con: sqlite3.Connection, artifact_id: int) -> ArtifactRecord:
        r = con.execute("SELECT * FROM artifacts WHERE artifact_id = ?", (artifact_id,)).fetchone()
        files = tuple(FileRecord(f["relpath"], f["sha256"], f["size"]) for f in con.execute(
            "SELECT relpath, sha256, size FROM artifact_files WHERE artifact_id = ? ORDER BY relpath",
            (artifact_id,)))
        return ArtifactRecord(artifact_id=r["artifact_id"], name=r["name"], type=r["type"], version=r["version"],
                              digest=r["digest"], path=r["path"], metadata=json.loads(r["metadata_json"]),
                              producer_run_id=r["producer_run_id"], created_at=r["created_at"], files=files)

    def artifact(self, artifact_id: int) -> ArtifactRecord:
        with self.reader() as con:
            return self._artifact(con, artifact_id)

    def find_artifact(self, name: str, digest: str) -> ArtifactRecord | None:
        with self.reader() as con:
            row = con.execute("SELECT artifact_id FROM artifacts WHERE name = ? AND digest = ?",
                              (name, digest)).fetchone()
            return self._artifact(con, row[0]) if row else None

    def require_artifact(self, name: str, digest: str) -> ArtifactRecord:
        """`find_artifact`, for a version this run has just recorded: its absence is a broken store."""
        rec = self.find_artifact(name, digest)
        if rec is None:
            raise StoreError(f"{self.path}: {name} {digest[:16]} was recorded by this run and is gone from the store")
        return rec

    def artifacts(self, type: str | None = None) -> list[ArtifactRecord]:
        with self.reader() as con:
            q = "SELECT artifact_id FROM artifacts" + (" WHERE type = ?" if type else "") + " ORDER BY artifact_id"
            return [self._artifact(con, r[0]) for r in con.execute(q, (type,) if type else ())]

    def run(self, run_id: str) -> RunRecord | None:
        with self.reader() as con:
            r = con.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            return RunRecord.from_row(r) if r is not None else None

    def runs(self, flow_run_id: str | None = None) -> list[RunRecord]:
        with self.reader() as con:
            q = "SELECT * FROM runs" + (" WHERE flow_run_id = ?" if flow_run_id else "") + " ORDER BY started_at"
            return [RunRecord.from_row(r) for r in con.execute(q, (flow_run_id,) if flow_run_id else ())]

    def edges(self, run_id: str) -> dict[str, list[ArtifactRecord]]:
        with self.reader() as con:
            out: dict[str, list[ArtifactRecord]] = {"used": [], "produced": []}
            for r in con.execute("SELECT artifact_id, direction FROM edges WHERE run_id = ? ORDER BY artifact_id",
                                 (run_id,)):
                out[r["direction"]].append(self._artifact(con, r["artifact_id"]))
            return out

    def consumers(self, artifact_id: int) -> list[str]:
        with self.reader() as con:
            return [r[0] for r in con.execute(
                "SELECT e.run_id FROM edges e JOIN runs r USING (run_id) WHERE e.artifact_id = ?"
                " AND e.direction = 'used' ORDER BY r.started_at", (artifact_id,))]

    def producers(self, artifact_id: int) -> list[str]:
        with self.reader() as con:
            return [r[0] for r in con.execute(
                "SELECT e.run_id FROM edges e JOIN runs r USING (run_id) WHERE e.artifact_id = ?"
                " AND e.direction = 'produced' ORDER BY r.started_at", (artifact_id,))]

    def artifacts_with_file(self, sha256: str) -> list[ArtifactRecord]:
        with self.reader() as con:
            ids = [r[0] for r in con.execute(
                "SELECT DISTINCT artifact_id FROM artifact_files WHERE sha256 = ? ORDER BY artifact_id", (sha256,))]
            return [self._artifact(con, i) for i in ids]

    # ------------------------------------------------------------------------------------------- W&B sync

    def sync_log(self, run_id: str | None = None) -> list[dict]:
        """What `mnist-pipeline sync` has already done in W&B: one row per uploaded run and declared input."""
        with self.reader() as con:
            q = "SELECT * FROM sync_log" + (" WHERE run_id = ?" if run_id else "") + " ORDER BY done_at, rowid"
            return [dict(r) for r in con.execute(q, (run_id,) if run_id else ())]

    def record_wandb_gaps(self, run_id: str, gaps: list, confirmed=()) -> None:
        """W&B's gaps of a run (first kept), for `sync`; a pending one gives way to a new gap or a `confirmed` ref."""
        with self.transaction() as con:
            con.executemany(DROP_PENDING_GAP, [(run_id, r) for r in {*confirmed, *(g.ref for g in gaps)}])
            con.executemany("INSERT OR IGNORE INTO wandb_gaps VALUES (?, ?, ?, ?, ?, ?, ?)",
                            [(run_id, g.action, g.ref, g.call, g.error, g.detail, now()) for g in gaps])

    def wandb_gaps(self, run_id: str | None = None) -> list[dict]:
        with self.reader() as con:
            q = "SELECT * FROM wandb_gaps" + (" WHERE run_id = ?" if run_id else "") + " ORDER BY recorded_at, rowid"
            return [dict(r) for r in con.execute(q, (run_id,) if run_id else ())]

    def mark_synced(self, run_id: str, action: str, ref: str, detail: str | None = None) -> None:
        with self.transaction() as con:
            con.execute("INSERT OR IGNORE INTO sync_log VALUES (?, ?, ?, ?, ?)", (run_id, action, ref, detail, now()))
