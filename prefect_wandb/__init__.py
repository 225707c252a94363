"""prefect_wandb: traceable artifact lineage for Prefect flows, recorded in a lineage store and in W&B Artifacts."""

from prefect_wandb.settings import LineageSettings, WandbSettings

__all__ = ["LineageSettings", "WandbSettings"]
