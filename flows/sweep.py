"""The sweep flow, which only orchestrates:

prepare-data (once) -> one `trial` task per configuration on Dask (train + evaluate, each its own lineage stage;
a trial already in the store is reused) -> select (consumes every finished trial's metrics, records the
sweep-result) -> the winner alone: export-onnx (which also consumes the sweep-result, so an audit of the ONNX file
walks through select) -> validate-onnx -> (sign) -> promote -> report, and the closing lines `run` prints (the
report, the ONNX file to audit, where the W&B records went).

Dask workers write artifact files into the shared artifacts folder; only this flow's process writes the lineage
store (a trial hands back a journal of its runs, committed here). At start, every worker must see the artifacts
and W&B folders at the same paths as this process, or the flow fails with one line before any work.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.states import Completed, State
from prefect_dask import DaskTaskRunner

from mnist_pipeline.checkpoint_files import checkpoint_path
from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.flows.dataset import ensure_dataset, release_holds
from mnist_pipeline.flows.flow_artifact import outcome_message, publish_production_artifact, wandb_records
from mnist_pipeline.lookups import finished_trial, train_seconds
from mnist_pipeline.onnx_io import ParityError
from mnist_pipeline.results import (
    ArtifactLocation,
    MetricsResult,
    PromotionOutcome,
    SweepResult,
    SweepSummary,
    ValidationResult,
)
from mnist_pipeline.sweep import Sweep, SweepError, expand, usable_cores
from mnist_pipeline.sweep_workers import check_workers, checkpoint_writer, core_shares, trial_threads
from mnist_pipeline.tasks import export_onnx, promote, run_report, validate_onnx
from mnist_pipeline.tasks.report import REPORT_FILE
from mnist_pipeline.tasks.sign import check_key, sign
from mnist_pipeline.tasks.sweep import SweepTrial, TrialOutcome, run_trial, select
from mnist_pipeline.tasks.train import MODEL_NAME
from mnist_pipeline.tasks.validate_onnx import parity_failure
from prefect_wandb import LineageStore, commit_journal, local_folder, record_lost_run

FLOW_NAME = "mnist-sweep"
DEFAULT_CONFIG = PipelineConfig.model_validate({})


def task_runner(address: str | None = None, workers: int | None = None) -> DaskTaskRunner:
    """An existing cluster at `address`, or a local one: `workers` processes (default one per core), each running
    one trial at a time (torch's thread count and wandb.watch's global run are per process); every trial trains
    with the same torch thread count, the smallest share of the cores (see `trial_threads`)."""
    if address:
        return DaskTaskRunner(address=address, client_kwargs={"timeout": 30})
    n = workers or usable_cores()
    return DaskTaskRunner(cluster_kwargs={"n_workers": n, "threads_per_worker": 1, "processes": True,
                                          "host": "127.0.0.1", "dashboard_address": None})


def pin_for_workers(cfg: PipelineConfig) -> PipelineConfig:
    """Decide here what a worker would otherwise decide from its own environment: the W&B folder (WANDB_DIR of
    this process, else beside the store) and the W&B mode (auto: this process's API key)."""
    return cfg.model_copy(update={"wandb": cfg.lineage().for_workers().wandb})


def _values(metadata: dict) -> dict:
    return MetricsResult.from_metadata(metadata).values()


def _flow_run_id() -> str:
    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        raise RuntimeError("the sweep's helpers run inside its flow run")
    return str(ctx.flow_run.id)


def _dask_client():
    ctx = FlowRunContext.get()
    runner = ctx.task_runner if ctx is not None else None
    if not isinstance(runner, DaskTaskRunner):
        raise RuntimeError(f"the sweep flow runs its trials on a DaskTaskRunner, not {type(runner).__name__}: "
                           "call it as mnist_sweep.with_options(task_runner=task_runner(...))")
    return runner.client


@flow(name=FLOW_NAME, description="Hyperparameter sweep of the MNIST ConvNet on Dask: every trial trains and "
      "evaluates with its own lineage; the best by the sweep's metric is exported to ONNX, validated and promoted.",
      on_completion=[release_holds], on_failure=[release_holds], on_crashed=[release_holds],
      on_cancellation=[release_holds])
def mnist_sweep(config: PipelineConfig = DEFAULT_CONFIG, sweep: Sweep | None = None,
                min_workers: int = 1) -> SweepSummary | State:
    """`sweep`: a checked sweep (`mnist_pipeline.sweep.load_sweep` or `parse_sweep` of a W&B-style mapping)."""
    logger = get_run_logger()
    if sweep is None:
        raise SweepError("no sweep given: pass one (mnist_pipeline.sweep.load_sweep or parse_sweep)")
    spec = sweep
    asked = config.resolved()  # what the caller asked for (W&B's mode as given: 'auto' stays 'auto')
    cfg = pin_for_workers(asked)
    trials = expand(spec, cfg)  # every trial's config validated before any work
    sign_key = check_key(cfg)  # the winner is signed with it; an unusable key fails here, before any trial
    flow_run_id = _flow_run_id()
    client = _dask_client()
    assert cfg.wandb.dir is not None  # pinned above
    # an S3 artifacts location is shared through S3: each worker stages in its own cache, only W&B's folder is shared
    shared = [cfg.wandb.dir] if isinstance(cfg.artifacts_dir, str) else [cfg.artifacts_dir, cfg.wandb.dir]
    workers = check_workers(client, shared, min_workers)
    threads = trial_threads(core_shares(workers, client.nthreads()), cfg.train.threads)
    logger.info("sweep %s: %d %s trial(s) on %d Dask worker(s) at %s (torch threads per trial: %d)", spec.name or "",
                len(trials), spec.method, len(workers), client.scheduler.address, threads)

    dataset = ensure_dataset(cfg, logger)
    store = LineageStore(cfg.lineage_db)
    ds = store.require_artifact(dataset.name, dataset.digest)

    results: dict[int, SweepTrial] = {}
    futures = {}
    for t in trials:
        found = finished_trial(store, MODEL_NAME, ds.digest, t.config.training_fingerprint())
        if found:
            model, metrics = found
            results[t.index] = SweepTrial(t.index, t.params, "reused", model.ref(), metrics.ref(),
                                          _values(metrics.metadata), train_seconds=train_seconds(store, model))
            logger.info("trial %d reuses %s (%s): same dataset and training fingerprint", t.index,
                        model.label, metrics.label)
        else:
            tcfg = t.config.model_copy(update={"train": t.config.train.model_copy(update={"threads": threads})})
            writer = checkpoint_writer(checkpoint_path(tcfg, ds.ref()))  # resumable only when the store knows it
            futures[t.index] = run_trial.submit(pin_for_workers(tcfg), ds, t.index, t.params,
                                                writer if writer and store.run(writer) else None)

    by_index = {t.index: t for t in trials}
    for index, future in futures.items():  # committed one by one: a flow that dies later keeps what finished
        future.wait()
        outcome = future.state.result(raise_on_failure=False)
        t = by_index[index]
        if not isinstance(outcome, TrialOutcome):  # never came back: lost workers (KilledWorker), a crash
            error = f"{type(outcome).__name__}: {outcome}" if isinstance(outcome, BaseException) else str(outcome)
            record_lost_run(store, t.config.lineage(), "train", flow_run_id, used=[ds.artifact_id], error=error,
                            config=t.config, seed=t.config.train.seed, env={"sweep_trial": index})
            results[index] = SweepTrial(index, t.params, "failed", error=error)
            logger.error("trial %d failed: %s", index, error)
            continue
        committed = commit_journal(store, outcome.journal)
        if outcome.status != "finished":
            results[index] = SweepTrial(index, t.params, "failed", error=outcome.error, worker=outcome.worker,
                                        seconds=outcome.seconds)
            continue
        assert outcome.model is not None and outcome.metrics is not None  # a finished trial names both
        model, metrics = committed[outcome.model], committed[outcome.metrics]
        results[index] = SweepTrial(index, t.params, "finished", model.ref(), metrics.ref(),
                                    _values(metrics.metadata), worker=outcome.worker, seconds=outcome.seconds,
                                    train_seconds=train_seconds(store, model), started=outcome.started,
                                    ended=outcome.ended)

    ordered = [results[t.index] for t in trials]
    sweep_ref = select(cfg, spec, ordered)
    result = store.find_artifact(sweep_ref.name, sweep_ref.digest)
    assert result is not None  # select committed it
    chosen = SweepResult.from_metadata(result.metadata).winner_trial
    failed = [r.index for r in ordered if r.status == "failed"]
    trial_rows = [{"trial": r.index, "params": r.params, "status": r.status, **(r.values or {}),
                   "model": r.model.label if r.model else None, "worker": r.worker,
                   "seconds": round(r.seconds, 3), "train_seconds": r.train_seconds, "started": r.started,
                   "ended": r.ended, "error": r.error}
                  for r in ordered]
    if chosen is None:
        raise RuntimeError(f"no trial of the sweep finished ({len(failed)} failed): nothing to select; "
                           f"first error: {ordered[0].error}")
    best = results[chosen]
    assert best.model is not None and best.metrics is not None  # the winner finished
    wcfg = pin_for_workers(by_index[best.index].config)
    onnx_model = export_onnx(wcfg, best.model, selected_by=sweep_ref)
    validation = validate_onnx(wcfg, onnx_model, best.model, dataset, best.metrics)
    v = ValidationResult.from_metadata(store.require_artifact(validation.name, validation.digest).metadata)
    attestation = sign(wcfg, sign_key, onnx_model, best.model, dataset, validation) if sign_key and v.passed \
        else None
    decision = promote(wcfg, best.model, best.metrics, validation, attestation)
    report = run_report(wcfg, dataset, best.metrics, validation, decision)  # the winner's, as `run` makes one
    publish_production_artifact(wcfg, decision, logger)  # the production-model artifact's next version
    onnx_file = str(local_folder(onnx_model.path) / "model.onnx")  # the file to deploy and audit, under run's key
    winner = {"trial": best.index, "params": best.params, **(best.values or {}),
              "model": best.model.label, "metrics": best.metrics.label, "onnx": onnx_model.label,
              "onnx_path": onnx_model.path, "onnx_file": onnx_file, "validation": validation.label,
              "onnx_max_abs_diff": v.max_abs_diff, "onnx_argmax_agreement": v.argmax_agreement}
    if attestation is not None:
        winner["attestation"] = attestation.label
        winner["attestation_path"] = attestation.path
    failure = parity_failure(wcfg, v, validation.label)
    if failure:
        raise ParityError(failure)
    summary = SweepSummary(status="completed_with_failures" if failed else "completed", sweep=spec.to_dict(),
                           flow_run_id=flow_run_id, workers=len(workers), sweep_result=ArtifactLocation.of(sweep_ref),
                           trials=trial_rows, failed=failed, lineage_db=str(cfg.lineage_db), winner=winner,
                           promotion=PromotionOutcome.of(decision), report=str(local_folder(report.path) / REPORT_FILE),
                           onnx_file=onnx_file, wandb=wandb_records(asked, logger))
    logger.info("sweep done: winner trial %d %s (%s), %s; %d trial(s) failed", best.index, best.params,
                best.model.label, decision.decision, len(failed))
    # the runs list shows the outcome, as for a pipeline run: a plain Completed state saying it
    trials_failed = f"; {len(failed)} of {len(trials)} trial(s) failed" if failed else ""
    return Completed(message=f"winner trial {best.index}: {outcome_message(best.model.label, decision)}"
                             f"{trials_failed}", data=summary)
