"""The sweep's own stages: a trial (train + evaluate, on a Dask worker) and the select step (in the flow's process).

A trial runs its two stages against a `JournalStore`: the worker writes artifact files into the shared artifacts
folder, never the lineage store, and hands the flow a journal of its runs that the flow's process commits (the
store's only writer, see `mnist_pipeline/journal.py`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.states import Failed

from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.results import SweepResult
from mnist_pipeline.sweep import Sweep, TrialResult, rank
from mnist_pipeline.tasks._common import pipeline_stage
from mnist_pipeline.tasks.evaluate import evaluate
from mnist_pipeline.tasks.train import train
from prefect_wandb import ArtifactRecord, ArtifactRef, JournalEntry, JournalStore, write_json

SWEEP_RESULT_NAME = "convnet-sweep"


@dataclass(frozen=True)
class TrialOutcome:
    """What a trial hands back from its worker: small records, never files."""
    index: int
    status: str  # finished | failed
    journal: list[JournalEntry]
    model: tuple[str, str] | None = None  # (name, digest)
    metrics: tuple[str, str] | None = None
    error: str | None = None
    worker: str | None = None
    threads: int | None = None
    seconds: float = 0.0
    started: float = 0.0  # wall-clock (epoch seconds) on the worker: when the trial began and ended
    ended: float = 0.0


@dataclass(frozen=True)
class SweepTrial:
    """One trial as the flow knows it after committing: finished, reused from an earlier sweep, or failed."""
    index: int
    params: dict
    status: str  # finished | reused | failed
    model: ArtifactRef | None = None
    metrics: ArtifactRef | None = None
    values: dict | None = None  # test_accuracy, test_loss from the metrics artifact
    error: str | None = None
    worker: str | None = None
    seconds: float = 0.0
    train_seconds: float | None = None
    started: float | None = None
    ended: float | None = None

    def result(self) -> TrialResult:
        return TrialResult(self.index, self.params, self.status, self.values, self.error)


def _worker() -> str | None:
    """This Dask worker's name; None outside a worker."""
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except (ImportError, ValueError):
        return None


def _unknown_checkpoint(cfg: PipelineConfig, dataset: ArtifactRecord, resume_from: str | None, logger) -> None:
    """Discard this trial's checkpoint unless it was written by `resume_from`, the run the flow found in the
    lineage store: one written by a run the store does not know (a worker lost mid-trial, whose journal never
    came back) has no record to vouch for how it was made, and resuming it would make a model that `reproduce`
    cannot make again."""
    from mnist_pipeline.checkpoint_files import checkpoint_path, discard_checkpoint, sidecar
    from mnist_pipeline.sweep_workers import checkpoint_writer

    ckpt = checkpoint_path(cfg, dataset.ref())
    if not (ckpt.is_file() or sidecar(ckpt).is_file()):  # nothing to resume (or no file: train says so)
        return
    writer = checkpoint_writer(ckpt)
    if writer is None or writer != resume_from:
        logger.warning("checkpoint %s was written by run %s, which the lineage store does not know (a trial "
                       "attempt lost with its worker): discarded, training starts over", ckpt.name, writer)
        discard_checkpoint(ckpt)


@task(name="trial", task_run_name="trial-{index:03d}", retries=1, retry_delay_seconds=1)
def run_trial(cfg: PipelineConfig, dataset: ArtifactRecord, index: int, params: dict,
              resume_from: str | None = None):
    """Train and evaluate one configuration on this worker, with the trial's own settings (its torch threads
    included: decided by the flow for every trial, never by the worker). `resume_from`: the recorded run whose
    checkpoint of this trial may be resumed; any other checkpoint is discarded."""
    logger = get_run_logger()
    start, started = time.monotonic(), time.time()
    worker, threads = _worker(), cfg.train.threads
    store = JournalStore(str(cfg.lineage_db), known=[dataset])
    logger.info("trial %d on %s (%s threads): %s", index, worker or "this process", threads or "all", params)
    try:
        _unknown_checkpoint(cfg, dataset, resume_from, logger)
        model = train.fn(cfg, dataset.ref(), store=store)
        metrics = evaluate.fn(cfg, model, dataset.ref(), store=store)
    except Exception as e:
        error = f"{type(e).__name__}: {' '.join(str(e).split())}"[:2000]
        logger.error("trial %d failed: %s", index, error)
        outcome = TrialOutcome(index, "failed", store.entries, error=error, worker=worker, threads=threads,
                               seconds=time.monotonic() - start, started=started, ended=time.time())
        return Failed(message=f"trial {index} failed: {error}", data=outcome)
    return TrialOutcome(index, "finished", store.entries, model=(model.name, model.digest),
                        metrics=(metrics.name, metrics.digest), worker=worker, threads=threads,
                        seconds=time.monotonic() - start, started=started, ended=time.time())


@task(name="select")
def select(cfg: PipelineConfig, sweep: Sweep, trials: list[SweepTrial]) -> ArtifactRef:
    """Consume every finished trial's metrics, rank them by the sweep's metric, record the table and the winner."""
    logger = get_run_logger()
    metric = sweep.metric
    ranked = rank([t.result() for t in trials], metric)
    place = {r.index: i + 1 for i, r in enumerate(ranked)}
    by_index = {t.index: t for t in trials}
    with pipeline_stage(cfg, "select") as stage:
        for t in trials:
            if t.metrics is not None:
                stage.use(t.metrics)
        rows = [{"trial": t.index, "rank": place.get(t.index), "status": t.status, **t.params,
                 metric.name: (t.values or {}).get(metric.name),
                 "test_accuracy": (t.values or {}).get("test_accuracy"),
                 "test_loss": (t.values or {}).get("test_loss"),
                 "model": f"{t.model.label} ({t.model.digest[:16]})" if t.model else None,
                 "metrics": f"{t.metrics.label} ({t.metrics.digest[:16]})" if t.metrics else None,
                 "error": t.error} for t in trials]
        best = by_index[ranked[0].index] if ranked else None
        winner = None
        if best is not None and best.model and best.metrics and best.values:  # ranked: it has all three
            winner = {
                "trial": best.index, "params": best.params, metric.name: best.values[metric.name],
                "model": {"name": best.model.name, "version": best.model.version, "digest": best.model.digest},
                "metrics": {"name": best.metrics.name, "version": best.metrics.version,
                            "digest": best.metrics.digest}}
        failed = [t.index for t in trials if t.status == "failed"]
        result = SweepResult(sweep=sweep.to_dict(), metric={"name": metric.name, "goal": metric.goal}, trials=rows,
                             winner=winner, failed=failed).to_metadata()
        out = stage.staging(SWEEP_RESULT_NAME)
        write_json(out / "sweep.json", result)
        stage.summary = {"trials": len(trials), "finished": len(ranked), "failed": len(failed),
                         "winner_trial": winner["trial"] if winner else None,
                         f"winner_{metric.name}": winner[metric.name] if winner else None}
        stage.produce(SWEEP_RESULT_NAME, "sweep-result", out, result)
    ref = stage.outputs["sweep-result"]
    create_table_artifact(
        key="sweep-results", table=rows,
        description=f"Sweep {sweep.name or ''} ({sweep.method}, {len(trials)} trials) ranked by "
                    f"{metric.name} ({metric.goal}); winner: "
                    + (f"trial {best.index} {best.params}" if best else "none (no trial finished)"))
    logger.info("sweep result %s: %d finished, %d failed, winner %s", ref.label, len(ranked), len(failed),
                f"trial {best.index}" if best else "none")
    return ref
