"""The flow: prepare-data -> train -> evaluate, export-onnx -> validate-onnx. It only orchestrates."""

from __future__ import annotations

from prefect import flow, get_run_logger

from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.lineage.store import LineageStore
from tasks import evaluate, export_onnx, prepare_data, publish_report, train, validate_onnx

FLOW_NAME = "mnist-lineage-pipeline"


@flow(name=FLOW_NAME, description="Train the W&B tutorial ConvNet on MNIST, evaluate it, export and validate "
      "ONNX, and record the lineage of every artifact in W&B and the local lineage store.")
def mnist_pipeline(config: PipelineConfig = PipelineConfig()) -> dict:
    logger = get_run_logger()
    cfg = config.resolved()
    dataset = prepare_data(cfg)
    if LineageStore(cfg.lineage_db).find_artifact(dataset.name, dataset.digest) is None:
        logger.warning("cached dataset %s is no longer in the lineage store; preparing it again", dataset.label)
        dataset = prepare_data.with_options(refresh_cache=True)(cfg)
    model = train(cfg, dataset)
    metrics = evaluate(cfg, model, dataset)
    onnx_model = export_onnx(cfg, model)
    validation = validate_onnx(cfg, onnx_model, model, dataset)

    m = LineageStore(cfg.lineage_db).find_artifact(metrics.name, metrics.digest).metadata
    v = LineageStore(cfg.lineage_db).find_artifact(validation.name, validation.digest).metadata
    summary = {
        "status": "completed",
        "artifacts": {r.type: {"ref": r.label, "digest": r.digest, "path": r.path}
                      for r in (dataset, model, metrics, onnx_model, validation)},
        "test_accuracy": m["test_accuracy"],
        "test_loss": m["test_loss"],
        "onnx_accuracy": v["ort_accuracy"],
        "onnx_max_abs_diff": v["max_abs_diff"],
        "onnx_argmax_agreement": v["argmax_agreement"],
        "onnx_latency_ms_p50": v["latency_ms_p50"],
        "onnx_throughput_per_s": v["ort_throughput_per_s"],
        "lineage_db": str(cfg.lineage_db),
    }
    publish_report(cfg, summary)
    logger.info("done: %s accuracy %.4f, ONNX %s parity %.2g", model.label, summary["test_accuracy"],
                onnx_model.label, summary["onnx_max_abs_diff"])
    return summary
