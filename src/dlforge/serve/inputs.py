"""JSON inputs of a predict request -> the model-ready tensor, or a 422 naming the field.

Only what is HTTP's lives here: reading a JSON body into the raw forms of
:mod:`dlforge.registry.encoding` (the one encoder, which ``dlforge predict`` and
``Artifact.encode`` use too, so the same raw input gets the same answer everywhere) and
naming the bad field of a refused item. JSON adds two forms: nested lists for raw pixels
(``[H, W]``, ``[H, W, C]`` or ``[C, H, W]``; channels-first wins when two read alike) and
``{"b64": "<base64 PNG/JPEG/BMP bytes>"}`` for image files.

Strings are never read as file paths: the server opens no file a client names. NaN and
infinity are rejected (Python's ``json`` writes and reads them), and so is a value that
overflows float32 once scaled and standardised (the 422 names its cell or column). JSON
``true``/``false`` are not numbers, wherever they stand (numpy would read them as 1 and 0),
and text must be valid Unicode: a lone surrogate (``"\\ud800"``) is refused.
:mod:`dlforge.serve.tensor_checks` caps the text tokens of one request (413) and
refuses non-finite model outputs, so no answer carries null probabilities.

Example:
    >>> import tempfile
    >>> from dlforge.models import build
    >>> from dlforge.registry import load_artifact, save_artifact
    >>> art = load_artifact(save_artifact(build({"arch": "mlp", "hidden": [8]}, input_shape=(4,), num_outputs=3),
    ...                                   tempfile.mkdtemp() + "/m", task="classification"))
    >>> spec = InputSpec.of(art)
    >>> encode_inputs(spec, art, [[0, 1, 2, 3]]).shape
    torch.Size([1, 4])
    >>> encode_inputs(spec, art, [[0, 1, 2]])
    Traceback (most recent call last):
    ...
    fastapi.exceptions.RequestValidationError: 1 validation error:
      {'loc': ('body', 'inputs', 0), 'msg': 'expected shape [4], got [3]', 'type': 'value_error'}
"""

from __future__ import annotations

import base64
import binascii
import math
from itertools import chain
from typing import Any

import numpy as np
import torch

from dlforge.data.image_folder import ImageTooLargeError
from dlforge.data.preprocess import pixel_layouts
from dlforge.errors import DlforgeError
from dlforge.registry.artifact import Artifact
from dlforge.registry.encoding import OVERFLOW, InputSpec, check_predictable, encode_raw, feature_of, non_finite
from dlforge.serve.schemas import text_problem
from dlforge.serve.errors import ApiError
from dlforge.serve.tensor_checks import (
    MAX_ERRORS,
    Invalid,
    all_finite,
    inside_every_range,
    range_bounds,
    invalid,
    range_warnings,
)

MAX_WARNINGS = 20  # a response lists at most this many out-of-range warnings
FLOAT32_MAX = float(np.finfo(np.float32).max)


def encode_inputs(spec: InputSpec, artifact: Artifact, inputs: list[Any], *, check: bool = True) -> torch.Tensor:
    """The model-ready tensor ``(N, *spec.shape)`` for ``inputs``; RequestValidationError if any item is
    bad, and the artifact's refusal (an ArtifactError) for a model that does not answer raw inputs.

    ``check=False`` leaves out the refusal of values that overflow once standardised: the caller
    then calls :func:`check_encoded`, which does it and the range warnings in one pass.
    """
    check_predictable(artifact.meta)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # overflow is refused just below
        x = _fast_batch(spec, artifact, inputs)
        if x is None:
            x = _item_by_item(spec, artifact, inputs)
    if check:
        _check_finite(x, artifact, inputs)
    return x


def check_encoded(artifact: Artifact, x: torch.Tensor, inputs: list[Any]) -> list[dict[str, Any]]:
    """Refuse (422, naming the field) encoded values that overflowed, then :func:`range_warnings`.

    The usual request costs one min and one max: values between the finite limits of
    :func:`~dlforge.serve.tensor_checks.inside_every_range` are finite and inside every training range.

    Example:
        >>> check_encoded(art, encode_inputs(spec, art, [[0, 1, 2, 3]], check=False), [[0, 1, 2, 3]])  # doctest: +SKIP
        []
    """
    reference = artifact.meta.get("training", {}).get("reference")
    bounds = range_bounds(reference)
    if bounds is not None and all(map(math.isfinite, bounds)) and inside_every_range(x, reference):
        return []  # inside finite limits: finite too (NaN compares False, so it is checked below)
    _check_finite(x, artifact, inputs)
    return range_warnings(artifact, x)


def _fast_batch(spec: InputSpec, artifact: Artifact, inputs: list[Any]) -> torch.Tensor | None:
    """The usual case, one clean numeric array, in one conversion; None: go item by item."""
    if spec.kind == "image":
        return _pixel_batch(artifact, inputs)
    fast = _numeric_batch(spec, inputs)
    return None if fast is None else encode_raw(fast, artifact.preprocessing)


def _item_by_item(spec: InputSpec, artifact: Artifact, inputs: list[Any]) -> torch.Tensor:
    """Each item checked on its own, so a 422 names every bad field (at most MAX_ERRORS)."""
    errors: list[tuple[tuple[int | str, ...], str]] = []
    rows: list[torch.Tensor | None] = [None] * len(inputs)
    texts, text_at, records, record_at, images_at = [], [], [], [], []
    encoding = artifact.preprocessing.get("encoding") or {}
    numeric_columns = set(spec.columns) - set(encoding.get("categories") or {})
    for i, item in enumerate(inputs):
        try:
            if isinstance(item, str) and spec.kind == "text" and spec.has_tokenizer:
                _check_text(item, (i,))
                texts.append(item)
                text_at.append(i)
            elif isinstance(item, dict) and spec.kind == "tabular" and spec.columns:
                _check_record(item, (i,), numeric_columns)
                records.append(item)
                record_at.append(i)
            elif spec.kind == "image" and isinstance(item, (list, dict)):
                rows[i] = _image_item(spec, artifact, item, (i,))  # scaled and standardised
                images_at.append(i)
            elif isinstance(item, list):
                rows[i] = _numeric_item(spec, item, (i,))
            elif isinstance(item, (int, float)) and not isinstance(item, bool) and spec.shape == (1,):
                _check_number(item, (i,), spec)  # a bare number is a one-number sample
                rows[i] = _numeric_item(spec, [item], (i,))
            else:
                raise Invalid((i,), f"expected {spec.describe()}, got {type_name(item)}")
        except Invalid as bad:
            errors.append((bad.loc, bad.msg))
        if len(errors) >= MAX_ERRORS:
            break
    if not errors and texts:
        for i, row in zip(text_at, encode_raw(texts, artifact.preprocessing)):  # (N, max_len) int64 ids
            rows[i] = row
    if not errors and records:
        encoded, errors = _encode_records(artifact, records, record_at)
        for i, row in zip(record_at, encoded):
            rows[i] = row
    if errors:
        raise invalid(errors)
    encoded = {*text_at, *record_at, *images_at}
    numeric = [i for i in range(len(rows)) if i not in encoded]
    if numeric:  # texts, records and images come back from the encoder already standardised
        for i, row in zip(numeric, encode_raw(torch.stack([rows[i] for i in numeric]), artifact.preprocessing)):
            rows[i] = row
    return torch.stack(rows)  # type: ignore[arg-type]  # every slot is filled when there is no error


def _check_finite(x: torch.Tensor, artifact: Artifact, inputs: list[Any]) -> None:
    """Refuse samples that overflow once scaled and standardised (e.g. 3e38 divided by a std
    below 1): the model would answer NaN, and JSON would carry null probabilities."""
    if torch.is_floating_point(x) and all_finite(x):
        return
    found = non_finite(x)[:MAX_ERRORS]
    if found:
        raise invalid([(_value_loc(i, j, tuple(x.shape[1:]), artifact, inputs[i]), f"a value {OVERFLOW}")
                       for i, j in found])


def _value_loc(i: int, j: int, shape: tuple[int, ...], artifact: Artifact, item: Any) -> tuple[int | str, ...]:
    """Where encoded value ``j`` of sample ``i`` came from: the column of a row object, the cell of
    a numeric list sent in the model's own layout, else the sample."""
    if isinstance(item, np.ndarray):  # decoded tensor data (the v2 protocol): named as its list would be
        item = item.tolist()
    if isinstance(item, dict):
        column = feature_of(artifact.preprocessing, j)
        return (i, column) if column in item else (i,)
    if isinstance(item, list) and tuple(_shape_of(item)) == shape:
        return (i, *(int(k) for k in np.unravel_index(j, shape)))
    return (i,)


# ------------------------------------------------------------------------------ numbers
def _numeric_batch(spec: InputSpec, inputs: list[Any]) -> torch.Tensor | None:
    """All items as one numpy conversion when they form a clean numeric array (the usual
    case, and fast); None sends the request down the per-item path that names the bad field."""
    try:
        arr = np.asarray(inputs)
    except (ValueError, TypeError, OverflowError):  # ragged or mixed lists
        return None
    if arr.dtype.kind not in "iuf" or arr.shape[1:] != spec.shape or holds_bool(inputs, arr.ndim - 1):
        return None
    if spec.integer:
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr) & (np.mod(arr, 1) == 0)):
            return None
        if spec.vocab_size is not None and arr.size and (arr.min() < 0 or arr.max() >= spec.vocab_size):
            return None
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.int64))
    x = arr.astype(np.float32)
    if not np.all(np.isfinite(x)):
        return None
    return torch.from_numpy(np.ascontiguousarray(x))


def holds_bool(items: list, depth: int) -> bool:
    """Whether a rectangular nested list with ``depth`` list levels above its numbers holds a
    JSON true/false: numpy reads them as 1 and 0, but a boolean is not a number.

    Example:
        >>> holds_bool([[[1, 2], [3, 4]], [[5, 6], [7, True]]], 2), holds_bool([[1.5, 2]], 1)
        (True, False)
    """
    if isinstance(items, np.ndarray):  # decoded tensor data (the v2 protocol): no JSON in sight
        return items.dtype.kind == "b"
    for _ in range(depth):  # flattened level by level in C: no Python frame per row
        items = chain.from_iterable(items)
    return bool in map(type, items)


def _numeric_item(spec: InputSpec, item: list, loc: tuple[int | str, ...]) -> torch.Tensor:
    """One sample given as (nested) numbers, checked value by value."""
    _check_nested(item, spec.shape, loc, spec)
    dtype = np.int64 if spec.integer else np.float32
    return torch.from_numpy(np.ascontiguousarray(np.asarray(item, dtype=np.float64).astype(dtype)))


def _check_nested(value: Any, shape: tuple[int, ...], loc: tuple[int | str, ...], spec: InputSpec) -> None:
    if not shape:
        _check_number(value, loc, spec)
        return
    if not isinstance(value, list) or len(value) != shape[0]:
        raise Invalid(loc, f"expected shape {list(shape)}, got {_shape_of(value)}")
    for j, sub in enumerate(value):
        _check_nested(sub, shape[1:], (*loc, j), spec)


def _check_number(value: Any, loc: tuple[int | str, ...], spec: InputSpec) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        what = "an integer token id" if spec.integer else "a number"
        raise Invalid(loc, f"expected {what}, got {type_name(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise Invalid(loc, "not a finite number")
    if spec.integer:
        if isinstance(value, float) and not value.is_integer():
            raise Invalid(loc, f"expected an integer token id, got {value!r}")
        if spec.vocab_size is not None and not 0 <= value < spec.vocab_size:
            raise Invalid(loc, f"token id {int(value)} is outside the vocabulary [0, {spec.vocab_size})")
    elif abs(value) > FLOAT32_MAX:
        raise Invalid(loc, "not a finite number (outside the float32 range)")


def _shape_of(value: Any) -> list[int]:
    """The shape a nested list claims, following first elements (scalars: [])."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def type_name(value: Any) -> str:
    names = {bool: "a boolean", str: "a string", dict: "an object", list: "a list", type(None): "null",
             int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)


# ------------------------------------------------------------------------------ images
def _pixel_batch(artifact: Artifact, inputs: list[Any]) -> torch.Tensor | None:
    """All items as one raw pixel array through the encoder; None when they are not one."""
    try:
        arr = np.asarray(inputs)
    except (ValueError, TypeError, OverflowError):  # ragged or mixed lists
        return None
    if arr.dtype.kind not in "iuf" or arr.ndim < 3 or not np.all(np.abs(arr) <= FLOAT32_MAX):
        return None  # (also refuses NaN); the item-by-item path names the field
    if holds_bool(inputs, arr.ndim - 1):
        return None
    try:
        return encode_raw(arr, artifact.preprocessing)
    except DlforgeError:
        return None


def _image_item(spec: InputSpec, artifact: Artifact, item: list | dict, loc: tuple[int | str, ...]) -> torch.Tensor:
    """One image: raw pixels as nested lists, or {"b64": ...} bytes; scaled and standardised (C, H, W)."""
    if isinstance(item, dict):
        return _image_bytes(artifact, item, loc)
    shape = tuple(_shape_of(item))
    if shape not in pixel_layouts(artifact.preprocessing["encoding"]):
        raise Invalid(loc, f"expected {spec.describe()}, got a list of shape {list(shape)}")
    _check_nested(item, shape, loc, spec)
    return encode_raw(np.asarray(item, dtype=np.float64), artifact.preprocessing)[0]


def _image_bytes(artifact: Artifact, item: dict, loc: tuple[int | str, ...]) -> torch.Tensor:
    if set(item) != {"b64"} or not isinstance(item["b64"], str):
        raise Invalid(loc, 'expected an object {"b64": "<base64 PNG or JPEG>"} with that one key')
    try:
        data = base64.b64decode(item["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise Invalid((*loc, "b64"), "not valid base64 (standard alphabet, with padding)") from None
    try:
        return encode_raw(data, artifact.preprocessing)[0]
    except ImageTooLargeError as err:
        raise ApiError(413, "payload_too_large", f"inputs[{loc[0]}]: {err.message}", hint=err.hint) from None
    except DlforgeError as err:
        raise Invalid((*loc, "b64"), _without_source(err)) from None


# ------------------------------------------------------------------------ text and rows
def _check_text(text: str, loc: tuple[int | str, ...]) -> None:
    problem = text_problem(text)
    if problem:
        raise Invalid(loc, problem)


def _check_record(record: dict, loc: tuple[int | str, ...], numeric_columns: set[str]) -> None:
    for column, value in record.items():
        if text_problem(column):  # not echoed in the field's path either: JSON could not carry it
            raise Invalid(loc, "a column name is not valid Unicode (a lone surrogate); send UTF-8 text")
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise Invalid((*loc, column), f"expected a string, a number or null, got {type_name(value)}")
        if isinstance(value, bool) and column in numeric_columns:
            raise Invalid((*loc, column), "expected a number, got a boolean (the column is numeric)")
        if isinstance(value, float) and not math.isfinite(value):
            raise Invalid((*loc, column), "not a finite number")
        if isinstance(value, str):
            _check_text(value, (*loc, column))


def _encode_records(
    artifact: Artifact, records: list[dict], where: list[int]
) -> tuple[list[torch.Tensor], list[tuple[tuple[int | str, ...], str]]]:
    """Raw rows through the stored preprocessing; on failure, row by row to name the bad one.
    (Values that overflow once standardised come back as they are: the caller names their column.)"""
    try:
        return list(encode_raw(records, artifact.preprocessing)), []  # (N, F)
    except DlforgeError:
        pass
    rows, errors = [], []
    for i, record in zip(where, records):
        try:
            rows.append(encode_raw([record], artifact.preprocessing)[0])
        except DlforgeError as err:
            errors.append(((i,), _without_source(err)))
        if len(errors) >= MAX_ERRORS:
            break
    return ([], errors) if errors else (rows, [])


def _without_source(err: DlforgeError) -> str:
    """The data layer's message without its "the given rows: " prefix and row number, plus the hint."""
    msg = err.message.removeprefix("the given rows: ").replace(" at row 1", "").replace(" row 1", " it")
    return f"{msg} ({err.hint})" if err.hint else msg


# ------------------------------------------------------------------------------ ranges


# ---------------------------------------------------------------------- bounds and outputs


