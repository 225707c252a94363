"""`sync`: what to send to W&B, and sending it through a backend (`WandbBackend`, which
`audit --online` reads through too).

The plan comes from the lineage store and the offline run folders alone (no network); `run_sync` carries it out
through a `WandbBackend`: `wandb.client.WandbClient` (the real W&B) or `recording.RecordingWandb` (records
the calls in order and answers from an in-memory W&B, for `sync --dry-run` and the tests). What has been done
is kept in the store (`sync_log`, `promotions.wandb_applied_at`), so a second sync sends nothing:
re-running `wandb sync` on an uploaded run would duplicate its artifact versions (wandb issue #3962).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Protocol

from prefect_wandb.alias_sync import follow_store
from prefect_wandb.records import SyncLogRecord, WandbVersion, optional
from prefect_wandb.refs import wandb_ref
from prefect_wandb.store import ArtifactRecord, LineageStore, RunRecord
from prefect_wandb.wandb.run_file import synced_marker

Status = Literal["pending", "done", "failed", "blocked", "missing"]


@dataclass(kw_only=True)
class Action:
    """One step of a run's sync: its upload, or one input edge (`use`)."""

    action: Literal["upload", "use"]
    kind: Literal["run", "artifact"] | None = optional()  # upload of an online run with W&B gaps: the run itself,
    # or one artifact
    ref: str  # the offline run folder (upload) or the exact W&B version `[entity/]project/name:sha256-…` (use)
    artifact: str | None = optional()  # use, and upload of kind artifact: its label
    artifact_id: int | None = optional()  # upload of kind artifact
    producer_run_id: str | None = optional()  # use: the run that made the input (it must be in W&B first)
    status: Status
    detail: str
    marker: bool | None = optional()  # upload: `wandb sync` already marked it synced
    was: Status | None = optional()  # the status before this sync (for reporting)


@dataclass
class RunPlan:
    run_id: str
    job_type: str
    status: str
    mode: str | None
    project: str
    entity: str | None
    run_dir: str | None
    actions: list[Action]
    note: str


@dataclass
class PromotionPlan:
    promotion_id: int
    artifact_id: int
    artifact: str
    decision: str
    ref: str
    aliases: list[str]
    producer_run_id: str
    status: Status
    detail: str
    registry_path: str | None = optional()  # a registry link that failed online, replayed after the aliases
    # every unapplied decision this one step applies (equal steps are planned once)
    promotion_ids: list[int] = field(default_factory=list)
    was: Status | None = optional()


@dataclass
class SyncPlan:
    """What `plan_sync` plans and `run_sync` did (`as_json(plan)` is the `sync --json` output)."""

    runs: list[RunPlan]
    promotions: list[PromotionPlan]
    # filled in by run_sync:
    entity: str | None = optional()
    dry_run: bool | None = optional()
    counts: dict[str, int] | None = optional()
    ok: bool | None = optional()

    def steps(self) -> list[Action | PromotionPlan]:
        """Every step: the runs' actions in order, then the promotions."""
        return [*(a for r in self.runs for a in r.actions), *self.promotions]


def _set(item: Action | PromotionPlan, status: Status, detail: str) -> None:
    """The one place a step's status changes."""
    item.status, item.detail = status, detail


class WandbBackend(Protocol):
    """What `sync` and `audit --online` ask of W&B. `wandb.client.WandbClient` is the real one;
    `recording.RecordingWandb` records the calls and answers from an in-memory W&B (`sync --dry-run`, tests)."""

    def check(self) -> str: ...  # the entity to use when a run names none; raises WandbUnavailable
    def run_exists(self, entity: str | None, project: str, run_id: str) -> bool: ...
    def upload(self, run_dir: Path, entity: str | None, project: str, run_id: str) -> str | None: ...
    def run_inputs(self, entity: str | None, project: str, run_id: str) -> set[str]: ...
    def declare_inputs(self, entity: str | None, project: str, run_id: str, refs: list[str]) -> None: ...
    def log_artifact(self, entity: str | None, project: str, run_id: str, *, name: str, type: str, path: str,
                     metadata: dict, digest: str) -> None: ...
    def add_aliases(self, ref: str, aliases: list[str]) -> list[str]: ...
    def link_artifact(self, ref: str, registry_path: str, aliases: list[str]) -> None: ...
    def lookup_artifact(self, ref: str) -> WandbVersion | None: ...


# What `sync` has done already, by (run id, action, ref): the sync log's rows
Done = dict[tuple[str, str, str], SyncLogRecord]


def find_offline_dir(run: RunRecord, search_dirs: Sequence[Path] = ()) -> Path | None:
    """The `offline-run-*-<id>` folder of a recorded run: where it was recorded, else under `search_dirs`."""
    rid = run.run_id
    candidates = [Path(run.wandb_dir)] if run.wandb_dir else []
    for base in map(Path, search_dirs):
        candidates.append(base)
        candidates += sorted(base.glob(f"offline-run-*-{rid}")) + sorted(base.glob(f"wandb/offline-run-*-{rid}"))
    return next((c for c in candidates if (c / f"run-{rid}.wandb").is_file()), None)


def _plan_online_gaps(store: LineageStore, run: RunRecord, entry: RunPlan, done: Done) -> None:
    """An online run is in W&B; what a failed W&B call left out of it (`wandb_gaps`) is planned like an offline
    run's work: an artifact upload per version W&B did not commit, a `use` per input edge it did not get."""
    rid = run.run_id
    gaps = store.wandb_gaps(rid)
    if not gaps:
        entry.note = "recorded online: W&B has it and its inputs already"
        return
    calls = sorted({g.call for g in gaps})
    entry.note = f"recorded online, but W&B failed at {', '.join(calls)}: completing what W&B missed"
    edges = store.edges(rid)
    produced = {wandb_ref(run.wandb_entity, run.wandb_project or "", a.name, a.digest): a for a in edges.produced}
    used = {wandb_ref(run.wandb_entity, run.wandb_project or "", a.name, a.digest): a for a in edges.used}
    for g in gaps:
        row = done.get((rid, g.action, g.ref))
        status: Status = "done" if row else "pending"
        detail = f"done {row.done_at}" if row else f"{g.call} failed: {g.error}"
        if g.action == "upload" and g.ref in produced:
            a = produced[g.ref]
            entry.actions.append(Action(action="upload", kind="artifact", ref=g.ref, artifact=a.label,
                                        artifact_id=a.artifact_id, status=status, detail=detail))
        elif g.action == "upload":
            if g.call != "finish":
                continue  # an artifact the run did not commit (it failed): nothing of it belongs in W&B
            entry.actions.append(Action(action="upload", kind="run", ref=g.ref, status=status, detail=detail))
        elif g.action == "use" and g.ref in used:
            u = used[g.ref]
            entry.actions.append(Action(action="use", ref=g.ref, artifact=u.label, producer_run_id=u.producer_run_id,
                                        status=status, detail=detail))
        # 'aliases': the promotion stays unapplied in the store and is planned under "promotions"


def _plan_unconfirmed(store: LineageStore, run: RunRecord, entry: RunPlan, done: Done) -> None:
    """An offline run killed after the store committed its outputs but before wandb wrote them to its run file:
    its folder lacks them, so each is logged on the (uploaded) run after its upload."""
    rid = run.run_id
    produced = {wandb_ref(run.wandb_entity, run.wandb_project or "", a.name, a.digest): a
                for a in store.edges(rid).produced}
    for g in store.wandb_gaps(rid):
        if g.action != "upload" or g.call != "unconfirmed" or g.ref not in produced:
            continue
        row = done.get((rid, "upload", g.ref))
        a = produced[g.ref]
        entry.actions.append(Action(action="upload", kind="artifact", artifact=a.label, artifact_id=a.artifact_id,
                                    ref=g.ref, status="done" if row else "pending",
                                    detail=f"done {row.done_at}" if row else g.error))


def _registry_links(store: LineageStore) -> dict[str, str]:
    """The registry links that failed online (a 'registry link' gap), by the model's W&B ref: `sync` replays
    them with the promotion they belong to."""
    return {g.ref: g.detail.removeprefix("link to ") for g in store.wandb_gaps()
            if g.action == "aliases" and g.call == "registry link" and g.detail.startswith("link to ")}


def plan_sync(store: LineageStore, *, search_dirs: Sequence[Path] = (),
              run_ids: Sequence[str] | None = None) -> SyncPlan:
    """What a sync has to do, from the store and the offline run folders alone (no network): per run an upload
    and one `use` per recorded input, then the promotions not yet applied. Done work is marked 'done'."""
    done: Done = {(r.run_id, r.action, r.ref): r for r in store.sync_log()}
    uploaded = {r for r, a, _ in done if a == "upload"}
    runs: list[RunPlan] = []
    for run in store.runs():
        rid = run.run_id
        if run_ids and rid not in run_ids:
            continue
        entry = RunPlan(run_id=rid, job_type=run.job_type, status=run.status, mode=run.wandb_mode,
                        project=run.wandb_project or "", entity=run.wandb_entity, run_dir=None, actions=[], note="")
        runs.append(entry)
        if run.wandb_mode == "online":
            _plan_online_gaps(store, run, entry, done)
            continue
        if run.wandb_mode not in ("offline", None):
            entry.note = f"W&B mode was {run.wandb_mode}: nothing to upload"
            continue
        if run.status == "running":
            entry.note = "still running: sync it once it has finished"
            continue
        d = find_offline_dir(run, search_dirs)
        entry.run_dir = str(d) if d else None
        up = Action(action="upload", ref=str(d) if d else (run.wandb_dir or ""), status="pending", detail="")
        if rid in uploaded:
            row = next(v for (r, a, _), v in done.items() if r == rid and a == "upload")
            up.ref = row.ref
            _set(up, "done", f"uploaded {row.done_at}")
        elif d is None:
            host = ((run.env or {}).get("process") or {}).get("host")
            where = f" on {host}: run `sync` there" if host else ""
            _set(up, "missing", f"offline run folder not found (recorded at {run.wandb_dir}{where})")
        elif (synced_marker(d) or d / "missing").exists():
            up.marker, up.detail = True, "already uploaded by `wandb sync` (its .synced marker)"
        entry.actions.append(up)
        _plan_unconfirmed(store, run, entry, done)
        for u in store.edges(rid).used:
            ref = wandb_ref(run.wandb_entity, run.wandb_project or "", u.name, u.digest)
            use_row = done.get((rid, "use", ref))
            entry.actions.append(Action(action="use", ref=ref, artifact=u.label, producer_run_id=u.producer_run_id,
                                        status="done" if use_row else "pending",
                                        detail=f"declared {use_row.done_at}" if use_row else ""))
    promotions: list[PromotionPlan] = []
    links = _registry_links(store)
    for p in store.promotions():
        if p.wandb_applied_at is not None:
            continue
        art = store.artifact(p.artifact_id)
        if run_ids and art.producer_run_id not in run_ids:
            continue
        ref = artifact_ref(store, art)
        promotions.append(PromotionPlan(
            promotion_id=p.promotion_id, artifact_id=art.artifact_id, artifact=art.label, decision=p.decision, ref=ref,
            aliases=p.aliases, producer_run_id=art.producer_run_id, status="pending", detail="",
            registry_path=links[ref] if ref in links and "production" in p.aliases else None))
    return SyncPlan(runs, _once(promotions))


def artifact_ref(store: LineageStore, art: ArtifactRecord) -> str:
    """The W&B path of a stored version, in the entity and project of the run that produced it."""
    producer = store.run(art.producer_run_id)
    return wandb_ref(producer.wandb_entity if producer else None,
                     (producer.wandb_project if producer else None) or "", art.name, art.digest)


def _once(promotions: list[PromotionPlan]) -> list[PromotionPlan]:
    """One step per distinct (ref, aliases): the last of equal steps stays (an alias ends where its last move puts
    it, so dropping an earlier equal move changes nothing), carrying the ids of the decisions it applies (and a
    registry link any of them left to replay)."""
    last = {(p.ref, tuple(p.aliases)): i for i, p in enumerate(promotions)}
    out: list[PromotionPlan] = []
    for i, p in enumerate(promotions):
        key = (p.ref, tuple(p.aliases))
        if last[key] == i:
            same = [q for q in promotions if (q.ref, tuple(q.aliases)) == key]
            p.promotion_ids = [q.promotion_id for q in same]
            link = next((q.registry_path for q in same if q.registry_path), None)
            if link:
                p.registry_path = link
            out.append(p)
    return out


def _move_aliases(store: LineageStore, backend: WandbBackend, art: ArtifactRecord, aliases: list[str]) -> str:
    """A decision's aliases in W&B where the store has them now (`follow_store`: a later decision may have moved
    one off `art`); the step's detail line."""
    added: list[str] = []
    elsewhere: list[str] = []

    def move(rec: ArtifactRecord, some: list[str]) -> bool:
        missing = backend.add_aliases(artifact_ref(store, rec), some)
        if rec.artifact_id == art.artifact_id:
            added.extend(missing)
        else:
            elsewhere.append(f"{', '.join(some)} on {rec.label}, where the store has it now")
        return True
    follow_store(store, art.name, aliases, move)
    return "; ".join([f"added {', '.join(added)}" if added else "aliases already set", *elsewhere])


def run_sync(store: LineageStore, plan: SyncPlan, backend: WandbBackend, *, dry_run: bool = False,
             entity: str | None = None) -> SyncPlan:
    """Carry out `plan` through `backend`, in order: check, uploads, input edges (per run), promotions.

    The check comes first and raises WandbUnavailable before anything is sent or written. Each finished step
    is recorded in the store at once (unless `dry_run`), so an interrupted sync resumes where it stopped and a
    repeated one sends nothing. A step that fails is reported and the steps that depend on it are 'blocked'.
    `entity`: the answer of a `backend.check()` the caller already made (the check is then not repeated)."""
    entity = entity or backend.check()
    online = {r.run_id for r in store.runs() if r.wandb_mode == "online"}
    uploaded = {r.run_id for r in store.sync_log() if r.action == "upload"} | online

    def record(*args):
        if not dry_run:
            store.mark_synced(*args)

    for run in plan.runs:
        for a in run.actions:
            if a.action != "upload" or a.status != "pending":
                continue
            try:
                if a.kind == "artifact":  # an online run's artifact that W&B did not commit
                    if backend.lookup_artifact(a.ref) is not None:
                        a.detail = "already in W&B (its upload went through after all): not sent again"
                    else:
                        assert a.artifact_id is not None  # an upload of kind artifact names it
                        art = store.artifact(a.artifact_id)
                        backend.log_artifact(run.entity, run.project, run.run_id, name=art.name,
                                             type=art.type, path=art.path, metadata=art.metadata, digest=art.digest)
                        a.detail = "logged on the resumed run"
                    a.status = "done"
                    record(run.run_id, "upload", a.ref, a.detail)
                    continue
                if a.kind == "run":  # an online run whose finish failed: it is in W&B, never re-sent
                    if not backend.run_exists(run.entity, run.project, run.run_id):
                        raise RuntimeError("the run is not in W&B")
                    _set(a, "done", "the run is in W&B; history it missed stays in its folder (a second "
                         "`wandb sync` of an online run would duplicate its artifacts)")
                    record(run.run_id, "upload", a.ref, a.detail)
                    continue
                if a.marker:
                    pass
                elif backend.run_exists(run.entity, run.project, run.run_id):
                    a.detail = "already in W&B: not uploaded again (no duplicate versions)"
                else:
                    url = backend.upload(Path(a.ref), run.entity, run.project, run.run_id)
                    a.detail = url or "uploaded"
                a.status = "done"
                uploaded.add(run.run_id)
                record(run.run_id, "upload", a.ref, a.detail)
            except Exception as e:
                _set(a, "failed", f"{type(e).__name__}: {e}")

    not_committed = {a.ref for r in plan.runs for a in r.actions
                     if a.kind == "artifact" and a.status != "done"}
    for run in plan.runs:
        uses = [a for a in run.actions if a.action == "use" and a.status == "pending"]
        if not uses:
            continue
        if run.run_id not in uploaded:
            for a in uses:
                _set(a, "blocked", "the run itself is not in W&B")
            continue
        ready = []
        for a in uses:
            if a.ref in not_committed:
                _set(a, "blocked", "that version is not in W&B (its upload failed)")
            elif a.producer_run_id not in uploaded:
                _set(a, "blocked", f"its producing run {a.producer_run_id} is not in W&B")
            else:
                ready.append(a)
        if not ready:
            continue
        try:
            present = backend.run_inputs(run.entity, run.project, run.run_id)
            todo = []
            for a in ready:
                if a.ref.rsplit("/", 1)[-1] in present:
                    _set(a, "done", "already declared in W&B")
                else:
                    todo.append(a)
            if todo:
                backend.declare_inputs(run.entity, run.project, run.run_id, [a.ref for a in todo])
                for a in todo:
                    _set(a, "done", "declared: use_artifact on the resumed run")
            for a in ready:
                record(run.run_id, "use", a.ref, a.detail)
        except Exception as e:
            for a in ready:
                if a.status == "pending":
                    _set(a, "failed", f"{type(e).__name__}: {e}")

    for p in plan.promotions:
        if p.producer_run_id not in uploaded:
            _set(p, "blocked", f"its producing run {p.producer_run_id} is not in W&B")
            continue
        try:
            art = store.artifact(p.artifact_id)
            detail = _move_aliases(store, backend, art, p.aliases)
            held = store.alias(art.name, "production")
            if p.registry_path and held is not None and held.artifact_id == art.artifact_id:
                backend.link_artifact(p.ref, p.registry_path, p.aliases)
                detail += f"; linked into {p.registry_path}"
            _set(p, "done", detail)
            if not dry_run:
                for pid in p.promotion_ids or [p.promotion_id]:
                    store.mark_promotion_applied(pid)
        except Exception as e:
            _set(p, "failed", f"{type(e).__name__}: {e}")

    statuses = [s.status for s in plan.steps()]
    return replace(plan, entity=entity, dry_run=dry_run, counts={s: statuses.count(s) for s in sorted(set(statuses))},
                   ok=not any(s in ("failed", "blocked", "missing") for s in statuses))
