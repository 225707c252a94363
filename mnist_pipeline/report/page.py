"""The run report: one self-contained HTML page (inline PNG plots, inline SVG lineage; no script, no network).

`RunReport` holds plain data only (lists, dicts, uint8 arrays), gathered by the report stage from the lineage
store and the artifacts; `render_html` draws it and `write_report` writes it. No Prefect, no wandb.
"""

from __future__ import annotations

import base64
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from markupsafe import Markup

from mnist_pipeline.report import plots
from prefect_wandb import LineageGraph, render_svg, render_template


def fmt(v: Any) -> str:
    """Figures for people: 4 significant digits (0.09554, 7.629e-06), integers and text as they are."""
    if isinstance(v, bool) or v is None:
        return {True: "yes", False: "no", None: "n/a"}[v]
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return "n/a" if math.isnan(v) else str(v)
        if abs(v) >= 1e4:  # 11,310 rather than 1.131e+04
            return f"{round(v, 3 - math.floor(math.log10(abs(v)))):,.0f}"
        return f"{v:.4g}"
    return str(v)


@dataclass(frozen=True)
class Misclassified:
    index: int  # in the test split
    prediction: int
    label: int
    image: Any  # uint8 [28, 28]


@dataclass(frozen=True)
class RunReport:
    title: str
    facts: Sequence[tuple[str, str]] = ()  # (what, value) shown at the top: model, dataset, flow run, ...
    loss_points: Sequence[tuple[int, int, float]] = ()  # (examples seen, epoch, loss), every logged point
    examples_per_epoch: int | None = None  # the training split's size: where each epoch starts on the loss curve
    metrics: dict = field(default_factory=dict)  # metrics.json: test_loss, test_accuracy, per_class..., confusion
    misclassified: Sequence[Misclassified] = ()
    misclassified_total: int | None = None  # all misclassified test images (the grid shows the first ones)
    validation: dict = field(default_factory=dict)  # validation.json of the onnxruntime check
    promotion: dict | None = None  # decision, reason, candidate_accuracy, production_accuracy
    lineage: LineageGraph | None = None
    artifacts: Sequence[dict] = ()  # {stage, artifact, type, sha256, path}
    training_note: str | None = None  # how the training went when a person should know (resumed from a checkpoint)


VALIDATION_ROWS = [
    ("max |torch − onnxruntime| logit", "max_abs_diff", "tolerance", "≤"),
    ("argmax agreement", "argmax_agreement", "min_agreement", "≥"),
    ("accuracy (torch)", "torch_accuracy", None, ""),
    ("accuracy (onnxruntime)", "ort_accuracy", None, ""),
    ("latency p50, batch 1 (ms)", "latency_ms_p50", None, ""),
    ("latency p99, batch 1 (ms)", "latency_ms_p99", None, ""),
    ("throughput, onnxruntime (images/s)", "ort_throughput_per_s", "throughput_batch", "batch"),
    ("throughput, torch (images/s)", "torch_throughput_per_s", "throughput_batch", "batch"),
    ("test images", "count", None, ""),
]

def _figure(figs: dict[str, bytes | str], name: str) -> dict[str, Any]:
    """One plot; a plot that cannot be drawn (no data) says why instead of failing the whole report."""
    fig = figs[name]
    if isinstance(fig, bytes):
        # Markup on purpose: base64's alphabet (A-Z a-z 0-9 + / =) holds no character HTML gives a meaning to.
        return {"name": name, "src": Markup(f"data:image/png;base64,{base64.b64encode(fig).decode()}"), "note": None}
    return {"name": name, "src": None, "note": fig}


def resumed_from_words(training: Any, writer: Any = None) -> str:
    """How a training that picked up a checkpoint says so: 'training resumed from the checkpoint written by run X
    (flow run F, that run failed: ...) at epoch N, batch B (E examples seen)'. `training`: a `TrainingResult`;
    `writer`: the lineage store's record of the run that wrote the checkpoint (None: not on record)."""
    at = training.resumed_from_checkpoint or {}
    who = f"run {training.checkpoint_written_by}" if training.checkpoint_written_by else "an earlier run"
    if writer is not None:
        how = f"that run {writer.status}" + (f": {writer.error}" if writer.error else "")
        who += f" (flow run {writer.flow_run_id}, {how})" if writer.flow_run_id else f" ({how})"
    return (f"training resumed from the checkpoint written by {who} at epoch {at.get('epoch')}, batch "
            f"{at.get('batch')} ({at.get('examples_seen')} examples seen)")


def _per_epoch(r: RunReport) -> int:
    if r.examples_per_epoch is None:
        raise ValueError("loss curve: the training run recorded no epoch length")
    return r.examples_per_epoch


def draw_figures(r: RunReport) -> dict[str, bytes | str]:
    """Every plot of the report, by name (FIGURES): PNG bytes, or why it could not be drawn (no data).

    Drawn once and shared: the HTML page and the Prefect markdown artifact show the same images."""
    m = r.metrics
    draw: dict[str, Callable[[], bytes]] = {
        "loss curve": lambda: plots.loss_curve(r.loss_points, _per_epoch(r)),
        "per-class accuracy": lambda: plots.per_class_accuracy(m["per_class_accuracy"], m.get("test_accuracy")),
        "confusion matrix": lambda: plots.confusion_matrix(m["confusion_matrix"]),
        "misclassified digits": lambda: plots.misclassified_grid(
            [x.image for x in r.misclassified], [x.prediction for x in r.misclassified],
            [x.label for x in r.misclassified]),
    }
    out: dict[str, bytes | str] = {}
    for name, fn in draw.items():
        try:
            out[name] = fn()
        except (ValueError, KeyError) as e:
            out[name] = f"not drawn ({f'no {e.args[0]} in the metrics' if isinstance(e, KeyError) else e})"
    return out


def _promotion(p: dict | None) -> dict[str, Any] | None:
    if not p:
        return None
    return {"promoted": p.get("decision") == "promoted", "decision": str(p.get("decision")),
            "reason": str(p.get("reason", "")), "candidate": fmt(p.get("candidate_accuracy")),
            "production": fmt(p.get("production_accuracy"))}


def _validation(v: dict) -> dict[str, Any] | None:
    if not v:
        return None
    rows = [[what, fmt(v[key]), f"{rel} {fmt(v[ref])}" if ref and ref in v else ""]
            for what, key, ref, rel in VALIDATION_ROWS if key in v]
    return {"passed": bool(v.get("passed")), "rows": rows}


def page_context(r: RunReport, figs: dict[str, bytes | str]) -> dict[str, Any]:
    """What report.html.j2 lays out: text and figures (formatted by `fmt`), the plots, the lineage picture."""
    m = r.metrics
    return {
        "title": r.title,
        "facts": [[k, v] for k, v in r.facts],
        "training_note": r.training_note,
        "promotion": _promotion(r.promotion),
        "figures": {name: _figure(figs, name) for name in figs},
        "summary": [["test accuracy", fmt(m.get("test_accuracy"))], ["test loss", fmt(m.get("test_loss"))],
                    ["test images", fmt(m.get("test_count"))]],
        "misclassified": [x.index for x in r.misclassified],
        "misclassified_total": len(r.misclassified) if r.misclassified_total is None else r.misclassified_total,
        "validation": _validation(r.validation),
        # Markup on purpose: render_svg draws the SVG itself and escapes every text in it (titles, labels, notes).
        "lineage": None if r.lineage is None else Markup(render_svg(r.lineage)),
        "artifacts": [[a["stage"], a["artifact"], a["type"], a["sha256"][:16], str(a["path"])] for a in r.artifacts],
    }


def render_html(r: RunReport, figs: dict[str, bytes | str] | None = None) -> str:
    return render_template("mnist_pipeline.report", "report.html.j2",
                             **page_context(r, draw_figures(r) if figs is None else figs))


def write_report(r: RunReport, path: Path, figs: dict[str, bytes | str] | None = None) -> tuple[Path, float]:
    """Write the page (through a temporary name, so a reader never sees half of it); (path, seconds to render)."""
    t0 = time.perf_counter()
    page = render_html(r, figs)
    seconds = time.perf_counter() - t0
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path, seconds
