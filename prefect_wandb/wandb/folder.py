"""Where wandb writes its run folders: the one rule, for the stages and for preflight. Imports no wandb."""

from __future__ import annotations

import os
from pathlib import Path

from mnist_pipeline.config import PipelineConfig


def wandb_folder(cfg: PipelineConfig) -> Path:
    """`wandb.dir` of the config, else $WANDB_DIR, else the lineage store's folder."""
    if cfg.wandb.dir:
        return cfg.wandb.dir
    return Path(os.environ["WANDB_DIR"]) if os.environ.get("WANDB_DIR") else cfg.lineage_db.parent


def wandb_dir(cfg: PipelineConfig) -> Path:
    """`wandb_folder(cfg)`, created."""
    d = wandb_folder(cfg)
    d.mkdir(parents=True, exist_ok=True)
    return d
