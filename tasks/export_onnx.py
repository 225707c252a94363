from __future__ import annotations

from dataclasses import asdict

from prefect import get_run_logger, task

from mnist_pipeline.config import SOURCE_ROOT, PipelineConfig
from mnist_pipeline.tasks._common import pipeline_stage
from prefect_wandb import ArtifactRecord, ArtifactRef, code_state, local_folder

ONNX_NAME = "convnet-onnx"


def provenance_pointers(store, model: ArtifactRecord) -> dict:
    """What the ONNX file says about where it came from (its metadata_props): the run that trained the model on
    record, the model and the dataset it was trained on, the code that exports it.

    Only what is a function of the model's record and the code: the same model exported by the same code gives
    the same bytes (a forced retrain that makes the same weights makes the same ONNX file), so the export run's own
    id and its flow run stay out; the attestation names those."""
    code = code_state(SOURCE_ROOT)
    datasets = model.inputs("dataset")
    trained_by = store.run(model.producer_run_id)
    return {"train_run_id": model.producer_run_id,
            "train_flow_run_id": (trained_by.flow_run_id if trained_by else None) or "",
            "model_artifact": model.name, "model_digest": model.digest,
            "model_file_sha256": next((f.sha256 for f in model.files if f.relpath == "model.pt"), ""),
            "dataset_digest": datasets[0]["digest"] if datasets else "", "git_commit": code["git_commit"] or "",
            "git_dirty": "" if code["git_dirty"] is None else str(code["git_dirty"]).lower()}


@task(name="export-onnx")
def export_onnx(cfg: PipelineConfig, model: ArtifactRef, selected_by: ArtifactRef | None = None) -> ArtifactRef:
    """`selected_by`: the sweep-result that chose this model, an input of the export so that the lineage of the
    ONNX file (and its audit) goes through the sweep's select step."""
    from mnist_pipeline import stage_files  # torch and onnx: imported when exporting, not when the flow is loaded

    logger = get_run_logger()
    with pipeline_stage(cfg, "export-onnx") as stage:
        model_rec = stage.record(model)
        model_path = local_folder(model_rec.path, model_rec.files) / "model.pt"
        if selected_by is not None:
            stage.use(selected_by)
        out = stage.staging(ONNX_NAME)
        info = stage_files.export_onnx_files(model_path, out, opset=cfg.onnx.opset, exporter=cfg.onnx.exporter,
                                             provenance=provenance_pointers(stage.store, model_rec))
        stage.summary = {"opset": info.opset}
        stage.produce(ONNX_NAME, "onnx", out, asdict(info))
    ref = stage.outputs["onnx"]
    logger.info("exported %s (opset %d, input %s %s), digest %s", ref.label, info.opset, info.input_name,
                info.input_shape, ref.digest[:16])
    return ref
