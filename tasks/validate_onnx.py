from __future__ import annotations

from prefect import get_run_logger, task

from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.results import ValidationResult
from mnist_pipeline.tasks._common import pipeline_stage
from prefect_wandb import ArtifactRef, local_folder, write_json

VALIDATION_NAME = "convnet-onnx-validation"


@task(name="validate-onnx")
def validate_onnx(cfg: PipelineConfig, onnx_model: ArtifactRef, model: ArtifactRef, dataset: ArtifactRef,
                  metrics: ArtifactRef) -> ArtifactRef:
    """onnxruntime against the torch logits that `metrics` (the evaluation of `model` on `dataset`) recorded, on
    every test image; then latency and throughput of both, on a quiet machine: nothing else of the flow runs
    beside it."""
    from mnist_pipeline import data, onnx_io, stage_files
    from mnist_pipeline.model import load_model

    logger = get_run_logger()
    o = cfg.onnx
    with pipeline_stage(cfg, "validate-onnx") as stage:
        onnx_path = stage.use(onnx_model) / "model.onnx"
        net = load_model(stage.use(model) / "model.pt")
        test = data.load_split(stage.use(dataset) / "test.pt")
        evaluation = stage.record(metrics)
        if not all(ref.digest in {i["digest"] for i in evaluation.inputs(ref.type)} for ref in (model, dataset)):
            raise ValueError(f"{metrics.label} is not the evaluation of {model.label} on {dataset.label}: its logits "
                             "cannot be the reference for this ONNX file")
        reference = stage_files.load_logits(local_folder(evaluation.path, evaluation.files))
        report = onnx_io.validate(onnx_path, net, test, atol=o.parity_atol, min_agreement=o.min_argmax_agreement,
                                  latency_samples=o.latency_samples, throughput_batch=o.throughput_batch,
                                  timing_seconds=o.timing_seconds, batch_size=cfg.evaluate.batch_size,
                                  torch_logits=reference)
        out = stage.staging(VALIDATION_NAME)
        write_json(out / "validation.json", report.to_dict())
        stage.summary = report.to_dict()
        stage.log({k: v for k, v in report.to_dict().items() if isinstance(v, (int, float))})
        # The report is recorded whether or not parity holds, so a failed validation is on file too.
        stage.produce(VALIDATION_NAME, "validation", out, ValidationResult.from_report(report).to_metadata())
    ref = stage.outputs["validation"]
    logger.info("onnxruntime: max |diff| %.3g, argmax agreement %.4f, accuracy %.4f, p50 %.3f ms, "
                "%.0f img/s at batch %d (torch %.0f img/s)", report.max_abs_diff, report.argmax_agreement,
                report.ort_accuracy, report.latency_ms_p50, report.ort_throughput_per_s, report.throughput_batch,
                report.torch_throughput_per_s)
    return ref


def parity_failure(cfg: PipelineConfig, report: ValidationResult, label: str) -> str | None:
    """The message a failed validation ends the flow run with (None when parity holds)."""
    if report.passed:
        return None
    o = cfg.onnx
    return (f"onnxruntime parity failed: max |torch - onnxruntime| logit difference {report.max_abs_diff:.3g} "
            f"(tolerance {o.parity_atol:.3g}, {report.max_abs_diff / o.parity_atol:.2f}x the tolerance), argmax "
            f"agreement {report.argmax_agreement:.4%} (minimum {o.min_argmax_agreement:.4%}); report {label}")
