"""Pure ML code of the MNIST lineage pipeline (data, model, training loop, metrics, ONNX I/O) and its
lineage record. Nothing here imports Prefect; only `prefect_wandb.wandb` imports wandb."""

__version__ = "0.1.0"
