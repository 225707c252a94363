"""Rejections: an operator's decision about a model that the promotion gate respects.

`rollback` rejects the model it moves production away from (in the rollback's own transaction), so rerunning the
sweep or run that made it does not promote it again; the `unreject` command lifts that. The table is a log that
is only appended to: a model is rejected while its newest row says 'reject'.
"""

from __future__ import annotations

import sqlite3
from typing import Literal

from prefect_wandb.records import RejectionRecord, now


def add(con: sqlite3.Connection, artifact_id: int, action: Literal["reject", "unreject"], *, source: str, reason: str,
        requested_by: str, at: str) -> RejectionRecord:
    """Append one row, inside the caller's write transaction."""
    cur = con.execute("INSERT INTO rejections (artifact_id, action, source, reason, requested_by, at)"
                      " VALUES (?, ?, ?, ?, ?, ?)", (artifact_id, action, source, reason, requested_by, at))
    return RejectionRecord(int(cur.lastrowid or 0), artifact_id, action, source, reason, requested_by, at)


def current_in(con: sqlite3.Connection, artifact_id: int) -> RejectionRecord | None:
    """The rejection in force for `artifact_id` (None: not rejected)."""
    try:
        row = con.execute("SELECT * FROM rejections WHERE artifact_id = ? ORDER BY rejection_id DESC LIMIT 1",
                          (artifact_id,)).fetchone()
    except sqlite3.OperationalError as e:  # a store from before rejections, opened read-only: none recorded
        if "no such table" in str(e):
            return None
        raise
    return RejectionRecord(**dict(row)) if row is not None and row["action"] == "reject" else None


def on_rollback(con: sqlite3.Connection, *, rolled_back: int | None, target: int, reason: str, requested_by: str,
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
    q, args = ("SELECT * FROM rejections WHERE artifact_id = ?", (artifact_id,)) if artifact_id is not None \
        else ("SELECT * FROM rejections", ())
    with store.reader() as con:
        try:
            return [RejectionRecord(**dict(r)) for r in con.execute(q + " ORDER BY rejection_id", args)]
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                return []
            raise
