"""The run report's figures, drawn by matplotlib as PNG bytes.

matplotlib is imported inside each function, never at module import: a run that does not draw pays nothing, and
the audit (which imports the lineage picture beside this) stays light. Figures are `matplotlib.figure.Figure`
objects with the Agg canvas, not pyplot: no global state, no GUI backend, safe in a worker thread.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

DPI = 100


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)  # the constrained layout already fits: no second "tight" pass
    return buf.getvalue()


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def warm_up() -> None:
    """Import matplotlib and load its fonts by drawing one tiny figure: about half the first report's drawing time,
    which the CLI pays while it waits for the Prefect server anyway."""
    fig = _figure(1.5, 1.2)  # big enough for its constrained layout (smaller: a warning)
    fig.add_subplot().set_title("0")
    _png(fig)


def loss_curve(points: Sequence[tuple[int, int, float]], examples_per_epoch: int) -> bytes:
    """Every logged (examples seen, epoch, loss) point, as W&B has them; a dotted line where each epoch starts
    (at epoch * examples_per_epoch examples seen, not at the epoch's first logged point)."""
    if not points:
        raise ValueError("loss curve: no logged loss points")
    if examples_per_epoch <= 0:
        raise ValueError(f"loss curve: examples per epoch must be positive, got {examples_per_epoch}")
    fig = _figure(7.5, 3.4)
    ax = fig.add_subplot()
    xs, epochs, ys = zip(*points, strict=True)
    ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.4, color="#1a5fb4", label="training loss")
    for e in range(max(epochs) + 1):
        x = e * examples_per_epoch
        ax.axvline(x, color="#999999", linestyle=":", linewidth=1)
        ax.annotate(f"epoch {e}", (x, 1), xycoords=("data", "axes fraction"), xytext=(3, -12),
                    textcoords="offset points", fontsize=8, color="#555555")
    ax.set_xlabel("examples seen")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title("Training loss (every logged batch)")
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    return _png(fig)


def per_class_accuracy(accuracy: Sequence[float | None], overall: float | None = None) -> bytes:
    fig = _figure(7.5, 3.0)
    ax = fig.add_subplot()
    classes = [str(c) for c in range(len(accuracy))]
    absent = [a is None or math.isnan(a) for a in accuracy]  # a class absent from the test split: None (or NaN)
    vals = [0.0 if no else a for a, no in zip(accuracy, absent, strict=True)]  # drawn as 0
    bars = ax.bar(classes, vals, color="#62a0ea", edgecolor="#1a5fb4")
    ax.bar_label(bars, labels=["n/a" if no else f"{a:.3f}" for a, no in zip(accuracy, absent, strict=True)],
                 fontsize=8, padding=2)
    if overall is not None:
        ax.axhline(overall, color="#c01c28", linestyle="--", linewidth=1, label=f"overall {overall:.4f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_ylim(0, 1.12)
    ax.set_xlabel("class")
    ax.set_ylabel("accuracy")
    ax.set_title("Per-class test accuracy")
    return _png(fig)


def confusion_matrix(matrix: Sequence[Sequence[int]]) -> bytes:
    """Rows: true class, columns: predicted class; every cell's count written on it."""
    import numpy as np

    cm = np.asarray(matrix, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {cm.shape}")
    n = cm.shape[0]
    fig = _figure(6.2, 5.4)
    ax = fig.add_subplot()
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, shrink=0.85, label="test images")
    top = cm.max() or 1
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if cm[i, j] > top / 2 else "#222222")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("Confusion matrix (test split)")
    return _png(fig)


def misclassified_grid(images: Sequence, predictions: Sequence[int], labels: Sequence[int],
                       columns: int = 8) -> bytes:
    """The misclassified test digits (uint8 [28, 28] each), titled "pred X / label Y".

    One mosaic image in one axes (a subplot per digit costs a layout pass each: 4x slower)."""
    import numpy as np

    n = len(images)
    if not n == len(predictions) == len(labels):
        raise ValueError("misclassified grid: images, predictions and labels differ in length")
    if n == 0:
        raise ValueError("misclassified grid: no images")
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    cell_w, cell_h, top = 36, 46, 14  # pixels of the mosaic per digit: 28x28 plus a margin and a title band
    mosaic = np.zeros((rows * cell_h, cols * cell_w), dtype=np.uint8)
    fig = _figure(1.15 * cols, 1.5 * rows)
    ax = fig.add_subplot()
    for k, (img, p, y) in enumerate(zip(images, predictions, labels, strict=True)):
        r, c = divmod(k, cols)
        y0, x0 = r * cell_h + top, c * cell_w + 4
        mosaic[y0 : y0 + 28, x0 : x0 + 28] = np.asarray(img, dtype=np.uint8)
        ax.text(x0 + 14, y0 - 3, f"pred {p} / label {y}", ha="center", va="bottom", fontsize=7, color="#c01c28")
    ax.imshow(mosaic, cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
    ax.set_axis_off()
    return _png(fig)
