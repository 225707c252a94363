"""The stage lifecycle: one pipeline stage is one W&B run and one run of the lineage store.

`with open_stage(settings, "train", config=...) as stage:` starts both. Inside, `stage.use(ref)` declares an input
(checked against its recorded sha256s), `stage.produce(...)` queues an output staged under `stage.staging(name)`.
On success the outputs are moved into place (fsync, then rename) and committed to the store with their edges in
one transaction, then logged as W&B Artifacts (the store first: see `Stage._commit`). On failure nothing is
produced, the run is recorded as failed with the inputs it had declared, and the W&B run is finished with exit
code 1. W&B is reached only through
`wandb.stage_run.StageRun`, which never raises after the run started: what W&B missed (a failed upload, input edge or
alias) is recorded in the store's `wandb_gaps` for `sync`.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from prefect_wandb import records
from prefect_wandb.alias_sync import AliasesMoving, follow_store
from prefect_wandb.artifact_files import is_remote, local_folder, publish, version_url
from prefect_wandb.environment import process_gone, process_identity, run_environment
from prefect_wandb.journal import JournalStore
from prefect_wandb.layout import staging_folder, version_folder
from prefect_wandb.leftovers import claim, remove_abandoned
from prefect_wandb.refs import ArtifactRef, DigestMismatch, fsync_tree, manifest, manifest_digest, verify_files
from prefect_wandb.settings import LineageSettings
from prefect_wandb.store import ArtifactRecord, LineageStore, NewArtifact
from prefect_wandb.wandb.folder import wandb_dir, wandb_folder

if TYPE_CHECKING:
    from prefect_wandb.promotion import GatePolicy
    from prefect_wandb.records import PromotionRecord
    from prefect_wandb.reproduce import Rebuild
    from prefect_wandb.wandb.stage_run import StageRun

log = logging.getLogger(__name__)


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _safe_name(kind: str, value: str) -> str:
    """Artifact names and types become folder names under artifacts_dir: one plain path component only."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(f"artifact {kind} {value!r} is not a plain name ([A-Za-z0-9._-], no '/' or '..'): it "
                         "would not stay inside artifacts_dir")
    return value


def _inside(path: Path, root: Path, what: str) -> Path:
    real = Path(path).resolve()
    if not real.is_relative_to(Path(root).resolve()):
        raise ValueError(f"{what} {str(path)!r} resolves outside {str(root)!r}")
    return real


class Stage:
    def __init__(self, settings: LineageSettings, job_type: str, flow_run_id: str | None, store: LineageStore,
                 wb: StageRun):
        self.settings, self.job_type, self.flow_run_id = settings, job_type, flow_run_id
        self.store, self.wandb, self.run_id = store, wb, wb.run_id
        self.used: list[ArtifactRecord] = []
        self._pending: list[tuple[str, str, Path, dict]] = []
        self._local = settings.local_artifacts()  # the artifacts folder, or an S3 location's cache on this host
        self._staging_root = staging_folder(self._local, self.run_id)
        self.summary: dict = {}
        self.outputs: dict[str, ArtifactRef] = {}  # artifact type -> committed ref, filled on success
        self.committed = False  # the store has the run as finished (W&B may still be told)
        self.config: dict = {}  # the run's config as recorded (set by open_stage)

    @property
    def mode(self) -> str:
        return self.wandb.mode

    # inputs --------------------------------------------------------------------------------------------
    def use(self, ref: ArtifactRef) -> Path:
        """Declare `ref` as an input: it must be recorded, and its files must match their recorded sha256. The
        folder returned is local: for a version stored in S3, this host's verified cache copy."""
        rec = self.record(ref)
        return local_folder(rec.path, rec.files)

    def record(self, ref: ArtifactRef) -> ArtifactRecord:
        """`use`, returning the artifact's lineage record (its metadata, files and version)."""
        rec = self.store.find_artifact(ref.name, ref.digest)
        if rec is None:
            raise DigestMismatch(f"{ref.label} ({ref.digest[:16]}) is not in the lineage store {self.store.path}")
        self.used.append(rec)  # kept on record even when refused below: the failed run names what it refused
        # on record now, not at the end: a kill -9 keeps it, and gc leaves it alone (or it is already gone)
        self.store.record_use(self.run_id, rec.artifact_id)
        folder = local_folder(rec.path, rec.files)  # a version in S3: fetched (and verified) if not cached yet
        try:
            verify_files(folder, rec.files)
        except DigestMismatch:
            if not is_remote(rec.path):
                raise
            shutil.rmtree(folder, ignore_errors=True)  # a cache copy changed since: fetched again from S3
            verify_files(local_folder(rec.path, rec.files), rec.files)
        self.wandb.use_artifact(ref.name, ref.digest)
        return rec

    def promote(self, model: ArtifactRef, *, value: float | None, validation_passed: bool, policy: GatePolicy,
                test_set: ArtifactRef | tuple[str, str] | None = None, registry_path: str | None = None,
                **gate: Any) -> PromotionRecord:
        """The promotion gate for `model` (an input of this stage: declared here if it is not yet), in one store
        transaction (`prefect_wandb.promote`; `test_set`: the dataset `value` was measured on, or its (label,
        digest), so production is compared like for like; `gate`: its other keywords: reevaluated, note, force,
        signature, unreject_hint), then the aliases it gave moved in W&B (and a promoted model linked into
        `registry_path`); offline or on a failed W&B call they wait in the store for `sync`. The metrics artifact
        production's value came from becomes an input of this stage (in the store with the decision, in W&B a
        `use_artifact`): what the promotion was compared against is on the lineage graph."""
        from prefect_wandb.promotion import promote

        rec = self.record(model) if all(u.digest != model.digest for u in self.used) else \
            next(u for u in self.used if u.digest == model.digest)
        decision = promote(self.store, rec.artifact_id, value=value, validation_passed=validation_passed,
                           policy=policy, flow_run_id=self.flow_run_id, run_id=self.run_id,
                           test_set=(test_set.label, test_set.digest) if isinstance(test_set, ArtifactRef) else test_set,
                           **gate)
        source = decision.production_metrics_id
        if source is not None and all(u.artifact_id != source for u in self.used):
            compared = self.store.artifact(source)  # its recorded value was compared, not its files: no re-hash
            self.used.append(compared)
            self.wandb.use_artifact(compared.name, compared.digest)
        promoted = decision.decision == "promoted"
        if self.set_aliases(model, decision.aliases, registry_path if promoted else None):
            self.store.mark_promotion_applied(decision.promotion_id)
        return decision

    def set_aliases(self, ref: ArtifactRef, aliases: list[str], registry_path: str | None = None) -> bool:
        """Move `aliases` onto `ref` in W&B (online), then wherever the store has them now (`follow_store`: a
        racing flow's later decision may have reached W&B first). False when offline or a W&B call failed: the
        store keeps the decision unapplied, and `sync` moves the aliases where the store has them."""
        if not self.wandb.set_aliases(ref.name, ref.digest, aliases, registry_path):
            return False

        def move(rec: ArtifactRecord, some: list[str]) -> bool:
            return self.wandb.move_aliases(rec.name, rec.digest, some,
                                           registry_path if "production" in some else None)
        try:
            return follow_store(self.store, ref.name, aliases, move,
                                moved=self.store.find_artifact(ref.name, ref.digest))
        except AliasesMoving as e:
            log.warning("%s", e)
            return False

    # outputs -------------------------------------------------------------------------------------------
    def staging(self, name: str) -> Path:
        d = self._staging_root / _safe_name("name", name)
        d.mkdir(parents=True, exist_ok=False)
        return d

    def produce(self, name: str, type: str, directory: Path, metadata: dict | None = None) -> None:
        """Queue `directory` (from `staging`) as output `name`; it is moved into place only if the stage succeeds."""
        _safe_name("name", name), _safe_name("type", type)
        _inside(directory, self._staging_root, "output directory")  # only staged files are ever moved
        self._pending.append((name, type, Path(directory), dict(metadata or {})))

    def rebuild(self, rebuild: Rebuild, name: str, type: str, *inputs: ArtifactRef,
                metadata: Mapping[str, Any] | Callable[[Path], Mapping[str, Any]] | None = None) -> Path:
        """Make output `name` of `type` with `rebuild`, the pure function `reproduce` re-runs for this job type
        (see `prefect_wandb.reproduce`), from `inputs` (declared here, their files re-checked) and this run's
        config, so that a reproduction runs this very code; queue it as an output and return its staged folder.
        `metadata`: the output's, or a function of the staged folder that returns it."""
        from prefect_wandb.reproduce import Replay

        given = metadata if isinstance(metadata, Mapping) else {}
        replay = Replay(self.job_type, dict(self.config), {r.type: self.use(r) for r in inputs}, dict(given), {},
                        {}, None)
        out = self.staging(name)
        notes = rebuild(replay, out) or []
        if notes:
            self.summary.setdefault("notes", []).extend(notes)
        meta = metadata(out) if callable(metadata) else given
        self.produce(name, type, out, dict(meta))
        return out

    # logging -------------------------------------------------------------------------------------------
    def log(self, data: dict, step: int | None = None) -> None:
        self.wandb.log(data, step=step)

    def watch(self, model, criterion=None, log_freq: int = 10) -> None:
        """wandb.watch(log="all") on this stage's run (see `StageRun.watch`)."""
        self.wandb.watch(model, criterion, log_freq=log_freq)

    def log_confusion_matrix(self, key: str, y_true: Sequence[int], preds: Sequence[int],
                             class_names: Sequence[str]) -> None:
        self.wandb.log_confusion_matrix(key, y_true, preds, class_names)

    def log_images(self, key: str, images: Sequence, captions: Sequence[str]) -> None:
        self.wandb.log_images(key, images, captions)

    # lifecycle -----------------------------------------------------------------------------------------
    def _inputs_metadata(self) -> list[dict]:
        return [{"name": r.name, "type": r.type, "version": r.version, "digest": r.digest,
                 "files": {f.relpath: f.sha256 for f in r.files}} for r in self.used]

    def _finalize(self) -> list[NewArtifact]:
        """Each staged output moved into its version folder (locally: the artifacts folder, or the S3 location's
        cache) and, for an S3 location, uploaded and read back by sha256 (`artifact_files.publish`): a failure
        raises before the store hears of any output, so nothing is committed."""
        out = []
        remote = self.settings.remote_artifacts()
        for name, type, staged, meta in self._pending:
            files = manifest(staged)
            if not files:
                raise ValueError(f"output {name!r} has no files")
            digest = manifest_digest(files)
            final = version_folder(self._local, type, name, digest)
            _inside(final, self._local, "artifact folder")
            fsync_tree(staged)
            if final.exists():  # identical content already stored: keep that copy, if it is still intact
                try:
                    verify_files(final, files)
                except DigestMismatch as e:  # corrupted since: replace it with this new, verified copy
                    aside = final.with_name(f"{final.name}.corrupt-{uuid.uuid4().hex[:8]}")
                    os.replace(final, aside)
                    os.replace(staged, final)
                    event = {"artifact": name, "path": str(final), "problem": str(e), "moved_aside_to": str(aside)}
                    log.warning("%s: stored copy at %s no longer matched its record (%s); moved aside to %s and "
                                "replaced by this run's verified copy", name, final, e, aside.name)
                    self.summary.setdefault("repaired", []).append(event)  # on the run's record
            else:
                final.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.replace(staged, final)  # never onto a non-empty folder: nothing stored is overwritten
                except OSError:
                    if not final.is_dir():
                        raise
                    verify_files(final, files)  # a concurrent run stored the same content a moment ago
            path = str(final)
            if remote is not None:  # the store records the host-independent URL, once S3 holds the very bytes
                path = version_url(remote, type, name, digest)
                publish(final, path, files)
            meta = {**meta, "inputs": self._inputs_metadata(), "files": {f.relpath: f.sha256 for f in files},
                    "producer": {"job_type": self.job_type, "run_id": self.run_id, "flow_run_id": self.flow_run_id}}
            out.append(NewArtifact(name=name, type=type, digest=digest, path=path, metadata=meta, files=files))
        return out

    def _commit(self) -> None:
        """The store first, W&B second: the record of truth never waits on the observer, and W&B never holds a
        version the store does not. Until W&B confirms an output, a pending gap for it stands in the store
        (recorded just before the commit), so a process killed in between leaves it to `sync`; the gaps of a
        run that never committed are not planned (`sync` sends only what the store holds)."""
        arts = self._finalize()
        pending = self.wandb.pending_gaps(arts)
        if pending:  # before the commit: a process killed after it leaves them; one killed before, a failed run
            self.store.record_wandb_gaps(self.run_id, pending)
        records = self.store.finish_run(self.run_id, used=[r.artifact_id for r in self.used], produced=arts,
                                        summary=self.summary, wandb_url=self.wandb.url, wandb_mode=self.mode)
        self.committed = True
        for r in records:
            self.outputs[r.type] = r.ref()
        self.wandb.log_artifacts(arts, self.summary)


def describe_failure(e: BaseException) -> str:
    """The error recorded for a failed run; a signal (Prefect's TerminationSignal, the CLI's Terminated, Ctrl-C)
    is named as such: 'terminated by SIGTERM'."""
    sig = getattr(e, "signal", None)
    if isinstance(sig, int) and isinstance(e, BaseException) and not isinstance(e, Exception):
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        text = str(e) if str(e).startswith("terminated by") else f"terminated by {name}"
        return f"{type(e).__name__}: {text}"
    if isinstance(e, KeyboardInterrupt):
        return "KeyboardInterrupt: terminated by SIGINT (Ctrl-C)"
    return f"{type(e).__name__}: {e}"


def _current_flow_run_id() -> str | None:
    """The Prefect flow run this code runs in, if any."""
    from prefect.runtime import flow_run

    rid = flow_run.get_id()
    return str(rid) if rid else None


def _plain(config: Mapping[str, Any] | Any) -> dict:
    """A run's config as JSON-ready data: a pydantic model is dumped, a mapping copied."""
    dump = getattr(config, "model_dump", None)
    return dump(mode="json") if callable(dump) else dict(config or {})


@contextmanager
def open_stage(settings: LineageSettings, job_type: str, *, config: Mapping[str, Any] | Any = None,
               wandb_config: Mapping[str, Any] | None = None, seed: int | None = None,
               flow_run_id: str | None = None, store: LineageStore | JournalStore | None = None) -> Iterator[Stage]:
    """One stage: a W&B run of `job_type` and its lineage record, committed only on success.

    `config`: the run's configuration (a mapping or a pydantic model), recorded in the store; `wandb_config`: the
    W&B run's config (default the same); `seed`: recorded with the environment; `flow_run_id`: default the Prefect
    flow run this runs in; `store`: where the record goes, by default the store of `settings` (a sweep trial on a
    Dask worker passes a `journal.JournalStore`, whose records the flow's process commits)."""
    settings = settings.resolved()
    settings.check_artifacts()  # S3: no bucket, no endpoint: one line before any work starts
    record = _plain(config)
    flow_run_id = flow_run_id if flow_run_id is not None else _current_flow_run_id()
    store = LineageStore(settings.store) if store is None else store
    dead = store.fail_dead_runs(process_gone)  # runs of killed processes: failed
    for run in dead:
        log.warning("run %s was left 'running' by a process that died; recorded as failed", run)
    # what ended processes left (their staging folders; offline W&B runs the store never heard of): removed by
    # the store's writer, which knows the runs (not by a sweep trial on a worker: its JournalStore cannot say)
    if isinstance(store, LineageStore):
        remove_abandoned(settings.local_artifacts(), store, wandb_folder(settings), dead_runs=dead)
    run_id = uuid.uuid4().hex[:12]
    group = f"flow-{flow_run_id}" if flow_run_id else None
    env = run_environment(flow_run_id, code_root=settings.code_root, packages=settings.packages, seed=seed)
    wb_config = {**(dict(wandb_config) if wandb_config is not None else record), "lineage": env}
    # wandb: imported by the first stage, not by loading the flow
    from prefect_wandb.wandb.credentials import resolve_mode
    from prefect_wandb.wandb.stage_run import start_run
    from prefect_wandb.wandb.temp import temp_folders

    wb = start_run(settings, job_type, run_id, group, resolve_mode(settings.wandb.mode, wandb_dir(settings)),
                   wb_config)
    store.start_run(wb.run_id, job_type, config=record,
                    env={**env, "process": process_identity()}, flow_run_id=flow_run_id, run_group=group,
                    wandb_mode=wb.mode, wandb_dir=wb.run_dir, wandb_project=settings.wandb.project,
                    wandb_entity=settings.wandb.entity)
    # its lease (and the flow run's holds) renewed while it runs: another host takes it for dead only once it stops
    beat = _heartbeat(store, wb.run_id, flow_run_id) if isinstance(store, LineageStore) else None
    # A JournalStore answers every call a stage makes of its store (find_artifact, start/finish/fail_run).
    stage = Stage(settings, job_type, flow_run_id, cast(LineageStore, store), wb)
    stage.config = record
    try:
        # first: a process that dies from here on leaves a folder that says whose it was
        claim(stage._staging_root, wb.run_id, wb.run_dir if wb.mode == "offline" else None, temp_folders())
        yield stage
        stage._commit()
    except BaseException as e:
        if not stage.committed:  # interrupted while telling W&B: the store's record stands, finished
            store.fail_run(wb.run_id, used=[r.artifact_id for r in stage.used], error=describe_failure(e))
        wb.finish(failed=True)
        _record_gaps(store, wb, stage.committed)
        raise
    else:
        wb.finish()
        _record_gaps(store, wb, True)
    finally:
        if beat is not None:
            beat.set()
        shutil.rmtree(stage._staging_root, ignore_errors=True)


def _heartbeat(store: LineageStore, run_id: str, flow_run_id: str | None) -> threading.Event:
    """Renew the run's lease and its flow run's holds every quarter of `LEASE_S` until the event returned is set
    (a daemon thread: it dies with the process, and so the lease runs out). A failed renewal is logged and tried
    again at the next beat; the stage itself fails on the store if the store is gone."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(records.LEASE_S / 4):  # read at each beat, as `records.lease_until` reads it
            try:
                store.renew_lease(run_id, flow_run_id)
            except Exception as e:
                log.warning("run %s: its lease in the lineage store was not renewed (%s); trying again", run_id, e)

    threading.Thread(target=beat, name=f"lease-{run_id}", daemon=True).start()
    return stop


def _record_gaps(store: LineageStore | JournalStore, wb: StageRun, committed: bool) -> None:
    """W&B is an observer: what it missed is recorded for `sync`, never raised. A committed run's
    pending gaps give way to what W&B answered."""
    if committed:
        store.record_wandb_gaps(wb.run_id, wb.gaps, confirmed=wb.confirmed)
    elif wb.gaps:
        store.record_wandb_gaps(wb.run_id, wb.gaps)


def record_lost_run(store: LineageStore, settings: LineageSettings, job_type: str, flow_run_id: str, *,
                    used: list[int], error: str, config: Mapping[str, Any] | Any = None, seed: int | None = None,
                    env: dict | None = None) -> str:
    """A failed run in the store for a stage that never came back (its worker kept dying), so the lineage shows
    that it was tried; no W&B run (`wandb_mode` 'none')."""
    run_id = uuid.uuid4().hex[:12]
    store.start_run(run_id, job_type, config=_plain(config),
                    env={**run_environment(flow_run_id, code_root=settings.code_root, packages=settings.packages,
                                           seed=seed), "process": process_identity(), **(env or {})},
                    flow_run_id=flow_run_id, run_group=f"flow-{flow_run_id}", wandb_mode="none", wandb_dir=None,
                    wandb_project=settings.wandb.project, wandb_entity=settings.wandb.entity)
    store.fail_run(run_id, used=used, error=error)
    return run_id
