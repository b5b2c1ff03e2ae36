"""Raw inputs -> a model's input tensor, and the inputs a model refuses: the one encoder.

``dlforge predict``, Python (:meth:`Artifact.encode <dlforge.registry.artifact.Artifact.encode>`),
the pipeline and the server all encode here, with the preprocessing stored in ``model.json``
(the data layer's encoders replay it: the same standardisation training applied). The forms,
by the stored encoding's kind:

* tabular: a CSV path, rows ``{column: value}``, a pandas DataFrame, or numbers of the
  encoded width (raw, unstandardised feature values);
* image: image paths, encoded image bytes (PNG/JPEG/BMP), or raw pixels in the source's own
  units (0..16 for the built-in digits, 0..255 for image folders) of layout (N, C, H, W),
  (N, H, W, C) or (N, H, W), or one sample of those;
* text: strings (the stored tokenizer), or token ids (N, max_len);
* sequence: windows (N, T, F) in the series' own units, or series files (a CSV with one
  step per row, optionally after a time label column: its last T steps are the window);
* a model saved without preprocessing: numbers in the model's own input units, unchanged.

:func:`check_predictable` refuses models that do not answer raw inputs (masked-LM
pretraining), :func:`non_finite` finds values that overflow float32 once scaled, and
:class:`InputSpec` says what one model accepts (the server checks JSON items against it).

Example:
    >>> prep = {"encoding": {"kind": "sequence", "length": 2, "features": 1}, "standardize": None,
    ...         "target_scale": {"mean": 10.0, "std": 2.0}}
    >>> encode_raw([[[12.0], [8.0]]], prep)
    tensor([[[ 1.],
             [-1.]]])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from dlforge.data import (
    encode_array,
    encode_images,
    encode_pixels,
    encode_rows,
    encode_text_inputs,
)
from dlforge.data.tabular import feature_names, parse_float, read_csv
from dlforge.errors import ArtifactError, DataError

MLM_REFUSAL = "this model is a masked-LM model: it predicts masked tokens, not labels"
OVERFLOW = ("overflows float32 once scaled and standardised as in training; "
            "send values in the training data's own range")


def check_predictable(meta: Mapping[str, Any]) -> None:
    """Refuse a model that does not answer raw inputs with labels or values (``meta``: model.json).

    Example:
        >>> check_predictable({"task": "mlm"})
        Traceback (most recent call last):
        ...
        dlforge.errors.ArtifactError: this model is a masked-LM model: it predicts masked tokens, not labels (...)
    """
    if meta.get("task") == "mlm":
        raise ArtifactError(MLM_REFUSAL, hint="fine-tune it on a labelled task (model.pretrained) and predict "
                                              "with or serve that model")


def encode_raw(inputs: Any, preprocessing: Mapping[str, Any]) -> torch.Tensor:
    """The model's input tensor for raw ``inputs`` in any form of the module docstring.

    Values that overflow once standardised come back as they are (infinite): callers refuse
    them with :func:`non_finite`, naming the input (``Artifact.encode``) or the field (the server).
    """
    encoding = preprocessing.get("encoding") or {}
    kind = encoding.get("kind")
    if kind == "image":
        if _files(inputs, bytes_too=True):
            return encode_images(_as_list(inputs), preprocessing)
        return encode_pixels(inputs, preprocessing)  # arrays or nested lists of raw pixels
    if kind == "sequence" and _files(inputs):
        return encode_array(np.stack([read_window(p, encoding) for p in _as_list(inputs)]), preprocessing)
    if kind is None:
        return _own_units(inputs)
    if isinstance(inputs, (np.ndarray, torch.Tensor)) or (kind == "sequence" and isinstance(inputs, list)):
        return encode_array(np.asarray(inputs) if isinstance(inputs, list) else inputs, preprocessing)
    if kind == "text":
        return encode_text_inputs(inputs, preprocessing)
    return encode_rows(inputs, preprocessing)


def _own_units(inputs: Any) -> torch.Tensor:
    """A model saved without preprocessing takes numbers in its own input units, unchanged."""
    try:
        x = np.asarray(inputs.detach().cpu() if isinstance(inputs, torch.Tensor) else inputs, dtype=np.float32)
    except (TypeError, ValueError):
        raise DataError("this model was saved without preprocessing: it takes numbers in its own input units only",
                        hint="give an array of shape (N, *input_shape)") from None
    return torch.from_numpy(x)


def _files(inputs: Any, bytes_too: bool = False) -> bool:
    """Whether ``inputs`` is a path (or image bytes), or a non-empty list of them."""
    kinds = (str, Path, bytes) if bytes_too else (str, Path)
    if isinstance(inputs, kinds):
        return True
    return isinstance(inputs, (list, tuple)) and bool(inputs) and all(isinstance(i, kinds) for i in inputs)


def _as_list(inputs: Any) -> list:
    return list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]


def read_window(path: str | Path, encoding: Mapping[str, Any]) -> np.ndarray:
    """The last ``length`` steps of a series CSV file as a float64 window ``(length, features)``.

    One step per row after a header; the columns are the series' features, optionally after
    one time label column (``year,value``). Values are in the series' own units.

    Example:
        >>> read_window("sunspots_recent.csv", {"kind": "sequence", "length": 22, "features": 1}).shape  # doctest: +SKIP
        (22, 1)
    """
    length, features = int(encoding["length"]), int(encoding["features"])
    table = read_csv(path)
    if len(table.columns) not in (features, features + 1):
        raise DataError(f"{path} has {len(table.columns)} columns; this model reads {features} series feature(s)",
                        hint=f"keep one column per feature ({features}), optionally after a time label column")
    if len(table) < length:
        raise DataError(f"{path} holds {len(table)} steps; this model forecasts from the last {length}",
                        hint=f"give at least {length} rows, one step per row, oldest first")
    rows = range(len(table) - length, len(table))
    window = np.empty((length, features))
    for j, column in enumerate(table.columns[-features:]):
        for t, i in enumerate(rows):
            value = parse_float(table.cells[column][i])
            if value is None or not np.isfinite(value):
                raise DataError(f"{path}: '{table.cells[column][i]}' at {table.where(i)} is not a finite number",
                                hint="a series file holds numbers in the series' own units, one step per row")
            window[t, j] = value
    return window


def non_finite(x: torch.Tensor) -> list[tuple[int, int]]:
    """(sample, flat index of its first bad value) for every sample of ``x`` holding NaN or
    infinity: raw values that overflow float32 once scaled and standardised.

    Example:
        >>> non_finite(torch.tensor([[1.0, 2.0], [3.0, float("inf")]]))
        [(1, 1)]
    """
    if not torch.is_floating_point(x) or bool(torch.isfinite(x).all()):
        return []
    bad = ~torch.isfinite(x.reshape(len(x), -1))  # (N, values per sample)
    return [(i, int(bad[i].nonzero()[0])) for i in bad.any(dim=1).nonzero().flatten().tolist()]


def feature_of(preprocessing: Mapping[str, Any], j: int) -> str | None:
    """The name of encoded feature ``j`` of a table (``age``, ``color=red``), else None.

    Example:
        >>> feature_of({"encoding": {"kind": "tabular", "columns": ["age", "color"],
        ...                          "categories": {"color": ["blue", "red"]}}}, 2)
        'color=red'
    """
    encoding = preprocessing.get("encoding") or {}
    if encoding.get("kind") != "tabular":
        return None
    names = feature_names(list(encoding["columns"]), encoding.get("categories") or {}, encoding.get("indicators") or ())
    return names[j] if j < len(names) else None


def refuse_non_finite(x: torch.Tensor, preprocessing: Mapping[str, Any]) -> torch.Tensor:
    """``x``, or a DataError naming the inputs (at most three) whose values overflow.

    Example:
        >>> refuse_non_finite(torch.tensor([[float("inf")]]), {})
        Traceback (most recent call last):
        ...
        dlforge.errors.DataError: inputs[0] (value 0): a value overflows float32 once scaled and standardised ...
    """
    found = non_finite(x)
    if not found:
        return x
    where = [f"inputs[{i}] ({feature_of(preprocessing, j) or f'value {j}'})" for i, j in found[:3]]
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    message, hint = OVERFLOW.split("; ")
    raise DataError(f"{', '.join(where)}{more}: a value {message}", hint=hint)


def pixel_max(encoding: Mapping[str, Any]) -> int:
    """The top of an image model's raw pixel range: 16 for the built-in digits, 255 for files.

    Example:
        >>> pixel_max({"kind": "image", "scale": 1 / 16})
        16
    """
    return round(1 / encoding.get("scale", 1 / 255))


@dataclass(frozen=True)
class InputSpec:
    """What one model accepts, read once from its artifact (the server checks JSON items with it)."""

    kind: str  # "text", "tabular", "image" or "array"
    shape: tuple[int, ...]  # per-sample shape of the model-ready tensor
    integer: bool  # int64 token ids rather than float32 values
    vocab_size: int | None  # token ids must lie in [0, vocab_size)
    has_tokenizer: bool  # strings can be encoded
    columns: tuple[str, ...]  # raw columns of a tabular model (empty: rows as objects are not accepted)
    pixel_max: int | None = None  # image models: raw pixels span 0..pixel_max (16 for digits, 255 for files)

    @classmethod
    def of(cls, artifact: Any) -> InputSpec:
        """Read the input rules of ``artifact`` (an :class:`~dlforge.registry.artifact.Artifact`)."""
        meta = artifact.meta
        encoding = (meta.get("preprocessing") or {}).get("encoding") or {}
        integer = meta["input_signature"].get("dtype") == "int64"
        vocab = encoding.get("vocab_size") or meta.get("spec", {}).get("vocab_size")
        if integer and vocab is None and "tokenizer" in encoding:  # an encoding saved without vocab_size
            vocab = Tokenizer.from_str(encoding["tokenizer"]).get_vocab_size()
        kind = "text" if integer else encoding.get("kind") if encoding.get("kind") in ("tabular", "image") else "array"
        return cls(kind=kind, shape=tuple(meta["input_signature"]["shape"][1:]), integer=integer,
                   vocab_size=None if vocab is None else int(vocab), has_tokenizer="tokenizer" in encoding,
                   columns=tuple(encoding.get("columns", ())) if kind == "tabular" else (),
                   pixel_max=pixel_max(encoding) if kind == "image" else None)

    def describe(self) -> str:
        """One line saying what an item of ``inputs`` must be (used in error messages)."""
        shape = list(self.shape)
        if self.kind == "text":
            ids = f"a list of {shape[0]} integer token ids"
            return f"a string or {ids}" if self.has_tokenizer else ids
        if self.kind == "tabular" and self.columns:
            return f"an object with the columns {list(self.columns)} or a list of {shape[0]} numbers"
        if self.kind == "image":
            c, h, w = shape
            forms = ([[h, w]] if c == 1 else []) + [[h, w, c], [c, h, w]]
            return (f"raw pixels (0..{self.pixel_max}) as a nested list of shape {' or '.join(map(str, forms))}, "
                    'or an object {"b64": "<base64 PNG or JPEG>"}')
        one = "a number or " if shape == [1] else ""
        return f"{one}a nested list of numbers of shape {shape}"


__all__ = [
    "MLM_REFUSAL",
    "InputSpec",
    "check_predictable",
    "encode_raw",
    "feature_of",
    "non_finite",
    "pixel_max",
    "read_window",
    "refuse_non_finite",
]
