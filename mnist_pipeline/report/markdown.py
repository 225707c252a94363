"""What the Prefect UI shows of a run: Markdown (with the report's plots inline) and table rows, as plain text/data.

Checked in a real browser against `prefect server start` (Prefect 3.9's UI): Markdown artifacts render images given
as `data:` URIs (PNG and SVG) and raw HTML tables; Markdown pipe tables and table artifacts never wrap a long cell
(it is cut, or scrolls sideways), so long values (W&B run folders, paths) go into an HTML table whose cells may break after / _ - (`<wbr>`:
the UI strips `style` attributes).
Browsers do not follow `file://` links from a web page, so the report's path is also printed as text to copy.

Pure: no Prefect import (the task that publishes these calls `prefect.artifacts`).
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Sequence
from pathlib import Path

from mnist_pipeline.report.page import RunReport, fmt
from mnist_pipeline.results import RunSummary
from prefect_wandb import render_svg

# The plots a person wants first, in order (names of page.draw_figures).
UI_FIGURES = ("loss curve", "confusion matrix", "misclassified digits", "per-class accuracy")


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def round4(v: float | None) -> float | None:
    """4 significant digits as a number (a table artifact sorts numbers): 0.09553699987918662 -> 0.09554."""
    if v is None or not math.isfinite(v) or v == 0:
        return v
    return round(v, 3 - math.floor(math.log10(abs(v))))


def _breakable(text: str) -> str:
    """Escaped text with a `<wbr>` after each / _ - so that a long path can wrap; Prefect's UI strips `style`
    attributes but keeps `<wbr>` (and copying the text copies no extra character)."""
    return re.sub(r"([/_-])", r"\1<wbr>", html.escape(text))


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A raw HTML table for Markdown: its cells wrap in Prefect's UI (pipe-table cells are cut). Text is escaped."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_breakable(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def per_class_rows(metrics: dict) -> list[dict]:
    """One row per class for `create_table_artifact`: accuracy (4 significant digits), test images, correct."""
    acc = metrics.get("per_class_accuracy") or []
    cm = metrics.get("confusion_matrix") or []
    rows = []
    for c, a in enumerate(acc):
        support = sum(cm[c]) if c < len(cm) else None
        rows.append({"class": str(c), "accuracy": None if a is None or math.isnan(a) else round4(a), "test images": support,
                     "correct": cm[c][c] if c < len(cm) else None})
    return rows


def run_markdown(r: RunReport, figs: dict[str, bytes | str], report_path: Path | str | None = None) -> str:
    """The run report in short, for a Markdown artifact: promotion, key figures, the plots, the lineage picture."""
    m, v, p = r.metrics, r.validation, r.promotion or {}
    lines = [f"# {r.title}", ""]
    if report_path:
        lines += [f"Full report (self-contained HTML, open it in a browser): `{report_path}`", ""]
    if p:
        lines += [(f"**Promotion: {p.get('decision')}**: {p.get('reason', '')} (this model's test accuracy "
                  f"{fmt(p.get('candidate_accuracy'))}, production's before {fmt(p.get('production_accuracy'))})"), ""]
    figures = [("test accuracy", m.get("test_accuracy")), ("test loss", m.get("test_loss")),
               ("ONNX max |torch − onnxruntime|", v.get("max_abs_diff")),
               ("ONNX argmax agreement", v.get("argmax_agreement")),
               ("ONNX latency p50 (ms, batch 1)", v.get("latency_ms_p50")),
               ("ONNX throughput (images/s)", v.get("ort_throughput_per_s"))]
    lines += [f"- **{k}**: {fmt(x)}" for k, x in figures if x is not None]
    if "passed" in v:
        lines.append(f"- **ONNX parity**: {'passed' if v['passed'] else 'FAILED'}")
    lines.append("")
    for name in UI_FIGURES:
        fig = figs.get(name)
        lines += [f"## {name.capitalize()}", ""]
        lines += [f"![{name}]({data_uri(fig)})" if isinstance(fig, bytes) else f"_{name}: {fig}_", ""]
    if r.lineage is not None:
        svg = render_svg(r.lineage)
        lines += ["## Lineage of this run", "", f"![lineage]({data_uri(svg.encode(), 'image/svg+xml')})", ""]
    return "\n".join(lines)


STAGE_COLUMNS = ("stage", "status", "output", "sha256", "inputs", "W&B run")


def lineage_markdown(summary: RunSummary, rows: Sequence[dict], lineage_db: str | Path) -> str:
    """The flow run's `mnist-lineage` artifact: status, decision, rounded figures, where the report is, and one
    row per stage run (promote and report included) in a table whose long cells wrap."""
    lines = [f"# MNIST lineage pipeline: {summary.status}", ""]
    if summary.reason:
        lines += [summary.reason, ""]
    p = summary.promotion
    if p:
        lines.append(f"- **promotion**: {p.decision} ({p.reason}); test accuracy {fmt(p.candidate_accuracy)}"
                     f", production's before {fmt(p.production_accuracy)}")
    for key, value in (("test_accuracy", summary.test_accuracy), ("onnx_max_abs_diff", summary.onnx_max_abs_diff),
                       ("onnx_argmax_agreement", summary.onnx_argmax_agreement),
                       ("onnx_latency_ms_p50", summary.onnx_latency_ms_p50)):
        if value is not None:
            lines.append(f"- **{key}**: {fmt(value)}")
    if summary.report:
        uri = Path(summary.report).as_uri()
        lines.append(f"- **run report**: [{Path(summary.report).name}]({uri}) `{summary.report}` (plots in the "
                     "`mnist-run-report` artifact; browsers do not open file links from a web page: copy the path)")
    if summary.onnx_file:
        lines.append(f"- **ONNX file** (the one to audit): `{summary.onnx_file}`")
    if summary.wandb:
        lines.append(f"- **W&B**: {summary.wandb['line'].removeprefix('W&B: ')}")
    lines += ["", html_table(STAGE_COLUMNS, [[r.get(c, "") for c in STAGE_COLUMNS] for r in rows]), "",
              f"Lineage store: `{lineage_db}`"]
    return "\n".join(lines) + "\n"
