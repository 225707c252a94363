"""Holds: what a running flow is about to use, on record in the lineage store from the moment it resolves it.

A stage records its inputs as it opens them (`store.record_use`), but a flow knows its dataset earlier: when
prepare-data is a Prefect cache hit, no stage of the flow has declared it yet, and a sweep's trials declare it only
in journals the flow commits later. A hold closes that gap: `hold` (in the flow's process) puts a row in `holds`
that gc respects (`retention.protected`, and `store.delete_artifact` in its own transaction), `release` takes it
away when the flow ends, and `expire` drops the holds of processes that are gone (a flow killed with -9 never
releases), the same test that marks their runs failed. SQLAlchemy Core on `tables.holds`: any store database.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable

from sqlalchemy import delete, select

from prefect_wandb import tables as t
from prefect_wandb.environment import process_identity
from prefect_wandb.records import lease_until
from prefect_wandb.store import ArtifactDeleted, LineageStore, now
from prefect_wandb.store_engine import insertion_order, upsert

H = t.holds


def hold(store: LineageStore, flow_run_id: str, artifact_id: int) -> None:
    """Hold `artifact_id` for `flow_run_id`, unless gc has already deleted it (ArtifactDeleted: its files are
    gone, the flow must make it again)."""
    with store.transaction() as con:
        gone = con.execute(select(t.deletions.c.deleted_at, t.deletions.c.deleted_by).where(
            t.deletions.c.artifact_id == artifact_id)).first()
        if gone is not None:
            art = store._artifact(con, artifact_id)
            raise ArtifactDeleted(f"{art.label} ({art.digest[:16]}) was deleted by gc on {gone.deleted_at[:10]} "
                                  f"({gone.deleted_by}): its files are gone")
        ins = upsert(con, H).values(flow_run_id=flow_run_id, artifact_id=artifact_id,
                                    process_json=json.dumps(process_identity(), sort_keys=True), taken_at=now(),
                                    lease_expires_at=lease_until())
        con.execute(ins.on_conflict_do_update(index_elements=[H.c.flow_run_id, H.c.artifact_id], set_={
            "process_json": ins.excluded.process_json, "taken_at": ins.excluded.taken_at,
            "lease_expires_at": ins.excluded.lease_expires_at}))


def release(store: LineageStore, flow_run_id: str) -> int:
    """Drop every hold of `flow_run_id`; how many there were."""
    with store.transaction() as con:
        return con.execute(delete(H).where(H.c.flow_run_id == flow_run_id)).rowcount


def held(store: LineageStore) -> dict[int, list[str]]:
    """artifact_id -> the flow runs holding it."""
    out: dict[int, list[str]] = {}
    with store.reader() as con:
        for r in con.execute(select(H.c.artifact_id, H.c.flow_run_id).order_by(H.c.taken_at, *insertion_order(con, H))):
            out.setdefault(r.artifact_id, []).append(r.flow_run_id)
    return out


def expire(store: LineageStore, is_dead: Callable[[dict], bool]) -> list[str]:
    """Drop the holds whose process is gone (`is_dead(process)`, the process with the hold's `lease_expires_at`,
    as `store.fail_dead_runs` asks: on another host, an expired lease); the flow runs. A hold renewed meanwhile
    (its lease no longer expired) stays."""
    with store.reader() as con:
        rows = [(r.flow_run_id, {**json.loads(r.process_json), "lease_expires_at": r.lease_expires_at})
                for r in con.execute(select(H.c.flow_run_id, H.c.process_json, H.c.lease_expires_at).distinct())]
    here = socket.gethostname()
    dead = {fr: proc.get("host") == here for fr, proc in rows if is_dead(proc)}
    if dead:
        ts = now()
        with store.transaction() as con:
            local = [fr for fr, on_this_host in dead.items() if on_this_host]
            if local:
                con.execute(delete(H).where(H.c.flow_run_id.in_(local)))
            for fr in (fr for fr, on_this_host in dead.items() if not on_this_host):
                con.execute(delete(H).where(H.c.flow_run_id == fr, H.c.lease_expires_at < ts))
    return sorted(dead)
