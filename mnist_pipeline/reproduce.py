"""How each of the pipeline's stages rebuilds its files from a record, for `reproduce` (`REBUILDERS`): the same
functions the pipeline's tasks call (`mnist_pipeline.stage_files`), with the recorded config, seed and intra-op
thread count. No Prefect, no W&B."""

from __future__ import annotations

import os
from pathlib import Path

from mnist_pipeline.config import PipelineConfig
from prefect_wandb import CannotReproduce, Rebuild, Replay


def _config(replay: Replay) -> PipelineConfig:
    """The recorded run's config. Its data paths may be gone (a reproduction reads the dataset artifact, never the
    raw files), so only `slice` of the data section is kept: it is part of the training fingerprint."""
    cfg = dict(replay.config)
    cfg["data"] = {"slice": (cfg.get("data") or {}).get("slice", 5), "source": "synthetic"}
    try:
        return PipelineConfig.model_validate(cfg)
    except ValueError as e:
        raise CannotReproduce(f"the recorded {replay.job_type} config is not valid for this code version: "
                              f"{' '.join(str(e).split())[:300]}") from None


def recorded_threads(replay: Replay) -> int:
    """The intra-op thread count the training ran with (older records kept it in the model's metadata)."""
    n = replay.summary.get("threads") or replay.metadata.get("threads")
    if not n:
        t = (replay.config.get("train") or {}).get("threads") or 0
        n = t or os.cpu_count() or 1
    return int(n)


def _train(replay: Replay, out: Path) -> list[str]:
    import torch

    from mnist_pipeline import stage_files, training
    from mnist_pipeline.data import load_split

    cfg = _config(replay)
    notes = []
    if str(replay.summary.get("device", "cpu")).startswith("cuda"):
        notes.append("the model was trained on CUDA; this reproduction runs on CPU: expect other bits")
    threads = replay.threads or recorded_threads(replay)
    training.seed_everything(cfg.train.seed)
    training.set_threads(threads)
    t = cfg.train
    stage_files.train_model_files(out, load_split(replay.inputs["dataset"] / "train.pt"), kernels=t.kernels,
                                  classes=t.classes, settings=training.LoopSettings.from_config(t, progress=False),
                                  fingerprint=cfg.training_fingerprint(), device=torch.device("cpu"))
    return notes + [f"trained on CPU with {threads} intra-op thread(s)"]


def _export(replay: Replay, out: Path) -> None:
    from mnist_pipeline import stage_files

    cfg = _config(replay)
    # the provenance pointers in the file are the recorded export's (its run, not this reproduction)
    stage_files.export_onnx_files(replay.inputs["model"] / "model.pt", out, opset=cfg.onnx.opset,
                                  exporter=cfg.onnx.exporter, provenance=replay.metadata.get("provenance"))


def _evaluate(replay: Replay, out: Path) -> None:
    from mnist_pipeline import stage_files
    from mnist_pipeline.data import load_split

    cfg = _config(replay)
    stage_files.evaluate_files(replay.inputs["model"] / "model.pt", load_split(replay.inputs["dataset"] / "test.pt"),
                               out, batch_size=cfg.evaluate.batch_size,
                               misclassified_rows=cfg.evaluate.misclassified_table_rows)


REBUILDERS: dict[str, Rebuild] = {"train": _train, "export-onnx": _export, "evaluate": _evaluate}
