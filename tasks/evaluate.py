from __future__ import annotations

from prefect import get_run_logger, task

from mnist_pipeline import data, metrics
from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.lineage.journal import JournalStore
from mnist_pipeline.lineage.refs import ArtifactRef
from mnist_pipeline.lineage.stage import open_stage
from mnist_pipeline.lineage.store import LineageStore
from mnist_pipeline.model import load_model
from tasks._common import current_flow_run_id, write_json

METRICS_NAME = "convnet-metrics"


@task(name="evaluate")
def evaluate(cfg: PipelineConfig, model: ArtifactRef, dataset: ArtifactRef,
             store: LineageStore | JournalStore | None = None) -> ArtifactRef:
    logger = get_run_logger()
    with open_stage(cfg, "evaluate", current_flow_run_id(), store=store) as stage:
        net = load_model(stage.use(model) / "model.pt")
        test = data.load_split(stage.use(dataset) / "test.pt")
        ev = metrics.evaluate(net, test, net.cfg.classes, cfg.evaluate.batch_size)
        classes = [str(c) for c in range(net.cfg.classes)]
        stage.log({"test_accuracy": ev.accuracy, "test_loss": ev.loss})
        stage.log_confusion_matrix("confusion_matrix", test.labels.tolist(), ev.predictions.tolist(), classes)
        wrong = (ev.predictions != test.labels).nonzero().flatten()[: cfg.evaluate.misclassified_table_rows]
        stage.log_image_table("misclassified", ["index", "image", "prediction", "label"],
                              [(int(i), test.images[i].numpy(), int(ev.predictions[i]), int(test.labels[i]))
                               for i in wrong], image_column="image")
        out = stage.staging(METRICS_NAME)
        write_json(out / "metrics.json", ev.summary())
        stage.summary = {"test_accuracy": ev.accuracy, "test_loss": ev.loss, "misclassified": int(
            (ev.predictions != test.labels).sum())}
        stage.produce(METRICS_NAME, "metrics", out, ev.summary())
    logger.info("test accuracy %.4f, loss %.4f on %d images", ev.accuracy, ev.loss, ev.count)
    return stage.outputs["metrics"]
