"""A training checkpoint's files, without torch: the checkpoint and its sidecar record beside it (`<name>.json`:
its sha256, the inputs it was written for, the run that wrote it). `training` writes and reads them; the skip path
and the sweep's workers only name or discard them, and need no torch for that."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mnist_pipeline.config import PipelineConfig
    from prefect_wandb import ArtifactRecord, ArtifactRef


def checkpoint_path(cfg: PipelineConfig, dataset: ArtifactRef | ArtifactRecord, create: bool = True) -> Path:
    """Where the training of `dataset` with `cfg`'s training settings keeps its checkpoint: keyed by what
    determines the weights (the dataset and the training fingerprint, as the skip rule uses them), so a rerun with
    the same inputs resumes and any change starts over."""
    key = hashlib.sha256(json.dumps([dataset.digest, cfg.training_fingerprint()],
                                    sort_keys=True).encode()).hexdigest()[:20]
    path = cfg.artifacts_folder() / ".checkpoints" / f"train-{key}.pt"
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    return path


def sidecar(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + ".json")


def discard_checkpoint(path: Path) -> None:
    path.unlink(missing_ok=True)
    sidecar(path).unlink(missing_ok=True)
