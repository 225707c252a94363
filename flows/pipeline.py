"""The flow, which only orchestrates:

prepare-data -> check-for-changes -> (skip, or) train -> evaluate | export-onnx -> validate-onnx -> promote,
then a Prefect artifact on the flow run that lists what was produced and why.
"""

from __future__ import annotations

import logging

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging.handlers import APILogHandler

from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.lineage.store import LineageStore
from mnist_pipeline.onnx_io import ParityError
from tasks import check_for_changes, evaluate, export_onnx, prepare_data, promote, publish_report, train, validate_onnx
from tasks.validate_onnx import parity_failure

FLOW_NAME = "mnist-lineage-pipeline"
DEFAULT_CONFIG = PipelineConfig()  # frozen: safe to share as the default (the UI form shows its values)


class _InRunsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def _library_warnings_to_prefect() -> None:
    """Warnings of the pipeline's own code (W&B fell back offline, a dead run was recorded as failed) reach the
    flow run's logs in the Prefect UI too, not only the stderr of whatever process ran it."""
    lib = logging.getLogger("mnist_pipeline")
    if not any(isinstance(h, APILogHandler) for h in lib.handlers):
        handler = APILogHandler(level=logging.WARNING)
        handler.addFilter(_InRunsOnly())
        lib.addHandler(handler)


_library_warnings_to_prefect()


@flow(name=FLOW_NAME, description="Train the W&B tutorial ConvNet on MNIST, evaluate it, export and validate "
      "ONNX, record the lineage of every artifact in W&B and the local lineage store, and promote the model to "
      "'production' when it validates and beats the current one. Skips training when neither the data nor the "
      "training config changed since the production model (unless force is set).")
def mnist_pipeline(config: PipelineConfig = DEFAULT_CONFIG) -> dict:
    logger = get_run_logger()
    cfg = config.resolved()
    dataset = prepare_data(cfg)
    if LineageStore(cfg.lineage_db).find_artifact(dataset.name, dataset.digest) is None:
        logger.warning("cached dataset %s is no longer in the lineage store; preparing it again", dataset.label)
        dataset = prepare_data.with_options(refresh_cache=True)(cfg)

    check = check_for_changes(cfg, dataset)
    if not check.changed and not cfg.force:
        summary = {"status": "skipped", "reason": f"training skipped: {check.reason} (set force to retrain)",
                   "production": check.production,
                   "artifacts": {"dataset": {"ref": dataset.label, "digest": dataset.digest, "path": dataset.path}},
                   "lineage_db": str(cfg.lineage_db)}
        publish_report(cfg, summary)
        logger.info(summary["reason"])
        return summary

    model = train(cfg, dataset)
    # Evaluation and export + validation only share the model: run them side by side.
    metrics_future = evaluate.submit(cfg, model, dataset)
    onnx_model = export_onnx(cfg, model)
    validation = validate_onnx(cfg, onnx_model, model, dataset)
    metrics = metrics_future.result()
    decision = promote(cfg, model, metrics, validation)

    store = LineageStore(cfg.lineage_db)
    m = store.find_artifact(metrics.name, metrics.digest).metadata
    v = store.find_artifact(validation.name, validation.digest).metadata
    summary = {
        "status": "completed",
        "reason": f"retrained: {check.reason}" + (" (forced)" if not check.changed else ""),
        "artifacts": {r.type: {"ref": r.label, "digest": r.digest, "path": r.path}
                      for r in (dataset, model, metrics, onnx_model, validation)},
        "test_accuracy": m["test_accuracy"],
        "test_loss": m["test_loss"],
        "onnx_accuracy": v["ort_accuracy"],
        "onnx_max_abs_diff": v["max_abs_diff"],
        "onnx_argmax_agreement": v["argmax_agreement"],
        "onnx_latency_ms_p50": v["latency_ms_p50"],
        "onnx_throughput_per_s": v["ort_throughput_per_s"],
        "promotion": {k: getattr(decision, k) for k in ("decision", "reason", "candidate_accuracy",
                                                        "production_accuracy")},
        "lineage_db": str(cfg.lineage_db),
    }
    failure = parity_failure(cfg, v, validation.label)
    if failure:
        summary["status"] = "failed"
    publish_report(cfg, summary)
    if failure:
        raise ParityError(failure)
    logger.info("done: %s accuracy %.4f, ONNX %s parity %.2g, %s", model.label, summary["test_accuracy"],
                onnx_model.label, summary["onnx_max_abs_diff"], decision.decision)
    return summary
