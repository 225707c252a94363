from __future__ import annotations

import json

from prefect import get_run_logger, task

from mnist_pipeline.checkpoint_files import checkpoint_path, discard_checkpoint
from mnist_pipeline.config import MODEL_NAME, PipelineConfig
from mnist_pipeline.results import ModelInfo, TrainingResult
from mnist_pipeline.tasks._common import pipeline_stage, unless_permanent
from prefect_wandb import ArtifactRef, JournalStore, LineageStore


def _flow_run_of(cfg: PipelineConfig, store: LineageStore | JournalStore | None, run_id: str | None) -> str:
    """" (flow run F, failed: ...)" for a run the lineage store knows (a sweep worker's journal cannot say: "")."""
    if run_id is None or isinstance(store, JournalStore):
        return ""
    run = (store or LineageStore(cfg.lineage_db)).run(run_id)
    if run is None:
        return ""
    how = run.status + (f": {run.error}" if run.error else "")
    return f" (flow run {run.flow_run_id}, {how})" if run.flow_run_id else f" ({how})"


def loop_settings(cfg: PipelineConfig, progress: bool = True):
    from mnist_pipeline import training

    return training.LoopSettings.from_config(cfg.train, progress=progress)


@task(name="train", retries=1, retry_delay_seconds=1, retry_condition_fn=unless_permanent)
def train(cfg: PipelineConfig, dataset: ArtifactRef,
          store: LineageStore | JournalStore | None = None) -> ArtifactRef:
    # torch: imported when training, not when the flow is loaded (an unchanged run never trains)
    import torch

    from mnist_pipeline import data, stage_files, training
    from mnist_pipeline.model import ConvNet, ModelConfig, pick_device

    logger = get_run_logger()
    t = cfg.train
    with pipeline_stage(cfg, "train", store=store) as stage:
        split = data.load_split(stage.use(dataset) / "train.pt")
        training.seed_everything(t.seed)
        threads = training.set_threads(t.threads)
        device = pick_device(t.device)
        model = ConvNet(ModelConfig(kernels=(t.kernels[0], t.kernels[1]), classes=t.classes))
        if t.watch:
            stage.watch(model, log_freq=t.watch_log_freq)
        ckpt = checkpoint_path(cfg, dataset)
        logger.info("training on %d images for %d epoch(s) on %s (%d threads)", len(split), t.epochs, device, threads)

        def on_log(examples: int, epoch: int, loss: float) -> None:
            stage.log({"epoch": epoch, "loss": loss}, step=examples)
            logger.info("loss after %05d examples: %.3f (epoch %d)", examples, loss, epoch)

        out = stage.staging(MODEL_NAME)
        lineage = training.CheckpointLineage(dataset_digest=dataset.digest, fingerprint=cfg.training_fingerprint(),
                                             run_id=stage.run_id)
        resume = training.resume_point(ckpt, lineage)
        if resume is not None:  # an earlier run of these inputs (cancelled, killed, failed) left it: said, not silent
            logger.info("resuming from checkpoint written by run %s%s at epoch %s, batch %s (%s examples seen): %s",
                        resume["run_id"], _flow_run_of(cfg, store, resume["run_id"]), resume.get("epoch"),
                        resume.get("batch"), resume.get("examples_seen"), ckpt)
        # The files hold only what the weights are a function of (see mnist_pipeline.stage_files); how this run went
        # (time, threads, device, resume) is the run's record below.
        # A sweep trial (on a Dask worker: a JournalStore) draws no bar: workers share one console, and the
        # loss lines above are in the trial's Prefect logs.
        _, result = stage_files.train_model_files(
            out, split, kernels=t.kernels, classes=t.classes, settings=loop_settings(cfg, progress=not isinstance(store, JournalStore)),
            fingerprint=cfg.training_fingerprint(), device=device, model=model, on_log=on_log, checkpoint=ckpt,
            checkpoint_lineage=lineage)
        # For the run report: the points logged to W&B (every log_every batches, those before a resume included,
        # which the checkpoint carried), in this run's record, not the model's files.
        loss_points = [(examples, epoch, round(loss, 5)) for examples, epoch, loss in result.loss_points]
        meta = ModelInfo.from_metadata(json.loads((out / "model_config.json").read_text())).to_metadata()
        stage.summary = TrainingResult(
            train_seconds=result.seconds, final_loss=result.final_loss, examples_seen=result.examples_seen,
            resumed=result.resumed_from is not None, resumed_from_checkpoint=result.resumed_from,
            checkpoint_written_by=result.checkpoint_written_by, threads=threads, device=str(device),
            torch_deterministic=torch.are_deterministic_algorithms_enabled(), loss_points=loss_points).to_metadata()
        stage.produce(MODEL_NAME, "model", out, meta)
    discard_checkpoint(ckpt)  # the model is on record; the checkpoint has done its job
    ref = stage.outputs["model"]
    # on a sweep worker the version is given when the flow commits the trial's journal: not known here
    logger.info("model %s trained in %.1f s, digest %s", ref.label if ref.version >= 0 else ref.name,
                result.seconds, ref.digest[:16])
    return ref
