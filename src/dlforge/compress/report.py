"""The compression report: one self-contained HTML page comparing a model's variants.

One row per (variant, runtime): parameters, file size, share of zero weights, latency at
batch 1 and 32 (p50/p99, each thread count measured), throughput, and the held-out
metric with its change from the parent. A figure plots file size and batch-1 latency
against the metric, so the trade-off is visible at a glance. Like the run report, the page
inlines its CSS and figure and fetches nothing.

Example:
    >>> rows = [{"name": "parent", "method": "trained", "runtime": "torch", "parameters": 1000,
    ...          "file_bytes": 4096, "sparsity": 0.0, "metric": 0.95, "parent": True,
    ...          "timings": [{"batch": 1, "threads": 1, "p50_ms": 0.2, "p99_ms": 0.3, "throughput": 5000.0}]}]
    >>> html = render_compression_report(title="digits", rows=rows, metric="accuracy")
    >>> "<h1>digits</h1>" in html and "0.95" in html
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from dlforge.evaluate.report import format_number
from dlforge.train.state_io import atomic_write

LOWER_IS_BETTER = {"mse", "rmse", "mae", "loss", "hd95"}


@lru_cache(maxsize=1)
def _environment() -> Environment:
    return Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=True,
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _size(n: float | None) -> str:
    if n is None:
        return "n/a"
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            break
    return f"{n:.1f} {unit}"


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[tuple[int, int]]:
    """Every (threads, batch) measured in any row, in order."""
    seen: list[tuple[int, int]] = []
    for row in rows:
        for t in row.get("timings", []):
            key = (t["threads"], t["batch"])
            if key not in seen:
                seen.append(key)
    return sorted(seen)


def size_latency_figure(rows: Sequence[Mapping[str, Any]], metric: str) -> str | None:
    """Two panels: file size and batch-1 p50 latency (1 thread, else the first measured)
    against the metric, one labelled point per row; None when no row has a metric."""
    points = [r for r in rows if r.get("metric") is not None and math.isfinite(r["metric"])]
    if not points:
        return None
    from matplotlib.figure import Figure

    from dlforge.evaluate.plots import to_png

    fig = Figure(figsize=(9.0, 3.6))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.15, top=0.9, wspace=0.28)
    size_ax, time_ax = fig.subplots(1, 2)
    for row in points:
        label = f"{row['name']} ({row['runtime']})"
        single = [t for t in row.get("timings", []) if t["batch"] == 1]
        single.sort(key=lambda t: t["threads"])
        size_ax.scatter(row["file_bytes"] / 1024, row["metric"], s=28)
        size_ax.annotate(label, (row["file_bytes"] / 1024, row["metric"]), fontsize=7, xytext=(3, 3),
                         textcoords="offset points")
        if single:
            time_ax.scatter(single[0]["p50_ms"], row["metric"], s=28)
            time_ax.annotate(label, (single[0]["p50_ms"], row["metric"]), fontsize=7, xytext=(3, 3),
                             textcoords="offset points")
    size_ax.set(xlabel="file size (KiB)", ylabel=metric, title="size")
    time_ax.set(xlabel="latency at batch 1, p50 (ms)", ylabel=metric, title="latency")
    for ax in (size_ax, time_ax):
        ax.grid(alpha=0.3)
    return to_png(fig)


def render_compression_report(*, title: str, rows: Sequence[Mapping[str, Any]], metric: str,
                              summary: Sequence[tuple[str, str]] = ()) -> str:
    """The report as one HTML string, from plain rows (see the module example)."""
    columns = _columns(rows)
    parent = next((r for r in rows if r.get("parent")), None)
    base = parent.get("metric") if parent else None
    lower = metric in LOWER_IS_BETTER
    cells = []
    for row in rows:
        timings = {(t["threads"], t["batch"]): t for t in row.get("timings", [])}
        shown = [f"{format_number(timings[c]['p50_ms'])} / {format_number(timings[c]['p99_ms'])}" if c in timings else "n/a"
                 for c in columns]
        shown += [f"{timings[c]['throughput']:,.0f}" if c in timings else "n/a" for c in columns if c[1] > 1]
        change = None if base is None or row.get("metric") is None else row["metric"] - base
        better = change is not None and (change < 0 if lower else change > 0)
        worse = change is not None and (change > 0 if lower else change < 0)
        cells.append({
            "name": row["name"], "method": row.get("method", ""), "runtime": row.get("runtime", "torch"),
            "parameters": f"{row['parameters']:,}" if row.get("parameters") is not None else "n/a",
            "file": _size(row.get("file_bytes")), "sparsity": format_number(row.get("sparsity")),
            "timings": shown, "metric": format_number(row.get("metric")),
            "change": "" if row.get("parent") or change is None else f"{change:+.4f}",
            "change_class": "good" if better else "bad" if worse and abs(change) > 0.005 else "",
            "parent": bool(row.get("parent")),
        })
    headers = [f"b{b}·{t}t p50/p99 ms" for t, b in columns] + [f"b{b}·{t}t samples/s" for t, b in columns if b > 1]
    note = ("Latency: wall time of whole forward calls, p50 / p99 over repeated calls after warm-up, at the "
            "thread count shown (b = batch, t = threads). Zero weights are unstructured sparsity: the tensors "
            "keep their shape, so dense kernels do the same work and it is not a speed-up. The change is "
            f"against the parent on the same held-out data ({'lower' if lower else 'higher'} is better).")
    caption = ("Each point is one variant in one runtime. Left: file size on disk (safetensors, or model.onnx "
               "for ONNX Runtime). Right: latency at batch 1, one thread.")
    return _environment().get_template("compress.html.j2").render(
        title=title, summary=list(summary), rows=cells, timing_columns=headers, metric=metric, note=note,
        figure=size_latency_figure(rows, metric), caption=caption)


def write_compression_report(path: str | Path, **kwargs: Any) -> Path:
    """Render :func:`render_compression_report` to ``path`` (written atomically)."""
    path = Path(path)
    atomic_write(path, render_compression_report(**kwargs).encode("utf-8"))
    return path


__all__ = ["render_compression_report", "size_latency_figure", "write_compression_report"]
