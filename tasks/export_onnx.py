from __future__ import annotations

from dataclasses import asdict

from prefect import get_run_logger, task

from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.lineage.refs import ArtifactRef
from mnist_pipeline.lineage.stage import open_stage
from mnist_pipeline.tasks._common import current_flow_run_id

ONNX_NAME = "convnet-onnx"


@task(name="export-onnx")
def export_onnx(cfg: PipelineConfig, model: ArtifactRef, selected_by: ArtifactRef | None = None) -> ArtifactRef:
    """`selected_by`: the sweep-result that chose this model, an input of the export so that the lineage of the
    ONNX file (and its audit) goes through the sweep's select step."""
    from mnist_pipeline import stage_files  # torch and onnx: imported when exporting, not when the flow is loaded

    logger = get_run_logger()
    with open_stage(cfg, "export-onnx", current_flow_run_id()) as stage:
        model_path = stage.use(model) / "model.pt"
        if selected_by is not None:
            stage.use(selected_by)
        out = stage.staging(ONNX_NAME)
        info = stage_files.export_onnx_files(model_path, out, opset=cfg.onnx.opset, exporter=cfg.onnx.exporter)
        stage.summary = {"opset": info.opset}
        stage.produce(ONNX_NAME, "onnx", out, asdict(info))
    ref = stage.outputs["onnx"]
    logger.info("exported %s (opset %d, input %s %s), digest %s", ref.label, info.opset, info.input_name,
                info.input_shape, ref.digest[:16])
    return ref
