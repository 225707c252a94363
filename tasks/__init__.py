"""Thin Prefect tasks: each opens one lineage stage (a W&B run) and calls the pure code in `mnist_pipeline`."""

from tasks.evaluate import evaluate
from tasks.export_onnx import export_onnx
from tasks.prepare_data import prepare_data
from tasks.promote import check_for_changes, promote
from tasks.report import publish_report
from tasks.run_report import run_report
from tasks.train import train
from tasks.validate_onnx import validate_onnx

__all__ = ["prepare_data", "check_for_changes", "train", "evaluate", "export_onnx", "validate_onnx", "promote",
           "run_report", "publish_report"]
