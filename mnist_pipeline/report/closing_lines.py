"""The lines `mnist-pipeline run` ends with (on stderr: stdout stays the JSON summary): where things went."""

from __future__ import annotations

import shlex

from mnist_pipeline.results import RunSummary, SweepSummary


def where_things_went(summary: RunSummary | SweepSummary) -> list[str]:
    """The run report to open, the ONNX file to deploy and audit, and where the W&B records went (online: the run
    group's URLs; offline or after a W&B failure: the folder and the `mnist-pipeline sync` to run)."""
    lines = []
    if summary.report:
        lines.append(f"report: {summary.report}")
    if summary.onnx_file:
        lines.append(f"ONNX model: {summary.onnx_file} (audit it: mnist-pipeline audit "
                     f"{shlex.quote(str(summary.onnx_file))})")
    if summary.wandb:
        lines.append(summary.wandb.line)  # it begins "W&B: "
    return lines
