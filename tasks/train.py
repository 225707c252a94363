from __future__ import annotations

import hashlib
import json

from prefect import get_run_logger, task

from mnist_pipeline import data, training
from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.lineage.journal import JournalStore
from mnist_pipeline.lineage.refs import ArtifactRef
from mnist_pipeline.lineage.stage import open_stage
from mnist_pipeline.lineage.store import LineageStore
from mnist_pipeline.model import ConvNet, ModelConfig, pick_device, save_model
from tasks._common import current_flow_run_id, write_json

MODEL_NAME = "convnet"


def checkpoint_path(cfg: PipelineConfig, dataset: ArtifactRef):
    # Keyed by what determines the weights (the dataset and the training fingerprint, as the skip rule uses
    # them), so a rerun with the same inputs resumes and any change starts over.
    key = hashlib.sha256(json.dumps([dataset.digest, cfg.training_fingerprint()],
                                    sort_keys=True).encode()).hexdigest()[:20]
    path = cfg.artifacts_dir / ".checkpoints" / f"train-{key}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@task(name="train", retries=1, retry_delay_seconds=1)
def train(cfg: PipelineConfig, dataset: ArtifactRef, stop_after_batches: int | None = None,
          store: LineageStore | JournalStore | None = None) -> ArtifactRef:
    logger = get_run_logger()
    t = cfg.train
    with open_stage(cfg, "train", current_flow_run_id(), store=store) as stage:
        split = data.load_split(stage.use(dataset) / "train.pt")
        training.seed_everything(t.seed)
        threads = training.set_threads(t.threads)
        device = pick_device(t.device)
        model_cfg = ModelConfig(kernels=tuple(t.kernels), classes=t.classes)
        model = ConvNet(model_cfg)
        if t.watch:
            stage.watch(model, log_freq=t.watch_log_freq)
        ckpt = checkpoint_path(cfg, dataset)
        logger.info("training on %d images for %d epoch(s) on %s (%d threads)", len(split), t.epochs, device, threads)

        def on_log(examples: int, epoch: int, loss: float) -> None:
            stage.log({"epoch": epoch, "loss": loss}, step=examples)
            logger.info("loss after %05d examples: %.3f (epoch %d)", examples, loss, epoch)

        settings = training.LoopSettings(epochs=t.epochs, batch_size=t.batch_size, learning_rate=t.learning_rate,
                                         seed=t.seed, log_every=t.log_every, checkpoint_every=t.checkpoint_every,
                                         channels_last=t.channels_last)
        result = training.train(model, split, settings, device, on_log=on_log, checkpoint=ckpt,
                                stop_after_batches=stop_after_batches)
        out = stage.staging(MODEL_NAME)
        save_model(model, out / "model.pt")
        meta = {"model_config": model_cfg.to_dict(), "train": t.model_dump(mode="json"), "device": str(device),
                "threads": threads, "examples_seen": result.examples_seen, "batches": result.batches,
                "train_seconds": result.seconds, "final_loss": result.final_loss,
                "resumed_from_checkpoint": result.resumed_from, "fingerprint": cfg.training_fingerprint()}
        write_json(out / "model_config.json", meta)
        stage.summary = {"train_seconds": result.seconds, "final_loss": result.final_loss,
                         "examples_seen": result.examples_seen, "resumed": result.resumed_from is not None}
        stage.produce(MODEL_NAME, "model", out, meta)
    ckpt.unlink(missing_ok=True)  # the model is on record; the checkpoint has done its job
    ref = stage.outputs["model"]
    logger.info("model %s trained in %.1f s, digest %s", ref.label, result.seconds, ref.digest[:16])
    return ref
