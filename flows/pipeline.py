"""The flow, which only orchestrates:

prepare-data -> check-for-changes -> (skip, or) train -> (evaluate | export-onnx) -> validate-onnx ->
(sign, when a signing key is given) -> promote -> report,
then a Prefect artifact on the flow run that lists what was produced and why.
"""

from __future__ import annotations

import logging

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging.handlers import APILogHandler
from prefect.states import Completed, Failed, State

from mnist_pipeline import changes
from mnist_pipeline.collector import fewer_collections
from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.flows.dataset import ensure_dataset, release_holds
from mnist_pipeline.flows.flow_artifact import (
    outcome_message,
    publish_flow_artifact,
    publish_production_artifact,
    wandb_records,
)
from mnist_pipeline.flows.preflight import effective_config
from mnist_pipeline.lookups import finished_model, recorded
from mnist_pipeline.report.page import resumed_from_words
from mnist_pipeline.results import (
    ArtifactLocation,
    MetricsResult,
    PromotionOutcome,
    RunSummary,
    TrainingResult,
    ValidationResult,
)
from mnist_pipeline.tasks import (
    check_for_changes,
    evaluate,
    export_onnx,
    promote,
    run_report,
    train,
    validate_onnx,
)
from mnist_pipeline.tasks._common import current_flow_run_id
from mnist_pipeline.tasks.report import REPORT_FILE
from mnist_pipeline.tasks.sign import check_key, sign
from mnist_pipeline.tasks.train import MODEL_NAME
from mnist_pipeline.tasks.validate_onnx import parity_failure
from prefect_wandb import LineageStore, local_folder

FLOW_NAME = "mnist-lineage-pipeline"
DEFAULT_CONFIG = PipelineConfig()  # frozen: safe to share as the default (the UI form shows its values)


class _InRunsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def _library_warnings_to_prefect() -> None:
    """Warnings of the pipeline's own code (W&B fell back offline, a dead run was recorded as failed) reach the
    flow run's logs in the Prefect UI too, not only the stderr of whatever process ran it."""
    for name in ("mnist_pipeline", "prefect_wandb"):
        lib = logging.getLogger(name)
        if not any(isinstance(h, APILogHandler) for h in lib.handlers):
            handler = APILogHandler(level=logging.WARNING)
            handler.addFilter(_InRunsOnly())
            lib.addHandler(handler)


_library_warnings_to_prefect()


@flow(name=FLOW_NAME, description="Train the W&B tutorial ConvNet on MNIST, evaluate it, export and validate "
      "ONNX, record the lineage of every artifact in W&B and the local lineage store, and promote the model to "
      "'production' when it validates and beats the current one. Skips training when neither the data nor the "
      "training config changed since the production model (unless force is set).",
      on_completion=[release_holds], on_failure=[release_holds], on_crashed=[release_holds],
      on_cancellation=[release_holds])
def mnist_lineage_pipeline(config: PipelineConfig = DEFAULT_CONFIG) -> RunSummary | State:
    """Every run ends in a state whose message says its outcome, as the Prefect UI's runs list shows it: a plain
    Completed state (Prefect's run filters go by state name: a custom name such as "Skipped" hides the run under
    "Completed" and under a deployment's default Runs filter) saying "promoted: ...", "kept as candidate: ..." or
    "training skipped: ...", or a Failed one saying "failed at <stage>: ..." (Prefect's own message names only the
    exception)."""
    fewer_collections()  # a flow run's process, wherever it runs (the CLI, a worker, `serve`)
    logger = get_run_logger()
    at = _Progress()
    try:
        return _pipeline(config, logger, at)
    except Exception as e:
        # what Prefect's engine logs when a flow raises (traceback in the flow run's logs), then the state
        logger.error("Encountered exception during execution at %s: %r", at.stage, e, exc_info=True)
        if at.decided and at.cfg:  # the gate decided before the failure: production-model says so all the same
            publish_production_artifact(at.cfg, at.decided, logger)
        return Failed(message=f"failed at {at.stage}: {type(e).__name__}: {e}", data=e)


class _Progress:
    """Where a flow run is, for the message of the state it fails in; the gate's decision once made."""

    def __init__(self) -> None:
        self.stage = "preflight (config, folders, signing key)"
        self.cfg: PipelineConfig | None = None
        self.decided = None


def _resume_note(cfg: PipelineConfig) -> str:
    """"; training resumed from the checkpoint written by run X (flow run F) at epoch N, batch B" when this flow
    run's training picked up an earlier run's checkpoint (a cancelled or killed run), else ""."""
    store = LineageStore(cfg.lineage_db)
    flow_run_id = current_flow_run_id()
    train_runs = [r for r in store.runs(flow_run_id) if r.job_type == "train" and r.status == "finished"] \
        if flow_run_id else []
    t = TrainingResult.from_metadata(train_runs[-1].summary) if train_runs else None
    if t is None or not t.resumed_from_checkpoint:
        return ""
    return "; " + resumed_from_words(t, store.run(t.checkpoint_written_by) if t.checkpoint_written_by else None)


def _pipeline(config: PipelineConfig, logger, at: _Progress) -> State:
    # deployment defaults merged under a partial payload, confinement to the deployment's folders, writable
    # folders: all checked before any task (flows/preflight.py)
    cfg, config_sources = effective_config(config, logger)
    at.cfg = cfg
    sign_key = check_key(cfg)  # an unreadable key fails here, before any work
    at.stage = "prepare-data"
    dataset = ensure_dataset(cfg, logger)

    at.stage = "check-for-changes"
    check = check_for_changes(cfg, dataset)
    if check.action == "skip" and not cfg.force:
        skipped = changes.skipped(cfg, check, dataset, config_sources, wandb_records(cfg, logger))
        at.stage = "publishing the run's artifact"
        publish_flow_artifact(cfg, skipped)
        logger.info(skipped.reason)
        return Completed(message=skipped.reason, data=skipped)

    # a finished model of these very inputs that the gate never saw is not made again: it goes on from here
    reuse = check.action == "reuse" and not cfg.force
    at.stage = "train"
    model = finished_model(cfg, MODEL_NAME, str(check.model_digest)) if reuse else train(cfg, dataset)
    # Evaluation and export only share the model: side by side. The ONNX check then compares onnxruntime with the
    # logits the evaluation recorded (no second torch pass over the test split) and runs alone, so its latency
    # and throughput are timed on a quiet machine.
    at.stage = "evaluate"
    metrics_future = evaluate.submit(cfg, model, dataset)
    at.stage = "export-onnx"
    onnx_model = export_onnx(cfg, model)
    at.stage = "evaluate"
    metrics = metrics_future.result()
    at.stage = "validate-onnx"
    validation = validate_onnx(cfg, onnx_model, model, dataset, metrics)
    v = recorded(cfg, validation, ValidationResult)
    at.stage = "sign"
    attestation = sign(cfg, sign_key, onnx_model, model, dataset, validation) if sign_key and v.passed else None
    at.stage = "promote"
    decision = promote(cfg, model, metrics, validation, attestation)
    at.decided = decision
    at.stage = "report"
    report = run_report(cfg, dataset, metrics, validation, decision)  # shows the decision

    at.stage = "publishing the run's artifacts"
    m = recorded(cfg, metrics, MetricsResult)
    outputs = (dataset, model, metrics, onnx_model, validation, report) + ((attestation,) if attestation else ())
    failure = parity_failure(cfg, v, validation.label)
    summary = RunSummary(
        status="failed" if failure else "completed",
        reason=(f"not retrained: {check.reason}" if reuse else
                f"retrained: {check.reason}" + (" (forced)" if not check.changed else "")) + _resume_note(cfg),
        artifacts={r.type: ArtifactLocation.of(r) for r in outputs},
        test_accuracy=m.test_accuracy, test_loss=m.test_loss, onnx_accuracy=v.ort_accuracy,
        onnx_max_abs_diff=v.max_abs_diff, onnx_argmax_agreement=v.argmax_agreement,
        onnx_latency_ms_p50=v.latency_ms_p50, onnx_throughput_per_s=v.ort_throughput_per_s,
        promotion=PromotionOutcome.of(decision), lineage_db=str(cfg.lineage_db), config_sources=config_sources,
        report=str(local_folder(report.path) / REPORT_FILE), onnx_file=str(local_folder(onnx_model.path) / "model.onnx"),
        signed_onnx_file=str(local_folder(attestation.path) / "model.onnx") if attestation else None,
        wandb=wandb_records(cfg, logger))  # where the records went, in one line
    publish_flow_artifact(cfg, summary)
    at.decided = None
    publish_production_artifact(cfg, decision, logger)
    if failure:
        from mnist_pipeline.onnx_io import ParityError

        at.stage = "validate-onnx"
        raise ParityError(failure)
    logger.info("done: %s accuracy %.4f, ONNX %s parity %.2g, %s", model.label, summary.test_accuracy,
                onnx_model.label, summary.onnx_max_abs_diff, decision.decision)
    return Completed(message=outcome_message(model.label, decision), data=summary)
