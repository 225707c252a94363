"""Thin Prefect tasks: each opens one lineage stage (a W&B run) and calls the pure code in `mnist_pipeline`."""

import importlib

from mnist_pipeline.tasks.evaluate import evaluate
from mnist_pipeline.tasks.export_onnx import export_onnx
from mnist_pipeline.tasks.prepare_data import prepare_data
from mnist_pipeline.tasks.promote import check_for_changes, promote
from mnist_pipeline.tasks.report import run_report
from mnist_pipeline.tasks.train import train
from mnist_pipeline.tasks.validate_onnx import validate_onnx

__all__ = ["prepare_data", "check_for_changes", "train", "evaluate", "export_onnx", "validate_onnx", "promote",
           "run_report"]

# What the stages import when they run, and not when the flow is loaded (a skipped run needs none of them): torch,
# wandb, onnx, onnxruntime, matplotlib and the pure code on them.
STAGE_MODULES = ("torch", "wandb", "mnist_pipeline.training", "mnist_pipeline.metrics",
                 "mnist_pipeline.stage_files", "onnx", "onnxruntime", "mnist_pipeline.onnx_io",
                 "mnist_pipeline.report.plots")


def import_stage_modules() -> None:
    """Import `STAGE_MODULES` now, ahead of the stages: `mnist-pipeline run` does while the Prefect server it
    started comes up (the same imports, made while it would wait), the benchmark before its timer."""
    for name in STAGE_MODULES:
        importlib.import_module(name)


def prepare_first_run() -> None:
    """What `mnist-pipeline run` does while the Prefect server it started comes up (it would wait anyway): the
    stages' imports, then what a process's first stages pay once: the modules wandb imports as its first run
    starts (its launch inputs import wandb's public API: 0.8 s), and matplotlib's fonts (about half the first
    report's drawing). The benchmark's warm run imports only `STAGE_MODULES` before its timer: the tutorial's timed
    `wandb.init` pays the same first-run imports."""
    import_stage_modules()
    importlib.import_module("wandb.apis.public")
    from mnist_pipeline.report import plots

    plots.warm_up()
