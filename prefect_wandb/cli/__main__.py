from prefect_wandb.cli import entry

entry()
