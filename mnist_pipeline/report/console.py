"""The lines `mnist-pipeline run` ends with (on stderr: stdout stays the JSON summary): where things went."""

from __future__ import annotations

import shlex


def where_things_went(summary: dict) -> list[str]:
    """The run report to open, the ONNX file to deploy and audit. (The line saying where the W&B records went,
    online URLs or the offline folder and `mnist-pipeline sync`, belongs here too: issue 9 adds it.)"""
    lines = []
    if summary.get("report"):
        lines.append(f"report: {summary['report']}")
    if summary.get("onnx_file"):
        lines.append(f"ONNX model: {summary['onnx_file']} (audit it: mnist-pipeline audit "
                     f"{shlex.quote(str(summary['onnx_file']))})")
    return lines
