from __future__ import annotations

from prefect import get_run_logger, task

from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.results import MetricsResult
from mnist_pipeline.tasks._common import pipeline_stage
from prefect_wandb import ArtifactRef, JournalStore, LineageStore

METRICS_NAME = "convnet-metrics"


@task(name="evaluate")
def evaluate(cfg: PipelineConfig, model: ArtifactRef, dataset: ArtifactRef,
             store: LineageStore | JournalStore | None = None) -> ArtifactRef:
    from mnist_pipeline import data, stage_files  # torch: imported when evaluating, not when the flow is loaded

    logger = get_run_logger()
    with pipeline_stage(cfg, "evaluate", store=store) as stage:
        model_path = stage.use(model) / "model.pt"
        test = data.load_split(stage.use(dataset) / "test.pt")
        out = stage.staging(METRICS_NAME)
        ev, wrong_list, wrong_count = stage_files.evaluate_files(model_path, test, out, batch_size=cfg.evaluate.batch_size,
                                                             misclassified_rows=cfg.evaluate.misclassified_table_rows)
        classes = [str(c) for c in range(len(ev.per_class_accuracy))]
        stage.log({"test_accuracy": ev.accuracy, "test_loss": ev.loss})
        stage.log_confusion_matrix("confusion_matrix", test.labels.tolist(), ev.predictions.tolist(), classes)
        # the first misclassified test images (indices into the dataset's test split): W&B images, run report
        stage.log_images("misclassified", [test.images[w["index"]].numpy() for w in wrong_list],
                         [f"pred {w['prediction']} / label {w['label']} (test image {w['index']})" for w in wrong_list])
        stage.summary = {"test_accuracy": ev.accuracy, "test_loss": ev.loss, "misclassified": wrong_count}
        stage.produce(METRICS_NAME, "metrics", out,
                      MetricsResult.from_metadata({**ev.summary(), "misclassified_count": wrong_count}).to_metadata())
    logger.info("test accuracy %.4f, loss %.4f on %d images", ev.accuracy, ev.loss, ev.count)
    return stage.outputs["metrics"]
