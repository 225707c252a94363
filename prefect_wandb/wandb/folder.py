"""Where wandb writes its run folders: the one rule (`LineageSettings.wandb_folder`), created. Imports no wandb."""

from __future__ import annotations

from pathlib import Path

from prefect_wandb.settings import LineageSettings


def wandb_folder(settings: LineageSettings) -> Path:
    """`wandb.dir` of the settings, else $WANDB_DIR, else the lineage store's folder."""
    return settings.wandb_folder()


def wandb_dir(settings: LineageSettings) -> Path:
    """`wandb_folder(settings)`, created."""
    d = wandb_folder(settings)
    d.mkdir(parents=True, exist_ok=True)
    return d
