"""Stages that run away from the lineage store: their writes are journaled, and the store's one writer commits them.

A sweep trial runs on a Dask worker, maybe on another machine. SQLite over a network file system is not safe
(locks are unreliable there), so a worker never opens the store: its stages get a `JournalStore`, which answers
the few reads a stage needs from the records it was handed (the dataset) or produced itself (the model it then
evaluates), and keeps every write (start, finish, fail of a run) in order. The trial returns that journal, a small
picklable list, and the flow's process, the store's only writer, replays it with `commit_journal`.

Artifact files never travel: a stage on the worker already moved its outputs into their content-addressed folder
in the (shared) artifacts folder before it journaled them, exactly as it does against the real store; only
records cross the wire. A trial that dies with its worker leaves no record, only files that a retry recreates
or verifies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Text, func, literal, update

from prefect_wandb import tables as t
from prefect_wandb.store import ArtifactRecord, LineageStore, NewArtifact, now


@dataclass(frozen=True)
class Entry:
    kind: str  # start | use | gaps | finish | fail
    run_id: str
    kwargs: dict
    at: str = field(default_factory=now)  # when it happened on the worker (the commit comes later)


@dataclass
class JournalStore:
    """Stands in for `LineageStore` in stages run on a worker (same method names and arguments)."""

    path: str
    known: list[ArtifactRecord] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._by_key = {(r.name, r.digest): r for r in self.known}
        self._next_id = -1  # produced here, not yet in the store: negative ids until the commit maps them

    # reads -----------------------------------------------------------------------------------------------
    def find_artifact(self, name: str, digest: str) -> ArtifactRecord | None:
        return self._by_key.get((name, digest))

    def fail_dead_runs(self, is_dead) -> list[str]:
        return []  # the store's writer (the flow's process) does this, on its own host

    # writes ----------------------------------------------------------------------------------------------
    def start_run(self, run_id: str, job_type: str, **kwargs) -> None:
        env = dict(kwargs.get("env") or {})
        env["started_at_worker"] = now()  # the store's started_at is the commit time; this is when it ran
        self.entries.append(Entry("start", run_id, {"job_type": job_type, **kwargs, "env": env}))

    def finish_run(self, run_id: str, *, used: list[int], produced: list[NewArtifact],
                   **kwargs) -> list[ArtifactRecord]:
        out = []
        for art in produced:
            rec = self._by_key.get((art.name, art.digest))
            if rec is None:
                rec = ArtifactRecord(artifact_id=self._next_id, name=art.name, type=art.type, version=-1,
                                     digest=art.digest, path=art.path, metadata=art.metadata,
                                     producer_run_id=run_id, created_at=now(), files=tuple(art.files))
                self._next_id -= 1
                self._by_key[(art.name, art.digest)] = rec
            out.append(rec)
        self.entries.append(Entry("finish", run_id, {"used": list(used), "produced": list(produced), **kwargs,
                                                     "produced_ids": [r.artifact_id for r in out]}))
        return out

    def record_use(self, run_id: str, artifact_id: int) -> None:
        self.entries.append(Entry("use", run_id, {"artifact_id": artifact_id}))

    def record_wandb_gaps(self, run_id: str, gaps: list, confirmed=()) -> None:
        self.entries.append(Entry("gaps", run_id, {"gaps": list(gaps), "confirmed": list(confirmed)}))

    def fail_run(self, run_id: str, *, used: list[int], error: str) -> None:
        self.entries.append(Entry("fail", run_id, {"used": list(used), "error": error}))


def commit_journal(store: LineageStore, entries: list[Entry]) -> dict[tuple[str, str], ArtifactRecord]:
    """Replay a journal into the store, in order; returns the committed records by (name, digest).

    Ids the journal made up (negative) are mapped to the store's as their producing run is committed; each
    finish is one transaction, as it would have been on the worker. A run's start and finish times are the
    worker's, not those of the commit.
    """
    ids: dict[int, int] = {}
    committed: dict[tuple[str, str], ArtifactRecord] = {}
    times: dict[str, dict[str, str]] = {}
    for e in entries:
        if e.kind in ("start", "finish", "fail"):
            times.setdefault(e.run_id, {})["started_at" if e.kind == "start" else "finished_at"] = e.at
        kw = dict(e.kwargs)
        if e.kind == "start":
            store.start_run(e.run_id, kw.pop("job_type"), **kw)
            continue
        if e.kind == "use":
            aid: int = kw["artifact_id"]
            store.record_use(e.run_id, ids.get(aid, aid))
            continue
        if e.kind == "gaps":
            store.record_wandb_gaps(e.run_id, kw["gaps"], kw.get("confirmed", ()))
            continue
        used = [ids[a] if a < 0 else a for a in kw.pop("used")]
        if e.kind == "fail":
            store.fail_run(e.run_id, used=used, error=kw["error"])
            continue
        produced, pseudo = kw.pop("produced"), kw.pop("produced_ids")
        records = store.finish_run(e.run_id, used=used, produced=produced, **kw)
        for made_up, rec in zip(pseudo, records, strict=True):
            ids[made_up] = rec.artifact_id
            committed[(rec.name, rec.digest)] = rec
    R = t.runs
    with store.transaction() as con:
        for run_id, at in times.items():
            con.execute(update(R).where(R.c.run_id == run_id).values(
                started_at=func.coalesce(literal(at.get("started_at"), Text), R.c.started_at),
                finished_at=func.coalesce(literal(at.get("finished_at"), Text), R.c.finished_at)))
    return committed
