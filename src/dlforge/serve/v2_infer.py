"""The Open Inference Protocol's work, apart from any transport: what an infer request asks the
prediction service, the tensors of its answer, a model's metadata, and the error each failure is.

The REST routes (:mod:`dlforge.serve.routers.v2`) and the gRPC service (:mod:`dlforge.serve.grpc_v2`)
both call :func:`infer_outputs`, :func:`describe_model`, :func:`chosen_version` and
:func:`error_of`, and only decode and encode around them. Every dlforge model takes one input named
``input`` (:data:`INPUT`); a table may instead come one tensor per column (see :func:`model_input`).

Example:
    >>> error_of(NotFoundError("model 'x' is not served here"), "r1")[:2]
    (404, "model 'x' is not served here")
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from dlforge.errors import DlforgeError, NotFoundError
from dlforge.registry.names import validate_name
from dlforge.serve.batching import QueueFullError
from dlforge.serve.errors import error_status, scrub
from dlforge.serve.pool import LoadedModel, ModelPool
from dlforge.serve.schemas import PredictResponse
from dlforge.serve.security import v2_error_body
from dlforge.serve.service import PredictionService
from dlforge.serve.v2_codec import InferRequest, ModelMetadata, Output, TensorError, TensorMetadata

log = logging.getLogger("dlforge.serve")
INPUT = "input"  # the one input of every dlforge model


def error_of(exc: Exception, rid: str) -> tuple[int, str, dict[str, str]]:
    """(HTTP status, the protocol's error message, extra headers) of ``exc``: one mapping for REST and gRPC.

    Example:
        >>> error_of(NotFoundError("model 'x' is not served here"), "r1")[:2]
        (404, "model 'x' is not served here")
    """
    headers: dict[str, str] = {}
    hint: str | None = None
    if isinstance(exc, RequestValidationError):
        status, message = 400, "; ".join(_field_message(e) for e in exc.errors())
    elif isinstance(exc, HTTPException):
        status, message, hint = exc.status_code, str(exc.detail), getattr(exc, "hint", None)
        headers = dict(exc.headers or {})
    elif isinstance(exc, QueueFullError):
        retry = max(1, round(getattr(exc, "retry_after", 1.0)))
        status, message, headers = 429, f"the model's request queue is full; retry after {retry} s", {
            "Retry-After": str(retry)}
    elif isinstance(exc, DlforgeError):
        status, message, hint = error_status(exc), exc.message, exc.hint
    else:
        log.error("unhandled error in V2 request %s", rid, exc_info=exc)
        status, message = 500, "internal error"
    return status, scrub(v2_error_body(message, hint)["error"]), headers


def _field_message(error: dict[str, Any]) -> str:
    """A v1 field error (``loc`` ``("body", "inputs", 1, 0, 2)``) named in V2 terms."""
    loc = tuple(error.get("loc", ()))
    if loc[:2] == ("body", "inputs"):
        rest = loc[2:]
        where = f"inputs[0] ({INPUT!r})" + (f" sample {rest[0]}" if rest else "")
        where += f" at {list(rest[1:])}" if len(rest) > 1 else ""
    else:
        where = ".".join(str(p) for p in loc if p not in ("body", "path"))
    return f"{where}: {error.get('msg', '')}"


def _version_or_alias(segment: str | None) -> tuple[int | None, str | None]:
    """``/versions/{segment}``: a number is a registry version, a name an alias."""
    if segment is None:
        return None, None
    if segment.isdigit():
        if int(segment) < 1:
            raise TensorError("versions start at 1", hint="GET /v1/models/{name} lists the versions")
        return int(segment), None
    return None, validate_name(segment, "alias")


def chosen_version(pool: ModelPool, name: str, segment: str | None) -> LoadedModel:
    """The version a metadata route (REST or gRPC) describes: the one named, else ``production``, else the latest."""
    version, alias = _version_or_alias(segment)
    if version is not None or alias is not None:
        return pool.resolve(name, version=version, alias=alias, sticky_id=None)[0]
    try:
        return pool.resolve(name, version=None, alias="production", sticky_id=None)[0]
    except NotFoundError:
        loaded = pool.loaded(name)
        if not loaded:
            return pool.resolve(name, version=None, alias=None, sticky_id=None)[0]  # raises what is wrong
        return loaded[max(loaded)]


def tensor_metadata(model: LoadedModel) -> tuple[list[TensorMetadata], list[TensorMetadata]]:
    """The inputs and outputs a model answers on V2 (see the module docstring)."""
    spec, meta = model.inputs, model.artifact.meta
    shape = list(spec.shape)
    classes = len(meta.get("class_names") or []) or int(meta.get("spec", {}).get("num_outputs") or -1)
    if meta.get("task") == "segmentation":
        dims = int((meta.get("preprocessing") or {}).get("encoding", {}).get("spatial_dims", 2))
        inputs = [TensorMetadata(name=INPUT, datatype="FP32", shape=[-1, shape[0] if shape else -1] + [-1] * dims)]
        return inputs, [TensorMetadata(name="mask", datatype="BYTES", shape=[-1]),
                        TensorMetadata(name="areas", datatype="INT64", shape=[-1, classes])]
    if spec.kind == "text":
        inputs = [TensorMetadata(name=INPUT, datatype="BYTES", shape=[-1]) if spec.has_tokenizer
                  else TensorMetadata(name=INPUT, datatype="INT64", shape=[-1, *shape])]
    else:
        inputs = [TensorMetadata(name=INPUT, datatype="FP32", shape=[-1, *shape])]
    if meta.get("task") == "classification":
        return inputs, [TensorMetadata(name="probabilities", datatype="FP32", shape=[-1, classes]),
                        TensorMetadata(name="label", datatype="BYTES", shape=[-1]),
                        TensorMetadata(name="label_index", datatype="INT64", shape=[-1])]
    return inputs, [TensorMetadata(name="values", datatype="FP32", shape=[-1, classes])]


def describe_model(pool: ModelPool, name: str, version: str | None) -> ModelMetadata:
    """The metadata of ``name`` (``version``: a number, an alias, or None for the default version)."""
    inputs, outputs = tensor_metadata(chosen_version(pool, name, version))
    return ModelMetadata(name=name, versions=[str(v) for v in sorted(pool.loaded(name))], platform="dlforge_pytorch",
                         inputs=inputs, outputs=outputs)


async def infer_outputs(service: PredictionService, name: str, version: str | None, infer_request: InferRequest,
                        tensors: list[np.ndarray | list[str]], *, request_id: str, headers: Mapping[str, str],
                        correlation_id: str | None) -> tuple[dict[str, Any], list[Output], set[str]]:
    """(response header, outputs, names asked as binary) of a decoded infer request: the one V2 infer, no transport.

    ``version`` is the path's ``/versions/{v}`` segment (a number or an alias; None: the traffic
    split and the aliases choose); REST and gRPC both call this and only encode the answer.

    Example:
        >>> header, outputs, binary = await infer_outputs(service, "iris", None, req, tensors,  # doctest: +SKIP
        ...                                               request_id="r1", headers={}, correlation_id=None)
        >>> header["model_version"], [o.name for o in outputs]  # doctest: +SKIP
        ('1', ['probabilities', 'label', 'label_index'])
    """
    number, alias = _version_or_alias(version)
    asked = (infer_request.parameters or {}).get("alias")
    if asked is not None:
        if not isinstance(asked, str) or alias is not None:
            raise TensorError("parameters.alias: expected an alias name (and no alias in the path as well)")
        alias = asked
    answer = await service.predict(name, model_input(infer_request, tensors), version=number, alias=alias,
                                   headers=headers, request_id=request_id, correlation_id=correlation_id)
    selected, binary = select_outputs(infer_request, answer_outputs(answer))
    parameters: dict[str, Any] = {"request_id": request_id, "variant": answer.variant}
    if answer.warnings:
        parameters["warnings"] = "; ".join(w.message for w in answer.warnings)
    return ({"model_name": name, "model_version": str(answer.version), "id": infer_request.id or request_id,
             "parameters": parameters}, selected, binary)


def model_input(infer_request: InferRequest,
                tensors: list[np.ndarray | list[str]]) -> np.ndarray | list[str] | list[dict[str, Any]]:
    """The one input as the service takes it: float32 or int64 numpy (batch first), or a list of texts;
    or, for a table sent one tensor per column (named after the columns, as MLServer's pandas codec
    does: BYTES for text columns), one record per row, checked against the model's columns like v1's.

    Example:
        >>> model_input(req, [np.ones((2, 4), np.float64)]).dtype  # doctest: +SKIP
        dtype('float32')
    """
    if infer_request.inputs and all(t.name != INPUT and (len(t.shape) == 1 or t.shape[1:] == [1])
                                    for t in infer_request.inputs):  # column tensors: [B] or [B, 1] each
        return _records(infer_request, tensors)
    if len(infer_request.inputs) != 1 or infer_request.inputs[0].name != INPUT:
        names = [t.name for t in infer_request.inputs]
        raise TensorError(f"inputs: dlforge models take one input named {INPUT!r}, got {names}",
                          hint="GET /v2/models/{name} describes it")
    tensor, value = infer_request.inputs[0], tensors[0]
    if tensor.shape[0] < 1:
        raise TensorError("inputs[0].shape: the batch size (the first dimension) must be at least 1")
    if isinstance(value, list):  # BYTES: one text per sample
        if len(tensor.shape) > 2 or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
            raise TensorError(f"inputs[0].shape: BYTES texts take shape [B] or [B, 1], got {tensor.shape}")
        return value
    if value.dtype == np.bool_:
        raise TensorError("inputs[0].datatype: BOOL is not a number; send FP32 (or INT64 token ids)")
    if value.dtype.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):
            x = value.astype(np.float32)  # a copy: torch takes only writable arrays
        if not np.all(np.isfinite(x)):  # NaN in binary data, or FP64 beyond float32
            j = int(np.flatnonzero(~np.isfinite(x))[0])
            raise TensorError(f"inputs[0].data[{j}]: not a finite number (NaN, infinity or beyond float32's range)")
        return x
    if value.dtype == np.uint64 and value.size and value.max() > np.iinfo(np.int64).max:
        raise TensorError("inputs[0].data: a value is above the INT64 range")
    return value.astype(np.int64)


def _records(infer_request: InferRequest, tensors: list[np.ndarray | list[str]]) -> list[dict[str, Any]]:
    """One record per row from column tensors, each of shape [B] or [B, 1] (the same B for all)."""
    columns: dict[str, list[Any]] = {}
    for i, (tensor, value) in enumerate(zip(infer_request.inputs, tensors)):
        if tensor.name in columns:
            raise TensorError(f"inputs[{i}].name: column {tensor.name!r} is sent twice")
        if not isinstance(value, list) and value.dtype == np.bool_:
            raise TensorError(f"inputs[{i}].datatype: BOOL is not a number; send FP32 (or BYTES for a text column)")
        columns[tensor.name] = list(value) if isinstance(value, list) else value.reshape(-1).tolist()
    sizes = {len(v) for v in columns.values()}
    if len(sizes) != 1 or 0 in sizes:
        raise TensorError(f"inputs: every column tensor needs the same batch size of at least 1, got "
                          f"{ {k: len(v) for k, v in columns.items()} }")
    return [{name: values[row] for name, values in columns.items()} for row in range(sizes.pop())]


def answer_outputs(answer: PredictResponse) -> list[Output]:
    """The V2 output tensors of a predict answer (see the module docstring)."""
    if answer.probabilities is not None:  # classification
        names = [str(c) for c in answer.class_names or []]
        labels = [str(label) for label in answer.outputs]
        return [Output("probabilities", "FP32", np.asarray(answer.probabilities, dtype=np.float32)),
                Output("label", "BYTES", labels),
                Output("label_index", "INT64", np.asarray([names.index(x) for x in labels], dtype=np.int64))]
    if answer.outputs and not isinstance(answer.outputs[0], (int, float, list)):  # segmentation
        names = answer.class_names or sorted(answer.outputs[0].areas)
        return [Output("mask", "BYTES", [s.mask.b64 or "" for s in answer.outputs]),
                Output("areas", "INT64", np.asarray([[s.areas.get(c, 0) for c in names] for s in answer.outputs],
                                                    dtype=np.int64))]
    values = np.asarray(answer.outputs, dtype=np.float32)
    return [Output("values", "FP32", values.reshape(len(values), -1))]


def select_outputs(infer_request: InferRequest, outputs: list[Output]) -> tuple[list[Output], set[str]]:
    """(the outputs asked for, in the order asked, else all; the names to send as binary data)."""
    default = (infer_request.parameters or {}).get("binary_data_output", False)
    if not isinstance(default, bool):
        raise TensorError("parameters.binary_data_output: expected true or false")
    if infer_request.outputs is None:
        return outputs, {o.name for o in outputs} if default else set()
    by_name = {o.name: o for o in outputs}
    selected, binary = [], set()
    for i, asked in enumerate(infer_request.outputs):
        if asked.name not in by_name:
            raise TensorError(f"outputs[{i}].name: unknown output {asked.name!r} (this model answers {list(by_name)})")
        flag = (asked.parameters or {}).get("binary_data", default)
        if not isinstance(flag, bool):
            raise TensorError(f"outputs[{i}].parameters.binary_data: expected true or false")
        selected.append(by_name[asked.name])
        if flag:
            binary.add(asked.name)
    return selected, binary
