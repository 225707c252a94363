"""prefect_wandb: traceable artifact lineage for Prefect flows, recorded in a lineage store and in W&B Artifacts."""
