"""Rejections: an operator's decision about a model that the promotion gate respects.

`rollback` rejects the model it moves production away from (in the rollback's own transaction), so rerunning the
sweep or run that made it does not promote it again; the `unreject` command lifts that. The table is a log that
is only appended to: a model is rejected while its newest row says 'reject'. SQLAlchemy Core on
`tables.rejections`: any store database.
"""

from __future__ import annotations

import sqlite3
from typing import Literal

from sqlalchemy import Connection, insert, select
from sqlalchemy.exc import DBAPIError

from prefect_wandb import tables as t
from prefect_wandb.records import RejectionRecord, now

RJ = t.rejections


def _no_table(e: BaseException) -> bool:
    """A store from before rejections, opened read-only (SQLite): the table is not there, so none is recorded."""
    return "no such table" in str(e)


def add(con: Connection, artifact_id: int, action: Literal["reject", "unreject"], *, source: str, reason: str,
        requested_by: str, at: str) -> RejectionRecord:
    """Append one row, inside the caller's write transaction."""
    cur = con.execute(insert(RJ).values(artifact_id=artifact_id, action=action, source=source, reason=reason,
                                        requested_by=requested_by, at=at))
    return RejectionRecord(int((cur.inserted_primary_key or (0,))[0]), artifact_id, action, source, reason,
                           requested_by, at)


def current_in(con: Connection, artifact_id: int) -> RejectionRecord | None:
    """The rejection in force for `artifact_id` (None: not rejected)."""
    try:
        row = con.execute(select(RJ).where(RJ.c.artifact_id == artifact_id).order_by(
            RJ.c.rejection_id.desc()).limit(1)).mappings().first()
    except (DBAPIError, sqlite3.OperationalError) as e:  # a store from before rejections, opened read-only
        if _no_table(e):
            return None
        raise
    return RejectionRecord(**dict(row)) if row is not None and row["action"] == "reject" else None


def on_rollback(con: Connection, *, rolled_back: int | None, target: int, reason: str, requested_by: str,
                at: str) -> None:
    """A rollback rejects the model it leaves; the model it makes production is the operator's choice, so a
    rejection of that one ends."""
    if rolled_back is not None and rolled_back != target:
        add(con, rolled_back, "reject", source="rollback", reason=reason, requested_by=requested_by, at=at)
    if current_in(con, target) is not None:
        add(con, target, "unreject", source="rollback", reason=f"made production again: {reason}",
            requested_by=requested_by, at=at)


def current(store, artifact_id: int) -> RejectionRecord | None:
    with store.reader() as con:
        return current_in(con, artifact_id)


def unreject(store, artifact_id: int, *, reason: str, requested_by: str) -> RejectionRecord | None:
    """Lift the rejection of `artifact_id`, returning the rejection lifted (None: it was not rejected; nothing
    written)."""
    with store.transaction() as con:
        was = current_in(con, artifact_id)
        if was is not None:
            add(con, artifact_id, "unreject", source="unreject", reason=reason, requested_by=requested_by, at=now())
        return was


def history(store, artifact_id: int | None = None) -> list[RejectionRecord]:
    """Every rejection and unrejection (of one model, or all), oldest first."""
    q = select(RJ).order_by(RJ.c.rejection_id)
    with store.reader() as con:
        try:
            return [RejectionRecord(**dict(r)) for r in con.execute(
                q.where(RJ.c.artifact_id == artifact_id) if artifact_id is not None else q).mappings()]
        except (DBAPIError, sqlite3.OperationalError) as e:
            if _no_table(e):
                return []
            raise
