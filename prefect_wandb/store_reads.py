"""The lineage store's reads (`LineageStore` inherits them): records by id, name, alias, file, run and edge, the
promotion decisions, gc's deletions, and what sync has done and has left to do. SQLAlchemy Core on the store's
tables (`tables.py`); each read opens a connection of its own (autocommit: a read takes no lock)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from sqlalchemy import Connection, RowMapping, Select, literal_column, select

from prefect_wandb import tables as t
from prefect_wandb.records import (
    AliasRecord,
    ArtifactRecord,
    DeletionRecord,
    FileRecord,
    PromotionRecord,
    RunEdges,
    RunRecord,
    SyncLogRecord,
    WandbGap,
)
from prefect_wandb.store_engine import insertion_order

A, F, E, R, P = t.artifacts, t.artifact_files, t.edges, t.runs, t.promotions


def _row(mapping: RowMapping) -> Any:
    """A row by column name, for the records' `from_row` (written for sqlite3.Row: any mapping of names does)."""
    return mapping


class StoreReads:
    def _read(self) -> AbstractContextManager[Connection]:
        raise NotImplementedError

    @contextmanager
    def reader(self) -> Iterator[Connection]:
        """A read connection (SQLAlchemy Core on `tables.py`, any database), for holds and rejections."""
        with self._read() as conn:
            yield conn

    def _artifact(self, conn: Connection, artifact_id: int) -> ArtifactRecord:
        r = conn.execute(select(A).where(A.c.artifact_id == artifact_id)).mappings().one()
        files = tuple(FileRecord(f.relpath, f.sha256, f.size) for f in conn.execute(
            select(F.c.relpath, F.c.sha256, F.c.size).where(F.c.artifact_id == artifact_id).order_by(F.c.relpath)))
        return ArtifactRecord(artifact_id=r["artifact_id"], name=r["name"], type=r["type"], version=r["version"],
                              digest=r["digest"], path=r["path"], metadata=json.loads(r["metadata_json"]),
                              producer_run_id=r["producer_run_id"], created_at=r["created_at"], files=files)

    def _artifacts(self, conn: Connection, query) -> list[ArtifactRecord]:
        return [self._artifact(conn, aid) for aid in conn.execute(query).scalars().all()]

    def alias(self, name: str, alias: str) -> ArtifactRecord | None:
        with self._read() as conn:
            aid = conn.execute(select(t.aliases.c.artifact_id).where(
                t.aliases.c.name == name, t.aliases.c.alias == alias)).scalar()
            return self._artifact(conn, aid) if aid is not None else None

    def promotions(self, artifact_id: int | None = None, *, production_artifact_ids: list[int] | None = None
                   ) -> list[PromotionRecord]:
        """Decisions about `artifact_id` (default: all), or those that compared against one of
        `production_artifact_ids` as the production model."""
        # every column the table has: a store from before `kind`, opened read-only, has fewer (the record's defaults)
        q: Select = select(literal_column("*")).select_from(P)
        if production_artifact_ids is not None:
            q = q.where(P.c.production_artifact_id.in_(production_artifact_ids))
        elif artifact_id is not None:
            q = q.where(P.c.artifact_id == artifact_id)
        with self._read() as conn:
            return [PromotionRecord.from_row(_row(r)) for r in conn.execute(q.order_by(P.c.promotion_id)).mappings()]

    def deletions(self) -> dict[int, DeletionRecord]:
        """Artifact versions gc has removed, by artifact id."""
        with self._read() as conn:
            return {r["artifact_id"]: DeletionRecord(**r) for r in conn.execute(select(t.deletions)).mappings()}

    def aliases_of(self, artifact_id: int) -> list[AliasRecord]:
        """The aliases an artifact version holds now, with when each was set."""
        al = t.aliases
        with self._read() as conn:
            return [AliasRecord(**r) for r in conn.execute(select(al.c.alias, al.c.set_at).where(
                al.c.artifact_id == artifact_id).order_by(al.c.alias)).mappings()]

    def artifact(self, artifact_id: int) -> ArtifactRecord:
        with self._read() as conn:
            return self._artifact(conn, artifact_id)

    def find_artifact(self, name: str, digest: str) -> ArtifactRecord | None:
        with self._read() as conn:
            aid = conn.execute(select(A.c.artifact_id).where(A.c.name == name, A.c.digest == digest)).scalar()
            return self._artifact(conn, aid) if aid is not None else None

    def artifacts(self, type: str | None = None) -> list[ArtifactRecord]:
        q = select(A.c.artifact_id).order_by(A.c.artifact_id)
        with self._read() as conn:
            return self._artifacts(conn, q.where(A.c.type == type) if type else q)

    def run(self, run_id: str) -> RunRecord | None:
        with self._read() as conn:
            r = conn.execute(self._runs_query().where(R.c.run_id == run_id)).mappings().first()
            return RunRecord.from_row(_row(r)) if r is not None else None

    @staticmethod
    def _runs_query() -> Select:
        # every column the table has: a store from before leases, opened read-only, has no lease_expires_at
        return select(literal_column("*")).select_from(R)

    def runs(self, flow_run_id: str | None = None) -> list[RunRecord]:
        q = self._runs_query().order_by(R.c.started_at)
        with self._read() as conn:
            return [RunRecord.from_row(_row(r)) for r in conn.execute(
                q.where(R.c.flow_run_id == flow_run_id) if flow_run_id else q).mappings()]

    def edges(self, run_id: str) -> RunEdges:
        with self._read() as conn:
            out = RunEdges(used=[], produced=[])
            for r in conn.execute(select(E.c.artifact_id, E.c.direction).where(E.c.run_id == run_id).order_by(
                    E.c.artifact_id)).all():
                (out.used if r.direction == "used" else out.produced).append(self._artifact(conn, r.artifact_id))
            return out

    def _runs_with_edge(self, artifact_id: int, direction: str) -> list[str]:
        with self._read() as conn:
            return list(conn.execute(select(E.c.run_id).join(R, E.c.run_id == R.c.run_id).where(
                E.c.artifact_id == artifact_id, E.c.direction == direction).order_by(R.c.started_at)).scalars())

    def consumers(self, artifact_id: int) -> list[str]:
        return self._runs_with_edge(artifact_id, "used")

    def producers(self, artifact_id: int) -> list[str]:
        return self._runs_with_edge(artifact_id, "produced")

    def artifacts_with_file(self, sha256: str) -> list[ArtifactRecord]:
        with self._read() as conn:
            return self._artifacts(conn, select(F.c.artifact_id).where(F.c.sha256 == sha256).distinct().order_by(
                F.c.artifact_id))

    # ------------------------------------------------------------------------------------------- W&B sync

    def sync_log(self, run_id: str | None = None) -> list[SyncLogRecord]:
        """What `sync` has already done in W&B: one row per uploaded run and declared input."""
        return [SyncLogRecord(**r) for r in self._log(t.sync_log, t.sync_log.c.done_at, run_id)]

    def wandb_gaps(self, run_id: str | None = None) -> list[WandbGap]:
        """What W&B is missing (of `run_id`, default all), for `sync`."""
        return [WandbGap(**r) for r in self._log(t.wandb_gaps, t.wandb_gaps.c.recorded_at, run_id)]

    def _log(self, table, at, run_id: str | None) -> list[dict]:
        """The rows of `table` (of `run_id`, default all), in time order, then in the order they were recorded."""
        with self._read() as conn:
            q = select(table).order_by(at, *insertion_order(conn, table))
            return [dict(r) for r in conn.execute(q.where(table.c.run_id == run_id) if run_id else q).mappings()]
