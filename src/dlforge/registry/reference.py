"""Training reference statistics: what a model's inputs and predictions looked like in training.

The server compares live traffic with these to detect drift (:mod:`dlforge.serve.monitor`).
Inputs are summarised as a few float features per sample so the comparison stays cheap and
the reference stays small enough for ``model.json``:

=============================  ===============================================
model input (N, ...)           features
=============================  ===============================================
tabular (N, D)                 the columns themselves (at most 64)
image (N, C, H, W)             per-channel mean and std: ``c0_mean``, ``c0_std``...
text token ids (N, L) int64    ``length``: tokens that are not padding
sequence (N, T, D)             per-feature mean over time: ``x0_mean``...
=============================  ===============================================

Example:
    >>> import torch
    >>> x = torch.randn(200, 3)
    >>> outputs = {"indices": torch.randint(0, 2, (200,))}
    >>> ref = build_reference(x, outputs, "classification", {"encoding": {"kind": "tabular"}})
    >>> ref["features"], len(ref["samples"][0]), ref["prediction"]["kind"]
    (['x0', 'x1', 'x2'], 200, 'classes')
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from dlforge.errors import DataError

MAX_COLUMNS = 64  # wider tables keep 64 evenly spaced columns: drift checks stay cheap


def _kind(x: torch.Tensor, preprocessing: Mapping) -> str:
    """The input kind from the stored encoding, else guessed from the shape and dtype."""
    encoding = preprocessing.get("encoding") if isinstance(preprocessing, Mapping) else None
    kind = encoding.get("kind") if isinstance(encoding, Mapping) else None
    if kind in ("image", "text", "sequence"):
        return kind
    if kind is None and x.ndim == 2 and not torch.is_floating_point(x):
        return "text"
    return {3: "sequence", 4: "image"}.get(x.ndim, "tabular")


def _column_names(preprocessing: Mapping, width: int) -> list[str]:
    """Names of the ``width`` encoded columns: stored names, the tabular encoding's, or x0, x1..."""
    names = preprocessing.get("feature_names")
    encoding = preprocessing.get("encoding") or {}
    if not names and "columns" in encoding:
        # The same rule as dlforge.data.tabular.feature_names: one-hot blocks are column=category.
        categories = encoding.get("categories") or {}
        names = []
        for c in encoding["columns"]:
            names += [f"{c}={v}" for v in categories[c]] if c in categories else [c]
    if names and len(names) == width:
        return [str(n) for n in names]
    return [f"x{i}" for i in range(width)]


def reference_features(x: torch.Tensor, preprocessing: dict) -> tuple[np.ndarray, list[str]]:
    """Summarise model-ready inputs ``x`` (N, *input_shape) as (N, F) float64 features and names.

    Example:
        >>> feats, names = reference_features(torch.zeros(5, 3, 8, 8), {"encoding": {"kind": "image"}})
        >>> feats.shape, names[:2]
        ((5, 6), ['c0_mean', 'c0_std'])
        >>> ids = torch.tensor([[2, 7, 3, 0, 0]])
        >>> reference_features(ids, {"encoding": {"kind": "text", "pad_id": 0}})
        (array([[3.]]), ['length'])
    """
    x = torch.as_tensor(x).detach().cpu()
    preprocessing = preprocessing if isinstance(preprocessing, Mapping) else {}
    kind = _kind(x, preprocessing)
    expected_ndim = {"image": 4, "text": 2, "sequence": 3}.get(kind)
    if expected_ndim is not None and x.ndim != expected_ndim:
        raise DataError(f"{kind} inputs must have {expected_ndim} dims (N, ...), got shape {list(x.shape)}",
                        hint="pass model-ready inputs, e.g. from Artifact.encode")
    if kind == "image":
        flat = x.to(torch.float64).flatten(2).numpy()  # (N, C, H*W)
        feats = np.stack([flat.mean(axis=2), flat.std(axis=2)], axis=2).reshape(len(x), -1)  # (N, C*2)
        names = [f"c{c}_{stat}" for c in range(x.shape[1]) for stat in ("mean", "std")]
        return feats, names
    if kind == "text":
        pad_id = int((preprocessing.get("encoding") or {}).get("pad_id", 0))
        return (x != pad_id).sum(dim=1, keepdim=True).to(torch.float64).numpy(), ["length"]
    if kind == "sequence":
        feats = x.to(torch.float64).mean(dim=1).numpy()  # (N, D)
        return feats, [f"{n}_mean" for n in _column_names(preprocessing, feats.shape[1])]
    flat = x.to(torch.float64).reshape(len(x), -1).numpy()  # (N, D); (N,) becomes (N, 1)
    names = _column_names(preprocessing, flat.shape[1])
    if flat.shape[1] > MAX_COLUMNS:
        keep = np.unique(np.linspace(0, flat.shape[1] - 1, MAX_COLUMNS).round().astype(int))
        flat, names = flat[:, keep], [names[i] for i in keep]
    return flat, names


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def prediction_summary(outputs: Mapping[str, Any]) -> tuple[str, np.ndarray, int]:
    """What drift checks compare of a prediction: ("classes", class indices, K) or ("values", one value per
    sample, 0). Multi-output regression (a forecast horizon) is summarised by its mean per sample.

    Example:
        >>> prediction_summary({"indices": torch.tensor([0, 2]), "probabilities": torch.zeros(2, 3)})
        ('classes', array([0, 2]), 3)
    """
    if "indices" in outputs or "probabilities" in outputs:
        probs = _to_numpy(outputs["probabilities"]) if "probabilities" in outputs else None
        idx = _to_numpy(outputs["indices"]) if "indices" in outputs else probs.argmax(axis=1)
        num_classes = probs.shape[1] if probs is not None and probs.ndim >= 2 else int(idx.max(initial=-1)) + 1
        return "classes", idx.astype(np.int64).ravel(), num_classes  # segmentation: one index per pixel
    if "values" in outputs:
        values = _to_numpy(outputs["values"]).astype(np.float64)
        return "values", values.reshape(len(values), -1).mean(axis=1), 0
    raise DataError(f"outputs have keys {sorted(outputs)}, expected 'indices' or 'values'",
                    hint="pass the dict returned by Artifact.predict")


def build_reference(x: torch.Tensor, outputs: dict, task: str, preprocessing: dict, *,
                    max_samples: int = 500, seed: int = 0) -> dict:
    """JSON-ready reference statistics of inputs ``x`` and ``outputs`` (``Artifact.predict``'s dict).

    At most ``max_samples`` samples are kept per feature (drawn without replacement with
    ``seed``); class proportions use every sample.

    Example:
        >>> ref = build_reference(torch.randn(1000, 2), {"values": torch.randn(1000, 1)}, "regression",
        ...                       {}, max_samples=100)
        >>> ref["n"], len(ref["samples"][1]), len(ref["prediction"]["samples"])
        (1000, 100, 100)
    """
    if max_samples < 1:
        raise DataError(f"max_samples must be at least 1, got {max_samples}")
    feats, names = reference_features(x, preprocessing)
    n = len(feats)
    if n == 0:
        raise DataError("cannot build reference statistics from zero samples",
                        hint="pass the training inputs")
    keep = np.arange(n)
    if n > max_samples:
        keep = np.sort(np.random.default_rng(seed).choice(n, size=max_samples, replace=False))
    kind, summary, num_classes = prediction_summary(outputs)
    if task == "classification" and kind != "classes":
        raise DataError(f"a classification model's outputs must hold 'indices', got keys {sorted(outputs)}")
    if kind == "classes":
        counts = np.bincount(summary, minlength=num_classes).astype(np.float64)
        prediction = {"kind": "classes", "proportions": (counts / counts.sum()).tolist()}
    else:
        prediction = {"kind": "values", "samples": _compact(summary[keep][None])[0]}
    return {"features": names, "samples": _compact(feats[keep].T), "prediction": prediction, "n": n,
            "ranges": input_ranges(x, preprocessing)}


def _compact(values: np.ndarray) -> list:
    """Nested lists of floats with 7 significant digits (float32's precision): half the JSON."""
    return [[float(f"{v:.7g}") for v in row] for row in values.tolist()]


# ------------------------------------------------------------------------------ ranges
FAR_WIDTHS = 3.0  # "far outside": beyond the training range by more than 3 times its width
MIN_WIDTH = 1.0  # in standardised units (one training std): a constant feature may move a little


def _range_view(x: torch.Tensor, kind: str) -> tuple[np.ndarray, list[str]]:
    """x as (N, F, M) values of F range features: table columns, image channels, series features."""
    x = torch.as_tensor(x).detach().cpu().to(torch.float64)
    if kind == "image":  # (N, C, H, W): one range per channel
        return x.flatten(2).numpy(), [f"c{c}" for c in range(x.shape[1])]
    if kind == "sequence":  # (N, T, D): one range per feature, over time
        return x.transpose(1, 2).numpy(), [f"x{d}" for d in range(x.shape[2])]
    flat = x.reshape(len(x), -1, 1).numpy()
    return flat, []


def input_ranges(x: torch.Tensor, preprocessing: Mapping) -> dict | None:
    """Per-feature min and max of model-ready training inputs ``x``, in the model's input space
    (after scaling and standardisation); text has none (token ids are checked against the vocabulary).

    Example:
        >>> input_ranges(torch.tensor([[0.0, -1.0], [2.0, 1.0]]), {"encoding": {"kind": "tabular"}})
        {'features': ['x0', 'x1'], 'min': [0.0, -1.0], 'max': [2.0, 1.0]}
    """
    preprocessing = preprocessing if isinstance(preprocessing, Mapping) else {}
    kind = _kind(torch.as_tensor(x), preprocessing)
    if kind == "text" or len(x) == 0:
        return None
    values, names = _range_view(x, kind)
    names = names or _column_names(preprocessing, values.shape[1])
    return {"features": names, "min": _compact(values.min(axis=(0, 2))[None])[0],
            "max": _compact(values.max(axis=(0, 2))[None])[0]}


def out_of_range(x: torch.Tensor, reference: Mapping | None, preprocessing: Mapping) -> list[dict]:
    """Inputs of ``x`` (model-ready) far outside the training ``reference["ranges"]``: below
    ``min - 3 * width`` or above ``max + 3 * width`` (width = max - min, at least one training
    std). Three widths is well beyond any shift seen in training, yet a user sending pixels in
    0..255 to a 0..16 model, or grams to a kilogram column, lands there. One entry per input
    and feature: ``{"input", "feature", "value", "training_range"}``, values in the model's
    standardised input space. Empty when the reference has no ranges (older artifacts).

    Example:
        >>> ref = {"ranges": {"features": ["age"], "min": [-1.0], "max": [1.0]}}
        >>> out_of_range(torch.tensor([[0.5], [9.0]]), ref, {})
        [{'input': 1, 'feature': 'age', 'value': 9.0, 'training_range': [-1.0, 1.0]}]
    """
    ranges = (reference or {}).get("ranges") if isinstance(reference, Mapping) else None
    if not ranges or len(x) == 0:
        return []
    kind = _kind(torch.as_tensor(x), preprocessing if isinstance(preprocessing, Mapping) else {})
    values, _ = _range_view(x, kind)
    lo, hi = np.asarray(ranges["min"], dtype=np.float64), np.asarray(ranges["max"], dtype=np.float64)
    if values.shape[1] != len(lo):
        return []  # a reference of another shape: nothing to compare
    width = np.maximum(hi - lo, MIN_WIDTH)
    low, high = values.min(axis=2), values.max(axis=2)  # (N, F)
    below, above = low < (lo - FAR_WIDTHS * width), high > (hi + FAR_WIDTHS * width)
    found = []
    for i, f in zip(*np.nonzero(below | above)):
        value = high[i, f] if above[i, f] else low[i, f]
        found.append({"input": int(i), "feature": ranges["features"][f], "value": float(f"{value:.7g}"),
                      "training_range": [float(lo[f]), float(hi[f])]})
    return found
