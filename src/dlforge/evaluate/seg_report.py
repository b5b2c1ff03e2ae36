"""The segmentation part of the HTML report: overlays and the metric, baseline,
post-processing and per-fold tables.

:func:`overlay_png` draws one image with its truth and prediction; :func:`segmentation_section`
turns a segmentation evaluation dict into an HTML ``<section>`` that uses the report
template's CSS classes (``note``, ``figures``, ``num``, ``summary``). Every text from the
dict is escaped.

Example:
    >>> html = segmentation_section({"metrics": {"dice": 0.91}})
    >>> "0.91" in html and html.startswith('<section id="segmentation">')
    True
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from dlforge.errors import DataError

METRICS = ("dice", "iou", "hd95", "ap50", "dsb")
PER_CLASS = ("dice", "iou", "hd95")
# RGB colours: contours opaque, error tints blended in at ALPHA.
TRUTH, PRED, BOTH = (0, 200, 0), (255, 0, 255), (255, 255, 255)
FALSE_POS, FALSE_NEG, ALPHA = (255, 0, 0), (0, 90, 255), 0.45


def _boundary(labels: np.ndarray) -> np.ndarray:
    """Foreground pixels with a 4-neighbour of another label (the border counts as background)."""
    padded = np.pad(labels, 1)
    centre = padded[1:-1, 1:-1]
    edge = np.zeros(labels.shape, bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        edge |= padded[dy:dy + labels.shape[0], dx:dx + labels.shape[1]] != centre
    return edge & (labels > 0)


def _normalise(channels: np.ndarray) -> np.ndarray:
    """(C, H, W) any range -> (H, W, 3) uint8, each channel clipped to its 1st..99th percentile."""
    rgb = channels if channels.shape[0] == 3 else channels.mean(axis=0, keepdims=True)
    lo, hi = np.percentile(rgb, [1, 99], axis=(1, 2), keepdims=True)
    scaled = np.clip((rgb - lo) / np.where(hi > lo, hi - lo, 1.0), 0, 1)
    return np.broadcast_to((scaled * 255).round().astype(np.uint8).transpose(1, 2, 0),
                           (*rgb.shape[1:], 3)).copy()


def overlay_slice(truth, pred) -> int:
    """The D index :func:`overlay_png` shows for a volume: most truth-or-prediction foreground.

    Ties go to the lowest index; with no foreground at all, the middle slice.

    Example:
        >>> t = np.zeros((5, 4, 4), np.int64); t[3, 1:3, 1:3] = 1
        >>> overlay_slice(t, np.zeros_like(t)), overlay_slice(0 * t, 0 * t)
        (3, 2)
    """
    counts = ((np.asarray(truth) > 0) | (np.asarray(pred) > 0)).sum(axis=(1, 2))
    return int(counts.argmax()) if counts.any() else counts.size // 2


def overlay_png(image, truth, pred, *, max_side: int = 512) -> bytes:
    """A PNG of ``image`` with truth and prediction contours and error tints.

    ``image`` is ``(C, *S)`` (any range; one or three channels shown as grey or RGB, other
    counts as the channel mean), ``truth``/``pred`` class indices ``(*S)``, 2D or 3D; a
    volume shows the slice :func:`overlay_slice` picks. Colours: truth contour green,
    prediction contour magenta, both white; false-positive pixels (predicted foreground of
    the wrong class) tinted red, false negatives (foreground predicted as background) blue.
    Images larger than ``max_side`` are shrunk first (image bilinear, masks nearest).

    Example:
        >>> t = np.zeros((8, 8), np.int64); t[2:6, 2:6] = 1
        >>> overlay_png(np.zeros((1, 8, 8)), t, t)[:4]
        b'\\x89PNG'
    """
    image, truth, pred = np.asarray(image, np.float64), np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape or truth.ndim not in (2, 3) or image.shape[1:] != truth.shape:
        raise DataError(f"overlay needs image (C, *S) and masks (*S) of one shape, got image "
                        f"{image.shape}, truth {truth.shape}, prediction {pred.shape}",
                        hint="pass one image with its channel dimension first, and its two masks")
    if truth.ndim == 3:
        d = overlay_slice(truth, pred)
        image, truth, pred = image[:, d], truth[d], pred[d]
    h, w = truth.shape
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if scale < 1:  # shrink before drawing, so contours stay one pixel wide
        image = np.stack([np.asarray(Image.fromarray(c.astype(np.float32)).resize(size, Image.BILINEAR))
                          for c in image])
        truth, pred = (np.asarray(Image.fromarray(m.astype(np.int32)).resize(size, Image.NEAREST))
                       for m in (truth, pred))
    rgb = _normalise(image).astype(np.float64)  # (H, W, 3)
    for where, colour in (((pred > 0) & (pred != truth), FALSE_POS), ((truth > 0) & (pred == 0), FALSE_NEG)):
        rgb[where] = (1 - ALPHA) * rgb[where] + ALPHA * np.array(colour)
    edge_t, edge_p = _boundary(truth), _boundary(pred)
    rgb[edge_t], rgb[edge_p], rgb[edge_t & edge_p] = TRUTH, PRED, BOTH
    buffer = io.BytesIO()
    Image.fromarray(rgb.round().astype(np.uint8), "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


# ----------------------------------------------------------------------------- HTML

def _num(value: Any) -> str:
    """4 significant digits, ``n/a`` for missing or NaN (the report's number format)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return html.escape(str(value))
    if isinstance(value, int) or math.isinf(value):
        return str(value)
    return f"{value:.4g}" if value == 0 or 1e-3 <= abs(value) < 1e4 else f"{value:.3e}"


def _float(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else math.nan


def _row(cells: Sequence[str], first: str, cls: str = "") -> str:
    tds = "".join(f'<td class="num">{c}</td>' for c in cells)
    attr = f' class="{cls}"' if cls else ""
    return f"<tr{attr}><td>{first}</td>{tds}</tr>"


def _head(first: str, columns: Sequence[str]) -> str:
    return f"<tr><th>{first}</th>" + "".join(f'<th class="num">{html.escape(c)}</th>' for c in columns) + "</tr>"


def _metrics_table(evaluation: Mapping) -> str:
    metrics = evaluation.get("metrics") or {}
    otsu = (evaluation.get("baselines") or {}).get("otsu")
    columns = ["this model"] + (["Otsu threshold"] if otsu is not None else [])
    rows = [_row([_num(metrics.get(k))] + ([_num(otsu.get(k))] if otsu is not None else []), k)
            for k in METRICS]
    otsu_note = " The Otsu column thresholds the same held-out images (bright objects)." if otsu is not None else ""
    note = f'<p class="note">Foreground mean over classes 1..C-1; ap50 and dsb on objects.{otsu_note}</p>'
    return f'<div><h3>Metrics</h3>{note}<table class="seg-metrics">{_head("metric", columns)}{"".join(rows)}</table></div>'


def _per_class_table(evaluation: Mapping) -> str:
    metrics = evaluation.get("metrics") or {}
    lists = {k: list(metrics.get(f"{k}_per_class") or []) for k in PER_CLASS}
    n = max(len(v) for v in lists.values())
    if n == 0:
        return ""
    names = list(evaluation.get("class_names") or [])
    rows = [_row([_num(lists[k][c] if c < len(lists[k]) else None) for k in PER_CLASS],
                 html.escape(str(names[c]) if c < len(names) else f"class {c}")) for c in range(n)]
    return f'<div><h3>Per class</h3><table class="seg-per-class">{_head("class", PER_CLASS)}{"".join(rows)}</table></div>'


def _postprocessing_table(pp: Mapping) -> str:
    rows = []
    for c in pp.get("candidates") or []:
        mark = " (chosen)" if c.get("chosen") else (" (kept)" if c.get("kept") else "")
        rows.append(_row([_num(c.get("dice")), _num(c.get("ap50"))], html.escape(str(c.get("name"))) + mark,
                         "summary" if c.get("chosen") else ""))
    where = pp.get("note") or "Chosen on held-out predictions."
    note = (f'<p class="note">{html.escape(str(where))} Chosen: <b>{html.escape(str(pp.get("chosen")))}</b>. '
            'A step is kept only if it raises the mean foreground Dice and lowers no class (nnU-Net v2).</p>')
    return (f'<h3>Post-processing</h3>{note}<table class="seg-postprocessing">'
            f'{_head("candidate", ["dice", "ap50"])}{"".join(rows)}</table>')


def _folds_table(folds: Sequence[Mapping]) -> str:
    columns = [k for k in METRICS if any(k in f for f in folds)]
    rows = [_row([_num(f.get(k)) for k in columns], html.escape(str(f.get("fold", i + 1)))) for i, f in enumerate(folds)]
    table = np.array([[_float(f.get(k)) for k in columns] for f in folds])  # (folds, metrics)
    with np.errstate(invalid="ignore"):
        summary = [f"{_num(float(m))} ± {_num(float(s))}" for m, s in zip(table.mean(0), table.std(0), strict=True)]
    rows.append(_row(summary, "mean ± std", "summary"))
    return f'<h3>Per fold</h3><table class="seg-folds">{_head("fold", columns)}{"".join(rows)}</table>'


def _overlays(overlays: Sequence[Mapping]) -> str:
    figures = [f'<figure><img src="data:image/png;base64,{html.escape(str(o.get("png_base64", "")))}" '
               f'alt="{html.escape(str(o.get("name")))}"><figcaption>{html.escape(str(o.get("name")))}</figcaption></figure>'
               for o in overlays]
    legend = ('<p class="note">Truth contour green, prediction contour magenta (white where they agree); '
              'false positives tinted red, false negatives blue.</p>')
    return f'<h3>Overlays</h3>{legend}<div class="figures">{"".join(figures)}</div>'


def segmentation_section(evaluation: Mapping) -> str:
    """An HTML ``<section id="segmentation">`` for the report, every text escaped.

    Reads ``metrics`` (:func:`dlforge.evaluate.segmentation.segmentation_scores`'s dict),
    ``class_names``, and when present ``baselines.otsu`` (the same metric keys),
    ``postprocessing`` (:meth:`PostChoice.to_dict`), ``folds`` (dicts of metric keys and
    ``fold``) and ``overlays`` (``{"name", "png_base64"}`` dicts).

    Example:
        >>> s = segmentation_section({"metrics": {"dice": 0.9}, "baselines": {"otsu": {"dice": 0.835}}})
        >>> "0.835" in s and "Otsu threshold" in s
        True
    """
    parts = ['<section id="segmentation">', "<h2>Segmentation</h2>",
             f'<div class="figures">{_metrics_table(evaluation)}{_per_class_table(evaluation)}</div>']
    if evaluation.get("postprocessing"):
        parts.append(_postprocessing_table(evaluation["postprocessing"]))
    if evaluation.get("folds"):
        parts.append(_folds_table(evaluation["folds"]))
    if evaluation.get("overlays"):
        parts.append(_overlays(evaluation["overlays"]))
    return "\n".join(parts + ["</section>"])
