"""Thin Prefect tasks: each opens one lineage stage (a W&B run) and calls the pure code in `mnist_pipeline`."""

from mnist_pipeline.tasks.evaluate import evaluate
from mnist_pipeline.tasks.export_onnx import export_onnx
from mnist_pipeline.tasks.prepare_data import prepare_data
from mnist_pipeline.tasks.promote import check_for_changes, promote
from mnist_pipeline.tasks.report import run_report
from mnist_pipeline.tasks.train import train
from mnist_pipeline.tasks.validate_onnx import validate_onnx

__all__ = ["prepare_data", "check_for_changes", "train", "evaluate", "export_onnx", "validate_onnx", "promote",
           "run_report"]
