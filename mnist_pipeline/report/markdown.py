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
from dataclasses import dataclass, field
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
        lines.append(f"- **W&B**: {summary.wandb.line.removeprefix('W&B: ')}")
    lines += ["", html_table(STAGE_COLUMNS, [[r.get(c, "") for c in STAGE_COLUMNS] for r in rows]), "",
              f"Lineage store: `{lineage_db}`"]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Decision:
    """One gate decision, as the `production-model` artifact names the run that made it."""

    model: str
    decision: str  # promoted | candidate
    reason: str
    flow_run_id: str | None
    at: str


@dataclass(frozen=True)
class ProductionModel:
    """What the `production-model` artifact says (`flows.flow_artifact.production_facts` gathers it)."""

    model: str | None  # None: no production model
    lineage_db: str
    decision: Decision
    digest: str | None = None
    path: str | None = None
    since: str | None = None
    made_production_by: str | None = None  # "the promotion gate", "rollback requested by ..."
    made_production_in: str | None = None  # the flow run of that decision
    why: str | None = None
    trained_by_run: str | None = None
    trained_in_flow_run: str | None = None
    metrics: str | None = None  # the metrics artifact the figures come from
    test_set: str | None = None
    figures: dict = field(default_factory=dict)
    report: str | None = None
    wandb_run: str | None = None
    wandb_artifact: str | None = None


def production_markdown(p: ProductionModel) -> str:
    """The `production-model` artifact: which model is production, since when, made by which run, its figures, its
    run report and W&B pages; then the decision of the run that wrote this version (its history in the Prefect UI
    is the promotion history)."""
    d = p.decision
    verdict = "promoted it to production" if d.decision == "promoted" else "kept it candidate"
    who = f"flow run `{d.flow_run_id}`" if d.flow_run_id else "a run outside Prefect"
    this = f"**This version**: {who} gated {d.model} at {d.at} and {verdict}: {d.reason}"
    if p.model is None:
        return "\n".join(["# Production model: none", "", "No model is in production in this lineage store.", "",
                          this, "", f"Lineage store: `{p.lineage_db}`"]) + "\n"
    rows = [("production since", p.since or "n/a"),
            ("made production by", " ".join(x for x in (p.made_production_by,
                                                          f"in flow run {p.made_production_in}" if p.made_production_in
                                                          else "") if x) or "n/a"),
            ("why", p.why or "n/a"),
            ("trained by", f"run {p.trained_by_run}" + (f" in flow run {p.trained_in_flow_run}"
                                                       if p.trained_in_flow_run else "")),
            ("sha256", p.digest or ""), ("model files", p.path or "")]
    rows += [(k.replace("_", " ") + (f" on {p.test_set}" if p.test_set else ""), fmt(v)) for k, v in p.figures.items()]
    if p.metrics:
        rows.append(("metrics", p.metrics))
    rows.append(("run report", p.report or "n/a (no report of this model on record)"))
    if p.wandb_run:
        rows.append(("W&B run", p.wandb_run))
    if p.wandb_artifact:
        rows.append(("W&B artifact", p.wandb_artifact))
    lines = [f"# Production model: {p.model}", "",
             f"**{p.model}** is in production since {p.since or 'n/a'}.", "",
             html_table(("", p.model), rows), ""]
    if p.report:
        lines += [f"Run report: [{Path(p.report).name}]({Path(p.report).as_uri()}) `{p.report}` (browsers do not "
                  "open file links from a web page: copy the path)", ""]
    if p.wandb_run:
        lines += [f"W&B: [run]({p.wandb_run})" + (f", [artifact]({p.wandb_artifact})" if p.wandb_artifact else ""), ""]
    lines += [this, "", f"Lineage store: `{p.lineage_db}`"]
    return "\n".join(lines) + "\n"
