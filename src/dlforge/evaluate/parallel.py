"""A parallel-coordinates figure: one vertical axis per hyperparameter and one for the
objective, one line per trial, coloured by its objective value (best in yellow, worst in
purple; trials without a value, e.g. pruned ones, dashed grey).

Numeric axes are scaled to their range (log10 when every value is positive and they span
more than two decades, as learning rates do); text and boolean axes space their values
evenly. Each axis is labelled with its lowest and highest value (or its categories).

Example:
    >>> rows = [{"params": {"optim.lr": 0.001, "model.arch": "mlp"}, "value": 0.8, "state": "complete"},
    ...         {"params": {"optim.lr": 0.1, "model.arch": "cnn"}, "value": 0.9, "state": "complete"}]
    >>> png = parallel_coordinates(rows, "val_accuracy")
    >>> import base64; base64.b64decode(png)[:4]
    b'\\x89PNG'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _axis(values: list[Any]) -> tuple[list[float | None], list[tuple[float, str]]]:
    """Positions in [0, 1] (None: missing) and (position, label) ticks for one axis."""
    present = [v for v in values if v is not None]
    numeric = present and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                              for v in present)
    if numeric:
        xs = [float(v) for v in present]
        log = min(xs) > 0 and max(xs) / min(xs) > 100
        f = (lambda v: math.log10(v)) if log else (lambda v: v)
        lo, hi = f(min(xs)), f(max(xs))
        span = (hi - lo) or 1.0
        pos = [None if v is None else (f(float(v)) - lo) / span if hi > lo else 0.5 for v in values]
        ticks = [(0.0 if hi > lo else 0.5, f"{min(xs):.3g}")] + ([(1.0, f"{max(xs):.3g}")] if hi > lo else [])
        return pos, ticks
    cats = sorted({str(v) for v in present})
    step = 1 / (len(cats) - 1) if len(cats) > 1 else 0.0
    where = {c: (i * step if len(cats) > 1 else 0.5) for i, c in enumerate(cats)}
    return [None if v is None else where[str(v)] for v in values], [(p, c) for c, p in where.items()]


def parallel_coordinates(trials: Sequence[Mapping[str, Any]], objective: str = "objective",
                         direction: str = "maximize", keys: Sequence[str] | None = None) -> str | None:
    """Base64 PNG of ``trials`` (rows of a study's ``trials.json``: ``params``, ``value``,
    ``state``) over ``keys`` (default: every parameter) and the objective; None when there
    is nothing to draw (no trial, or no parameter). ``direction`` says which end of the
    objective is best (drawn yellow, on top).
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    from dlforge.evaluate.plots import to_png

    if keys is None:
        keys = []
        for t in trials:
            keys += [k for k in (t.get("params") or {}) if k not in keys]
    if not trials or not keys:
        return None
    columns = [[(t.get("params") or {}).get(k) for t in trials] for k in keys]
    values = [t.get("value") for t in trials]
    columns.append(values)
    axes = [_axis(c) for c in columns]
    names = [*keys, objective]
    fig = Figure(figsize=(max(5.6, 1.6 * len(names)), 3.8))
    fig.subplots_adjust(left=0.08, right=0.92, bottom=0.2, top=0.88)
    ax = fig.add_subplot()
    scored = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    lo, hi = (min(scored), max(scored)) if scored else (0.0, 1.0)
    cmap = colormaps["viridis"]
    x = np.arange(len(names))
    def goodness(v: Any) -> float:  # 0 worst .. 1 best
        t = (float(v) - lo) / ((hi - lo) or 1.0)
        return t if direction == "maximize" else 1 - t

    finite = [isinstance(v, (int, float)) and math.isfinite(v) for v in values]
    order = sorted(range(len(trials)), key=lambda i: goodness(values[i]) if finite[i] else -1.0)  # best drawn last
    for i in order:
        ys = np.array([np.nan if a[0][i] is None else a[0][i] for a in axes], dtype=float)
        v = values[i]
        if finite[i]:
            ax.plot(x, ys, color=cmap(goodness(v)), linewidth=1.4, alpha=0.9)
        else:
            ax.plot(x, ys, color="#9aa4ad", linewidth=1.0, linestyle="--", alpha=0.8)
    for j, (_, ticks) in enumerate(axes):
        ax.axvline(j, color="#59636e", linewidth=0.8)
        for y, label in ticks:
            ax.text(j + 0.04, y, label, fontsize=7, va="center", ha="left", color="#1f2328")
    ax.set_xticks(x, names, rotation=15, fontsize=8)
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(names) - 0.6)
    ax.set_ylim(-0.06, 1.06)
    ax.set_title(f"trials: parameters and {objective}", fontsize=10)
    return to_png(fig)
