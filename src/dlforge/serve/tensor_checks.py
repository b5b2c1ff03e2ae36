"""Checks on a request's encoded tensor and on the model's outputs, and the 422 they raise.

:func:`invalid` builds a 422 in FastAPI's own format (one handler formats every validation
error); :func:`range_warnings` names inputs far outside their training range (answered, with a
warning); :func:`check_tokens` caps a text request's tokens (413); :func:`check_outputs` refuses
non-finite answers, so no response carries null numbers. :func:`all_finite` and the cached
range bounds keep the usual request at one min and one max.

Example:
    >>> all_finite(torch.tensor([1.0, 2.0])), all_finite(torch.tensor([1.0, float("inf")]))
    (True, False)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from fastapi.exceptions import RequestValidationError

from dlforge.registry.artifact import Artifact
from dlforge.registry.reference import FAR_WIDTHS, MIN_WIDTH, out_of_range
from dlforge.serve.errors import ApiError

MAX_ERRORS = 10  # a 422 lists at most this many fields: a huge bad request must not echo back

NON_FINITE_OUTPUT = ("the model produced a non-finite output (NaN or infinity) for this input; its values "
                     "are likely far outside the training range: check their units")

NUMPY_FLOATS = (torch.float32, torch.float64)

_BOUNDS: dict[int, tuple[Any, float, float]] = {}  # id(ranges) -> (ranges, highest lower limit, lowest upper limit)


class Invalid(Exception):
    """One bad field: where (path below ``inputs``) and why."""

    def __init__(self, loc: tuple[int | str, ...], msg: str) -> None:
        super().__init__(msg)
        self.loc, self.msg = loc, msg


def invalid(errors: list[tuple[tuple[int | str, ...], str]]) -> RequestValidationError:
    """A 422 in FastAPI's own format, so one handler formats every validation error.

    Example:
        >>> invalid([((3,), "expected shape [4], got [5]")]).errors()[0]["loc"]
        ('body', 'inputs', 3)
    """
    return RequestValidationError(
        [{"loc": ("body", "inputs", *loc), "msg": msg, "type": "value_error"} for loc, msg in errors[:MAX_ERRORS]]
    )


def range_warnings(artifact: Artifact, x: torch.Tensor) -> list[dict[str, Any]]:
    """Warnings for encoded inputs ``x`` far outside the training range stored with the artifact
    (:func:`dlforge.registry.reference.out_of_range`), each with a message.

    Example:
        >>> range_warnings(art, torch.full((1, 4), 1e6))[0]["message"]  # doctest: +SKIP
        'inputs[0]: x0 reaches 1e+06 (standardised), far outside the training range [-2.1, 2.3]; ...'
    """
    reference = artifact.meta.get("training", {}).get("reference")
    if inside_every_range(x, reference):
        return []
    found = out_of_range(x, reference, artifact.preprocessing)
    for w in found:
        lo, hi = w["training_range"]
        w["message"] = (f"inputs[{w['input']}]: {w['feature']} reaches {w['value']:.4g} (standardised), far outside "
                        f"the training range [{lo:.4g}, {hi:.4g}]; answered, but check its units")
    return found


def all_finite(x: torch.Tensor) -> bool:
    """Whether every value of ``x`` is finite (numpy for float32/64 CPU tensors: a quarter of torch's
    per-call cost on the small tensors of one request).

    Example:
        >>> all_finite(torch.tensor([1.0, 2.0])), all_finite(torch.tensor([1.0, float("inf")]))
        (True, False)
    """
    if x.dtype in NUMPY_FLOATS and x.device.type == "cpu":
        return bool(np.isfinite(x.numpy() if not x.requires_grad else x.detach().numpy()).all())
    return bool(torch.isfinite(x).all())


def inside_every_range(x: torch.Tensor, reference: Any) -> bool:
    """True when no value of ``x`` can be far outside any feature's training range: every value lies
    between the highest of the features' lower limits and the lowest of their upper limits
    (:func:`~dlforge.registry.reference.out_of_range`'s limits). Two reductions instead of a
    per-feature view; False means "ask out_of_range", not that a warning is due."""
    bounds = range_bounds(reference)
    if bounds is None or x.dtype not in NUMPY_FLOATS or x.numel() == 0:
        return bounds is None
    values = x.detach().cpu().numpy()
    return bool(values.min() >= bounds[0] and values.max() <= bounds[1])


def range_bounds(reference: Any) -> tuple[float, float] | None:
    """(highest lower limit, lowest upper limit) of the features' "far outside" limits, cached per
    reference; None when the reference has no ranges."""
    ranges = reference.get("ranges") if isinstance(reference, dict) else None
    if not ranges:
        return None
    cached = _BOUNDS.get(id(ranges))
    if cached is None or cached[0] is not ranges:
        lo, hi = np.asarray(ranges["min"], dtype=np.float64), np.asarray(ranges["max"], dtype=np.float64)
        width = np.maximum(hi - lo, MIN_WIDTH)
        if len(_BOUNDS) > 256:  # bounded: one entry per loaded artifact
            _BOUNDS.clear()
        cached = _BOUNDS[id(ranges)] = (ranges, float((lo - FAR_WIDTHS * width).max()),
                                        float((hi + FAR_WIDTHS * width).min()))
    return cached[1], cached[2]


def check_tokens(artifact: Artifact, x: torch.Tensor, max_tokens: int) -> None:
    """Refuse (413) a text request whose token ids, padding excluded, exceed ``max_tokens`` in all.

    Tokens are counted after tokenisation and truncation to the model's ``max_len``, over every
    item (texts and token-id lists alike); other models pass.

    Example:
        >>> check_tokens(text_art, torch.tensor([[101, 7592, 102, 0]] * 3), max_tokens=8)  # doctest: +SKIP
        Traceback (most recent call last):
        ...
        dlforge.serve.errors.ApiError: 413: this request holds 9 text tokens ...
    """
    if x.dtype != torch.int64 or x.numel() <= max_tokens:
        return
    pad = (artifact.preprocessing.get("encoding") or {}).get("pad_id")
    per_item = (x != pad).sum(dim=1) if pad is not None else torch.full((len(x),), x.shape[1])
    total = int(per_item.sum())
    if total <= max_tokens:
        return
    longest = int(per_item.max())
    fit = max_tokens // longest
    hint = (f"split the inputs into requests of at most {fit} items (the longest holds {longest} tokens)"
            if fit else f"one item holds {longest} tokens: ask the operator to raise the server's max_tokens")
    raise ApiError(413, "payload_too_large", f"this request holds {total} text tokens after tokenisation and "
                   f"truncation, above this server's cap of {max_tokens} per request", hint=hint)


def check_outputs(outputs: dict[str, Any]) -> None:
    """Refuse (422) the samples whose probabilities or values are NaN or infinite, naming them:
    an answer must never carry null numbers.

    Example:
        >>> check_outputs({"values": torch.tensor([[1.0], [float("nan")]])})
        Traceback (most recent call last):
        ...
        fastapi.exceptions.RequestValidationError: 1 validation error:
          {'loc': ('body', 'inputs', 1), 'msg': 'the model produced a non-finite output ...', 'type': 'value_error'}
    """
    out = outputs.get("probabilities", outputs.get("values"))
    if not isinstance(out, torch.Tensor) or all_finite(out):
        return
    bad = (~torch.isfinite(out.reshape(len(out), -1))).any(dim=1).nonzero().flatten().tolist()
    raise invalid([((i,), NON_FINITE_OUTPUT) for i in bad])
