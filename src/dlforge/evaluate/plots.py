"""The report's figures: one function per figure, each returning a base64 PNG string.

Figures are built with :class:`matplotlib.figure.Figure` directly, never through
``pyplot``: nothing is registered in pyplot's global figure list, so nothing leaks when a
report is rendered in a loop or a server thread, and no GUI backend is ever touched (PNG
output goes through Agg). Sizes and ``DPI`` are modest so a whole report stays well under
2 MB. Margins are fixed rather than computed by a layout engine: constrained layout
doubled the drawing time, and every ``train_run`` renders a report. A function returns
``None`` when its input holds nothing to draw.

Example:
    >>> png = training_curves([{"type": "epoch", "epoch": 0, "train_loss": 1.0},
    ...                        {"type": "epoch", "epoch": 1, "train_loss": 0.5}])
    >>> import base64; base64.b64decode(png)[:4]
    b'\\x89PNG'
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from dlforge.train.health import is_weight_layer_name

DPI = 90
_SQUARE = (3.6, 3.4)  # three side by side fit the report's width
_SQUARE_MARGINS = {"left": 0.17, "right": 0.96, "bottom": 0.14, "top": 0.91}


def _new_figure(size: tuple[float, float], **margins: float) -> Figure:
    fig = Figure(figsize=size)
    fig.subplots_adjust(**(margins or _SQUARE_MARGINS))
    return fig


def to_png(fig: Figure) -> str:
    """Encode ``fig`` as a base64 PNG string and release it."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=DPI)
    finally:
        fig.clear()  # drop the artists now: large scatter plots hold every point
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _finite(values: Sequence[Any]) -> np.ndarray:
    """Floats with None mapped to NaN, so matplotlib leaves a gap instead of failing."""
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def _epochs(history: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in history if r.get("type") == "epoch"]


def training_curves(history: Sequence[Mapping[str, Any]], best_epoch: int | None = None) -> str | None:
    """Train/val loss per epoch, and train/val accuracy beside it when logged.

    Epochs are drawn 1-based (``record["epoch"] + 1``), as the progress bar prints them;
    ``best_epoch`` is the 0-based index ``FitResult.best_epoch`` holds and gets a
    vertical dashed line.
    """
    records = _epochs(history)
    if not records:
        return None
    x = [r["epoch"] + 1 for r in records]
    panels = [("loss", "loss")]
    if any(r.get("train_accuracy") is not None or r.get("val_accuracy") is not None for r in records):
        panels.append(("accuracy", "accuracy"))
    fig = _new_figure((6.0 if len(panels) == 1 else 10.5, 3.5), left=0.08 if len(panels) == 2 else 0.12,
                      right=0.98, bottom=0.14, top=0.91, wspace=0.22)
    for i, (metric, label) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for split, style in (("train", "-"), ("val", "--")):
            key = f"{split}_{metric}"
            if any(r.get(key) is not None for r in records):
                ax.plot(x, _finite([r.get(key) for r in records]), style, marker="o", markersize=3, label=split)
        if best_epoch is not None:
            ax.axvline(best_epoch + 1, color="tab:red", linestyle=":", linewidth=1.5, label=f"best epoch ({best_epoch + 1})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return to_png(fig)


def gradient_norms(history: Sequence[Mapping[str, Any]]) -> str | None:
    """Per-layer gradient norm over logged steps, log y axis, one line per weight tensor.

    Reads the ``grad_norm/<param>`` keys :class:`~dlforge.train.GradientMonitor` adds to
    step records. Biases and the total are left out: weight norms are what tell a
    vanishing or exploding layer apart. Key order is the model's registration order
    (input to output for dlforge models), coloured from dark (input) to light (output).
    """
    steps = [r for r in history if r.get("type") == "step"]
    names = weight_grad_names(steps)
    if not names:
        return None
    legend = len(names) <= _MAX_LEGEND
    # Room on the right for the legend (names) or a colour bar (many layers, numbered).
    fig = _new_figure((9.0, 4.0), left=0.11, right=0.72 if legend else 0.9, bottom=0.13, top=0.92)
    ax = fig.add_subplot()
    colors = _colormap(len(names))
    x = [r["step"] for r in steps]
    for name, color in zip(names, colors):
        y = _finite([r.get(f"grad_norm/{name}") for r in steps])
        y[~np.isfinite(y) | (y <= 0)] = np.nan  # zeros and infs cannot sit on a log axis
        ax.plot(x, y, color=color, linewidth=1.2, label=name)
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel("gradient L2 norm")
    ax.set_title("per-layer gradient norm (input → output)")
    ax.grid(alpha=0.3, which="both")
    if legend:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    else:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        mappable = ScalarMappable(Normalize(0, len(names) - 1), _CMAP_CUT)
        bar = fig.colorbar(mappable, ax=ax, pad=0.02)
        bar.set_label(f"layer index (0 = {names[0]}, {len(names) - 1} = {names[-1]})", fontsize=8)
    return to_png(fig)


def weight_grad_names(history: Sequence[Mapping[str, Any]]) -> list[str]:
    """Parameter names with a ``grad_norm/`` key in any step record: weight matrices and
    kernels only (the diagnosis's rule, :func:`dlforge.train.health.is_weight_layer_name`),
    in first-seen (registration) order.

    Example:
        >>> weight_grad_names([{"type": "step", "grad_norm/fc.weight": 1.0, "grad_norm/fc.bias": 0.1,
        ...                     "grad_norm/total": 1.0}])
        ['fc.weight']
    """
    names: dict[str, None] = {}  # an ordered set
    for record in history:
        if record.get("type") != "step":
            continue
        for key in record:
            if key.startswith("grad_norm/"):
                name = key[len("grad_norm/"):]
                if name != "total" and is_weight_layer_name(name):
                    names.setdefault(name)
    return list(names)


_MAX_LEGEND = 10  # more layers than this get a colour bar instead of a legend


def _viridis_cut():
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    # Stop short of viridis' pale yellow end, which vanishes on a white background.
    return ListedColormap(colormaps["viridis"](np.linspace(0.0, 0.85, 256)))


_CMAP_CUT = _viridis_cut()


def _colormap(n: int) -> list[tuple[float, ...]]:
    return [_CMAP_CUT(v) for v in np.linspace(0.0, 1.0, n)]


def confusion_heatmap(confusion: Sequence[Sequence[int]], class_names: Sequence[str] | None = None) -> str | None:
    """Confusion matrix (rows: true class, columns: predicted) with the count in each cell."""
    matrix = np.asarray(confusion, dtype=float)
    if matrix.size == 0:
        return None
    k = matrix.shape[0]
    labels = list(class_names) if class_names and len(class_names) == k else [str(i) for i in range(k)]
    # No colour bar: every cell prints its count. Margins grow with the longest class name.
    side = min(6.4, 2.5 + 0.36 * k)
    rotate = k > 4 and max(len(s) for s in labels) > 2  # digits' "0".."9" fit upright
    label_in = 0.075 * max(len(s) for s in labels)  # inches taken by the longest tick label
    left = (0.45 + label_in) / side
    bottom = (0.45 + (label_in * 0.75 if rotate else 0.2)) / side
    fig = _new_figure((side, side), left=min(left, 0.45), right=0.97, bottom=min(bottom, 0.45), top=0.92)
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues", aspect="auto")
    threshold = matrix.max() / 2 if matrix.max() > 0 else 1.0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", fontsize=9 if k <= 10 else 7,
                    color="white" if matrix[i, j] > threshold else "black")
    ax.set_xticks(range(k), labels, rotation=45 if rotate else 0, ha="right" if rotate else "center")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix")
    return to_png(fig)


def _fmt_score(value: Any) -> str:
    return "n/a" if value is None or not math.isfinite(float(value)) else f"{float(value):.3f}"


def roc_curves(roc: Mapping[str, Mapping[str, Any]]) -> str | None:
    """One ROC curve per class (``{"fpr", "tpr", "auc"}``), AUC in the legend, chance diagonal."""
    if not roc:
        return None
    fig = _new_figure(_SQUARE)
    ax = fig.add_subplot()
    colors = _colormap(len(roc)) if len(roc) > 10 else [f"C{i}" for i in range(len(roc))]
    for (name, curve), color in zip(roc.items(), colors):
        ax.plot(_finite(curve["fpr"]), _finite(curve["tpr"]), color=color, label=f"{name} (AUC {_fmt_score(curve.get('auc'))})")
    ax.plot([0, 1], [0, 1], color="gray", linestyle=":", linewidth=1)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="false positive rate", ylabel="true positive rate", title="ROC curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return to_png(fig)


def pr_curves(pr: Mapping[str, Mapping[str, Any]]) -> str | None:
    """One precision-recall curve per class (``{"precision", "recall", "ap"}``), AP in the legend."""
    if not pr:
        return None
    fig = _new_figure(_SQUARE)
    ax = fig.add_subplot()
    colors = _colormap(len(pr)) if len(pr) > 10 else [f"C{i}" for i in range(len(pr))]
    for (name, curve), color in zip(pr.items(), colors):
        # step plot: precision-recall curves are piecewise constant, interpolating overstates them
        ax.step(_finite(curve["recall"]), _finite(curve["precision"]), where="post", color=color,
                label=f"{name} (AP {_fmt_score(curve.get('ap'))})")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title="precision-recall curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    return to_png(fig)


def predicted_vs_true(y_true: Sequence[float], y_pred: Sequence[float]) -> str | None:
    """Scatter of predictions against targets with the y = x line a perfect model sits on."""
    t, p = _finite(y_true).ravel(), _finite(y_pred).ravel()
    if t.size == 0:
        return None
    fig = _new_figure(_SQUARE)
    ax = fig.add_subplot()
    ax.scatter(t, p, s=10, alpha=0.6, edgecolors="none")
    ok = np.isfinite(t) & np.isfinite(p)
    lo, hi = (float(min(t[ok].min(), p[ok].min())), float(max(t[ok].max(), p[ok].max()))) if ok.any() else (0.0, 1.0)
    ax.plot([lo, hi], [lo, hi], color="tab:red", linestyle="--", linewidth=1, label="y = x")
    ax.set(xlabel="true", ylabel="predicted", title="predicted vs true")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return to_png(fig)


def residual_histogram(y_true: Sequence[float], y_pred: Sequence[float]) -> str | None:
    """Histogram of residuals (predicted - true), with zero marked."""
    residuals = _finite(y_pred).ravel() - _finite(y_true).ravel()
    residuals = residuals[np.isfinite(residuals)]
    if residuals.size == 0:
        return None
    fig = _new_figure(_SQUARE)
    ax = fig.add_subplot()
    ax.hist(residuals, bins=min(40, max(5, residuals.size // 5)), color="tab:blue", alpha=0.8)
    ax.axvline(0.0, color="tab:red", linestyle="--", linewidth=1)
    ax.set(xlabel="residual (predicted − true)", ylabel="count", title="residuals")
    ax.grid(alpha=0.3)
    return to_png(fig)


def forecast_vs_actual(
    index: Sequence[str], actual: Sequence[float], predicted: Sequence[float],
    seasonal_naive: Sequence[float] | None = None, unit: str = "",
) -> str | None:
    """The actual series, the model's forecast and the seasonal naive forecast over the
    evaluated span, with the series' own labels (years, months) on the x axis.

    Example:
        >>> png = forecast_vs_actual(["1990", "1991", "1992"], [5.0, 7.0, 6.0], [5.5, 6.5, 6.2],
        ...                          [4.0, 8.0, 5.0], unit="ppm")
        >>> base64.b64decode(png)[:4]
        b'\\x89PNG'
    """
    y = _finite(actual)
    if y.size == 0:
        return None
    x = np.arange(y.size)
    fig = _new_figure((9.0, 3.6), left=0.09, right=0.98, bottom=0.17, top=0.91)
    ax = fig.add_subplot()
    ax.plot(x, y, color="black", linewidth=1.6, marker="o", markersize=2.5, label="actual")
    ax.plot(x, _finite(predicted), color="tab:blue", linewidth=1.4, label="model")
    if seasonal_naive is not None and len(seasonal_naive):
        ax.plot(x, _finite(seasonal_naive), color="tab:orange", linestyle="--", linewidth=1.2, label="seasonal naive")
    # Label about eight evenly spaced points: every label of a long span would overlap.
    ticks = np.unique(np.linspace(0, y.size - 1, min(8, y.size)).round().astype(int))
    labels = list(index) if len(index) == y.size else [str(i) for i in x]
    ax.set_xticks(ticks, [labels[i] for i in ticks])
    ax.set(ylabel=unit or "value", title="forecast vs actual (one step ahead)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return to_png(fig)
