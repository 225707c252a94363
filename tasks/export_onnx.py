from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import get_run_logger, task

from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.lineage.environment import code_state
from mnist_pipeline.lineage.refs import ArtifactRef
from mnist_pipeline.lineage.stage import open_stage
from mnist_pipeline.lineage.store import ArtifactRecord
from mnist_pipeline.tasks._common import current_flow_run_id

ONNX_NAME = "convnet-onnx"


def provenance_pointers(run_id: str, flow_run_id: str | None, model: ArtifactRecord) -> dict:
    """What the ONNX file says about where it came from (its metadata_props): the export run, the model and the
    dataset it was trained on, the code."""
    code = code_state()
    datasets = model.inputs("dataset")
    return {"producer_run_id": run_id, "flow_run_id": flow_run_id or "", "model_artifact": model.name,
            "model_digest": model.digest, "model_file_sha256": model.metadata.get("files", {}).get("model.pt", ""),
            "dataset_digest": datasets[0]["digest"] if datasets else "", "git_commit": code["git_commit"] or "",
            "git_dirty": "" if code["git_dirty"] is None else str(code["git_dirty"]).lower()}


@task(name="export-onnx")
def export_onnx(cfg: PipelineConfig, model: ArtifactRef, selected_by: ArtifactRef | None = None) -> ArtifactRef:
    """`selected_by`: the sweep-result that chose this model, an input of the export so that the lineage of the
    ONNX file (and its audit) goes through the sweep's select step."""
    from mnist_pipeline import recipes  # torch and onnx: imported when exporting, not when the flow is loaded

    logger = get_run_logger()
    with open_stage(cfg, "export-onnx", current_flow_run_id()) as stage:
        model_rec = stage.record(model)
        model_path = Path(model_rec.path) / "model.pt"
        if selected_by is not None:
            stage.use(selected_by)
        out = stage.staging(ONNX_NAME)
        info = recipes.export_onnx_files(model_path, out, opset=cfg.onnx.opset, exporter=cfg.onnx.exporter,
                                         provenance=provenance_pointers(stage.run_id, stage.flow_run_id, model_rec))
        stage.summary = {"opset": info.opset}
        stage.produce(ONNX_NAME, "onnx", out, asdict(info))
    ref = stage.outputs["onnx"]
    logger.info("exported %s (opset %d, input %s %s), digest %s", ref.label, info.opset, info.input_name,
                info.input_shape, ref.digest[:16])
    return ref
