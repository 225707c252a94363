"""The run report: one self-contained HTML page (inline PNG plots, inline SVG lineage; no script, no network).

`RunReport` holds plain data only (lists, dicts, uint8 arrays), gathered by the report stage from the lineage
store and the artifacts; `render_html` draws it and `write_report` writes it. No Prefect, no wandb.
"""

from __future__ import annotations

import base64
import html
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnist_pipeline.report import plots
from mnist_pipeline.report.picture import Graph, render_svg


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
    lineage: Graph | None = None
    artifacts: Sequence[dict] = ()  # {stage, artifact, type, sha256, path}


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

CSS = """body{font-family:system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:1em 1.5em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
img{max-width:100%;height:auto}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:3px 8px;font-size:14px;text-align:left;vertical-align:top;
overflow-wrap:anywhere}th{background:#f4f4f4}code{font-size:12px}
.ok{color:#26a269;font-weight:bold}.bad{color:#c01c28;font-weight:bold}.note{color:#666}
.grid{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}"""


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


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


def _figure(figs: dict[str, bytes | str], name: str) -> str:
    """One plot; a plot that cannot be drawn (no data) says why instead of failing the whole report."""
    fig = figs[name]
    if isinstance(fig, bytes):
        return _img(fig, name)
    return f'<p class="note">{html.escape(name)}: {html.escape(fig)}</p>'


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Cells are HTML already (escaped by the caller); an all-empty header is left out."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>{f'<tr>{head}</tr>' if any(header) else ''}{body}</table>"


def _promotion(p: dict | None) -> str:
    if not p:
        return '<p class="note">No promotion decision was recorded for this run.</p>'
    cls = "ok" if p.get("decision") == "promoted" else "bad"
    rows = [("decision", f'<span class="{cls}">{html.escape(str(p.get("decision")))}</span>'),
            ("reason", html.escape(str(p.get("reason", "")))),
            ("this model's test accuracy", fmt(p.get("candidate_accuracy"))),
            ("production's test accuracy before", fmt(p.get("production_accuracy")))]
    return _table(["", ""], rows)


def _validation(v: dict) -> str:
    if not v:
        return '<p class="note">No ONNX validation was recorded for this run.</p>'
    passed = v.get("passed")
    verdict = (f'<p class="{"ok" if passed else "bad"}">onnxruntime parity '
               f'{"passed" if passed else "FAILED"}</p>')
    rows = []
    for what, key, ref, rel in VALIDATION_ROWS:
        if key in v:
            bound = f"{rel} {fmt(v[ref])}" if ref and ref in v else ""
            rows.append((html.escape(what), fmt(v[key]), html.escape(bound)))
    return verdict + _table(["figure", "value", "bound / setting"], rows)


def render_html(r: RunReport, figs: dict[str, bytes | str] | None = None) -> str:
    m = r.metrics
    figs = draw_figures(r) if figs is None else figs
    parts = [(f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
             f"<title>{html.escape(r.title)}</title><style>{CSS}</style></head><body>"),
             f"<h1>{html.escape(r.title)}</h1>"]
    if r.facts:
        parts.append(_table(["", ""], [(html.escape(k), html.escape(v)) for k, v in r.facts]))
    parts.append("<h2>Promotion</h2>" + _promotion(r.promotion))
    parts.append("<h2>Training loss</h2>" + _figure(figs, "loss curve"))
    summary = [("test accuracy", fmt(m.get("test_accuracy"))), ("test loss", fmt(m.get("test_loss"))),
               ("test images", fmt(m.get("test_count")))]
    parts.append("<h2>Test metrics</h2>" + _table(["", ""], summary))
    parts.append('<div class="grid">')
    parts += [_figure(figs, "per-class accuracy"), _figure(figs, "confusion matrix"), "</div>"]
    shown = len(r.misclassified)
    total = r.misclassified_total if r.misclassified_total is not None else shown
    parts.append(f"<h2>Misclassified test digits ({shown} of {total} shown)</h2>")
    if shown:
        parts.append(_figure(figs, "misclassified digits"))
        parts.append('<p class="note">Test-split indices: '
                     + ", ".join(str(x.index) for x in r.misclassified) + "</p>")
    else:
        parts.append('<p class="note">None: every test image was classified correctly.</p>')
    parts.append("<h2>ONNX validation (onnxruntime vs torch)</h2>" + _validation(r.validation))
    if r.lineage is not None:
        parts.append('<h2>Lineage of this run</h2><div class="lineage">' + render_svg(r.lineage) + "</div>")
    if r.artifacts:
        rows = [(html.escape(a["stage"]), html.escape(a["artifact"]), html.escape(a["type"]),
                 f"<code>{html.escape(a['sha256'][:16])}</code>", f"<code>{html.escape(str(a['path']))}</code>")
                for a in r.artifacts]
        parts.append("<h2>Artifacts</h2>" + _table(["stage", "artifact", "type", "sha256", "path"], rows))
    parts.append("</body></html>\n")
    return "\n".join(parts)


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
