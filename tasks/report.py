"""The report stage: one self-contained HTML page per run (plots, ONNX figures, the decision, the lineage picture),
recorded as the artifact `run-report` (type `report`) so that it is content-addressed, audited and uploaded like the
rest; and the same plots in the Prefect UI (a Markdown artifact, a table artifact of per-class accuracy)."""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import UTC, datetime
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from mnist_pipeline import data
from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.report import markdown
from mnist_pipeline.report.page import (
    Misclassified,
    RunReport,
    draw_figures,
    resumed_from_words,
    write_report,
)
from mnist_pipeline.results import MetricsResult, ModelInfo, PromotionOutcome, TrainingResult, ValidationResult
from mnist_pipeline.tasks._common import current_flow_run_id, pipeline_stage
from prefect_wandb import ArtifactRecord, ArtifactRef, LineageStore, RunEdges, lineage_graph, local_folder

REPORT_NAME = "run-report"
REPORT_FILE = "report.html"


def _as_dict(promotion) -> dict | None:
    """The decision as the page shows it (a `PromotionRecord`, a `PromotionOutcome` or its dict)."""
    if promotion is None:
        return None
    if isinstance(promotion, dict):
        return dict(promotion)
    if dataclasses.is_dataclass(promotion) and not isinstance(promotion, type):
        return dataclasses.asdict(promotion)
    return PromotionOutcome.of(promotion).to_metadata()


def _loss_points(store: LineageStore, metrics_rec: ArtifactRecord) -> tuple[list[tuple[int, int, float]], int | None]:
    """The training run's logged loss, found through the model the metrics were measured on (kept in that run's
    record, not in the model's files), and the examples of one epoch (the model's examples seen / its epochs)."""
    for inp in metrics_rec.inputs("model"):
        model = store.find_artifact(inp["name"], inp["digest"])
        run = store.run(model.producer_run_id) if model else None
        if model is not None and run is not None:
            info = ModelInfo.from_metadata(model.metadata)
            epochs, seen = info.fingerprint.get("epochs"), info.examples_seen
            per_epoch = seen // epochs if isinstance(seen, int) and isinstance(epochs, int) and epochs else None
            return TrainingResult.from_metadata(run.summary).loss_curve(), per_epoch
    return [], None


def _training_note(store: LineageStore, flow_run_id: str | None) -> str | None:
    """When this flow run's training resumed from a checkpoint another run wrote (a cancelled or killed one), the
    page says so: its loss curve begins with that run's points."""
    trains = [r for r in store.runs(flow_run_id) if r.job_type == "train" and r.status == "finished"] \
        if flow_run_id else []
    t = TrainingResult.from_metadata(trains[-1].summary) if trains else None
    if t is None or not t.resumed_from_checkpoint:
        return None
    return resumed_from_words(t, store.run(t.checkpoint_written_by) if t.checkpoint_written_by else None)


def _input(rec: ArtifactRecord, type_: str) -> dict | None:
    return next(iter(rec.inputs(type_)), None)


def build_report(store: LineageStore, stage, dataset_dir: Path, metrics_rec: ArtifactRecord,
                 validation_rec: ArtifactRecord, promotion: dict | None, flow_run_id: str | None) -> RunReport:
    """Everything the page shows, as plain data, from the lineage store and the stage's verified inputs."""
    test = data.load_split(dataset_dir / "test.pt")
    metrics = _metrics(metrics_rec)
    validation = ValidationResult.from_metadata(validation_rec.metadata)
    wrong = metrics.misclassified or []
    mis = [Misclassified(w["index"], w["prediction"], w["label"], test.images[w["index"]].numpy()) for w in wrong]
    model = _input(metrics_rec, "model") or {}
    onnx = _input(validation_rec, "onnx") or {}
    onnx_rec = store.find_artifact(onnx["name"], onnx["digest"]) if onnx else None
    model_label = f"{model.get('name')}:v{model.get('version')}" if model else "?"
    runs = store.runs(flow_run_id) if flow_run_id else [r for r in [store.run(stage.run_id)] if r is not None]
    edges = {r.run_id: store.edges(r.run_id) for r in runs}
    edges[stage.run_id] = RunEdges(used=list({a.artifact_id: a for a in stage.used}.values()), produced=[])
    graph = lineage_graph(runs, edges, title=f"Lineage of {model_label}",
                          pending={stage.run_id: [(REPORT_NAME, "report · this file")]})
    artifacts = [{"stage": r.job_type, "artifact": a.label, "type": a.type, "sha256": a.digest,
                  "path": a.path} for r in runs for a in edges[r.run_id].produced]
    facts = [("model", f"{model_label} (sha256 {model.get('digest', '')[:16]})"),
             ("ONNX file", str(local_folder(onnx_rec.path, onnx_rec.files) / "model.onnx") if onnx_rec else "n/a"),
             ("Prefect flow run", flow_run_id or "n/a"),
             ("written", datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"))]
    points, per_epoch = _loss_points(store, metrics_rec)
    return RunReport(title=f"MNIST run report: {model_label}", facts=facts, loss_points=points,
                     examples_per_epoch=per_epoch, metrics=metrics.to_metadata(), misclassified=mis,
                     misclassified_total=metrics.misclassified_count, validation=validation.to_metadata(),
                     promotion=promotion, lineage=graph, artifacts=artifacts,
                     training_note=_training_note(store, flow_run_id))


def _metrics(rec: ArtifactRecord) -> MetricsResult:
    """The metrics record's metadata and its file (which alone lists the misclassified images)."""
    return MetricsResult.from_metadata({**rec.metadata, **json.loads((local_folder(rec.path, rec.files) / "metrics.json").read_text())})


@task(name="report")
def run_report(cfg: PipelineConfig, dataset: ArtifactRef, metrics: ArtifactRef, validation: ArtifactRef,
               promotion=None) -> ArtifactRef:
    """Write this run's report (after promote: it shows the decision) and show its plots in the Prefect UI.

    The plots are drawn here, after everything else: drawn in a thread beside promote they made both slower on two
    cores (matplotlib and the stage's many short SQLite and W&B calls take turns at the GIL), about 1 s a run."""
    logger = get_run_logger()
    flow_run_id = current_flow_run_id()
    t0 = time.perf_counter()
    with pipeline_stage(cfg, "report", flow_run_id=flow_run_id) as stage:
        dataset_dir = stage.use(dataset)
        m = stage.record(metrics)  # its files as verified by `record`
        v = stage.record(validation)
        report = build_report(stage.store, stage, dataset_dir, m, v, _as_dict(promotion), flow_run_id)
        t1 = time.perf_counter()
        figs = draw_figures(report)  # matplotlib is imported here, the first time a report is drawn
        t2 = time.perf_counter()
        out = stage.staging(REPORT_NAME)
        path, page_s = write_report(report, out / REPORT_FILE, figs)
        size = path.stat().st_size
        stage.summary = {"report_bytes": size, "figures_seconds": round(t2 - t1, 3),
                         "page_seconds": round(page_s, 3), "stage_seconds_before_commit": round(time.perf_counter()
                                                                                                - t0, 3)}
        stage.produce(REPORT_NAME, "report", out, {"title": report.title, "figures": sorted(
            k for k, f in figs.items() if isinstance(f, bytes))})
    ref = stage.outputs["report"]
    final = local_folder(ref.path) / REPORT_FILE
    create_markdown_artifact(markdown=markdown.run_markdown(report, figs, final), key="mnist-run-report",
                             description="Loss curve, confusion matrix, misclassified digits and lineage of this run")
    if report.metrics.get("per_class_accuracy"):
        create_table_artifact(table=markdown.per_class_rows(report.metrics), key="mnist-per-class-accuracy",
                              description="Test accuracy per class (4 significant digits)")
    logger.info("run report %s (%d KiB; figures %.2f s, page %.2f s, whole stage %.2f s): %s", ref.label,
                size // 1024, t2 - t1, page_s, time.perf_counter() - t0, final)
    return ref
