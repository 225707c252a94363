from __future__ import annotations

from dataclasses import asdict

from prefect import get_run_logger, task

from mnist_pipeline import onnx_io
from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.lineage.refs import ArtifactRef
from mnist_pipeline.lineage.stage import open_stage
from mnist_pipeline.model import load_model
from tasks._common import current_flow_run_id, write_json

ONNX_NAME = "convnet-onnx"


@task(name="export-onnx")
def export_onnx(cfg: PipelineConfig, model: ArtifactRef, selected_by: ArtifactRef | None = None) -> ArtifactRef:
    """`selected_by`: the sweep-result that chose this model, an input of the export so that the lineage of the
    ONNX file (and its audit) goes through the sweep's select step."""
    logger = get_run_logger()
    with open_stage(cfg, "export-onnx", current_flow_run_id()) as stage:
        net = load_model(stage.use(model) / "model.pt")
        if selected_by is not None:
            stage.use(selected_by)
        out = stage.staging(ONNX_NAME)
        info = onnx_io.export(net, out / "model.onnx", opset=cfg.onnx.opset, exporter=cfg.onnx.exporter)
        write_json(out / "export.json", asdict(info))
        stage.summary = {"opset": info.opset}
        stage.produce(ONNX_NAME, "onnx", out, asdict(info))
    ref = stage.outputs["onnx"]
    logger.info("exported %s (opset %d, input %s %s), digest %s", ref.label, info.opset, info.input_name,
                info.input_shape, ref.digest[:16])
    return ref
