"""The Open Inference Protocol (KServe V2) over REST, beside ``/v1``: the same models, keys and service.

Routes (``{v}`` is a registry version number, or an alias name: ``/versions/production``)::

    GET  /v2                                   server metadata (extensions: binary_tensor_data)
    GET  /v2/health/live, /v2/health/ready     open, like /healthz and /readyz
    GET  /v2/models/{name}[/versions/{v}]      model metadata (a predict key, like GET /v1/models/{name})
    GET  /v2/models/{name}[/versions/{v}]/ready
    POST /v2/models/{name}[/versions/{v}]/infer

An infer request goes through :meth:`PredictionService.predict`, as ``/v1`` predict does: without
a version the traffic split (sticky header included), then ``production``, then the latest version
answers; an alias is chosen by the path (``/versions/candidate``) or by the request's
``parameters.alias``. A table may also be sent one tensor per column, named after its columns (BYTES
for a text column; MLServer's pandas-codec convention), checked like v1's records. Otherwise every
model takes one input named ``input``, batch first: FP32 (any numeric
datatype is read as numbers) of the model's sample shape for tables, series and images (raw pixels
in the source's units, ``[-1, C, H, W]``; UINT8 is fine), BYTES ``[-1]`` strings or INT64 token ids
for text models. Outputs: ``probabilities`` FP32 ``[B, C]``, ``label`` BYTES ``[B]`` (class names)
and ``label_index`` INT64 ``[B]`` for classifiers; ``values`` FP32 ``[B, K]`` for regression;
``mask`` BYTES ``[B]`` (base64 PNG, TIFF for 3D) and ``areas`` INT64 ``[B, C]`` for segmentation.
The response's ``id`` echoes the request's (else the server's request id); its ``parameters`` carry
``request_id`` (quote it in ``/v1/models/{name}/feedback``), ``variant`` and any range ``warnings``.

Errors are the protocol's ``{"error": "<message>"}``: 400 for anything wrong in the request (v1's
422s included, naming the field), 401/403 for keys, 404 for an unknown model, version or alias,
413/429/503 as on v1. gRPC (``dlforge serve --grpc-port``, :mod:`dlforge.serve.grpc_v2`) calls the same
functions: :func:`infer_outputs`, :func:`describe_model`, :func:`chosen_version` and :func:`error_of`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

import dlforge
from dlforge.errors import DlforgeError, NotFoundError
from dlforge.registry.names import validate_name
from dlforge.serve.batching import QueueFullError
from dlforge.serve.dependencies import bearer, get_pool, get_service, model_name, require_predict_key
from dlforge.serve.errors import error_status, scrub
from dlforge.serve.pool import LoadedModel, ModelPool
from dlforge.serve.schemas import PredictResponse
from dlforge.serve.routers.predict import checked_model_name, read_body
from dlforge.serve.security import correlation_id, request_id, v2_error_body
from dlforge.serve.service import PredictionService
from dlforge.serve.v2_codec import (
    InferRequest,
    ModelMetadata,
    Output,
    ServerMetadata,
    TensorError,
    TensorMetadata,
    decode_request,
    encode_response,
)

log = logging.getLogger("dlforge.serve")
INPUT = "input"  # the one input of every dlforge model
HEADER_LENGTH = "Inference-Header-Content-Length"


def v2_error(request: Request, exc: Exception) -> JSONResponse:
    """The protocol's error object ``{"error": "..."}`` for ``exc``, with the status v1 would give it
    (a validation error, 422 on v1, is a 400 here, as the protocol asks).

    Example:
        >>> v2_error(request, NotFoundError("model 'x' is not served here")).status_code  # doctest: +SKIP
        404
    """
    status, message, headers = error_of(exc, request_id(request))
    return JSONResponse({"error": message}, status_code=status, headers={**headers, "X-Request-Id": request_id(request)})


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


class V2Route(APIRoute):
    """A route whose every error, dependencies' (keys, names) included, is the protocol's error object."""

    def get_route_handler(self):  # noqa: ANN201  (FastAPI's own signature)
        handler = super().get_route_handler()

        async def v2_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:  # noqa: BLE001  (answered, and a 500 is logged in v2_error)
                return v2_error(request, exc)

        return v2_handler


class V2InferRoute(APIRoute):
    """The infer routes: documented from their endpoints' signatures, served by :func:`_fast_infer`,
    which makes the same key check, name check and service lookup itself. FastAPI's dependency
    resolution was a third of a V2 request's server time (as for v1's predict, routers/predict.py)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return _fast_infer


async def _fast_infer(request: Request) -> Response:
    """What FastAPI does for :func:`infer` / :func:`version_infer`, in its order: key, name, version."""
    try:
        await require_predict_key(request, await bearer(request))
        name = checked_model_name(request.path_params["name"])
        version = request.path_params.get("version")
        if version is not None and len(version) > 128:
            raise TensorError("version: at most 128 characters (a version number or an alias name)")
        service = await request.app.dependency_overrides.get(get_service, get_service)(request)
        return await _infer(request, name, version, service, body=await read_body(request))
    except Exception as exc:  # noqa: BLE001  (answered, and a 500 is logged in v2_error)
        return v2_error(request, exc)


open_router = APIRouter(prefix="/v2", tags=["v2"], route_class=V2Route)
models_router = APIRouter(prefix="/v2/models", tags=["v2"], route_class=V2Route,
                          dependencies=[Depends(require_predict_key)])


# ---------------------------------------------------------------------------- server
@open_router.get("", response_model=ServerMetadata)
async def server_metadata() -> ServerMetadata:
    """Server name, version and protocol extensions."""
    return ServerMetadata(name="dlforge", version=dlforge.__version__, extensions=["binary_tensor_data"])


@open_router.get("/health/live")
async def live() -> dict[str, bool]:
    """The process is up (as ``/healthz``)."""
    return {"live": True}


@open_router.get("/health/ready")
async def ready(pool: ModelPool = Depends(get_pool)) -> JSONResponse:
    """200 once every served model has a loaded version, 503 before (as ``/readyz``)."""
    is_ready = pool.ready()
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


# ---------------------------------------------------------------------------- models
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


def _ready(pool: ModelPool, name: str, version: str | None) -> JSONResponse:
    chosen_version(pool, name, version)  # 404 unknown, 503 unhealthy
    return JSONResponse({"name": name, "ready": True})


VERSION = Path(description="a registry version number, or an alias name", max_length=128)


@models_router.get("/{name}", response_model=ModelMetadata)
async def model_metadata(name: str = Depends(model_name), pool: ModelPool = Depends(get_pool)) -> ModelMetadata:
    """A model's loaded versions, and the inputs and outputs of its default version (production, else the latest)."""
    return describe_model(pool, name, None)


@models_router.get("/{name}/versions/{version}", response_model=ModelMetadata)
async def version_metadata(name: str = Depends(model_name), version: str = VERSION,
                           pool: ModelPool = Depends(get_pool)) -> ModelMetadata:
    """A model's loaded versions, and the inputs and outputs of the version (or alias) named."""
    return describe_model(pool, name, version)


@models_router.get("/{name}/ready")
async def model_ready(name: str = Depends(model_name), pool: ModelPool = Depends(get_pool)) -> JSONResponse:
    """200 ``{"ready": true}`` when the default version is loaded and healthy (404 unknown, 503 unhealthy)."""
    return _ready(pool, name, None)


@models_router.get("/{name}/versions/{version}/ready")
async def version_ready(name: str = Depends(model_name), version: str = VERSION,
                        pool: ModelPool = Depends(get_pool)) -> JSONResponse:
    """200 ``{"ready": true}`` when the version (or alias) named is loaded and healthy."""
    return _ready(pool, name, version)


# ---------------------------------------------------------------------------- infer
def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its ``$defs`` written in place (an OpenAPI request body has no ``$defs``)."""
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            return inline(defs[node["$ref"].rsplit("/", 1)[-1]]) if "$ref" in node else {
                k: inline(v) for k, v in node.items()}
        return [inline(v) for v in node] if isinstance(node, list) else node

    return inline(schema)


# The body is read by the codec, not by FastAPI (binary tensor data follows the JSON): documented here.
INFER_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": _inlined(InferRequest.model_json_schema())},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary",
                                            "description": f"a JSON header of {HEADER_LENGTH} bytes, then the "
                                                           "inputs' binary tensor data in order"}}}}}


async def infer(request: Request, name: str = Depends(model_name),
                service: PredictionService = Depends(get_service)) -> Response:
    """Predict the one input tensor with the version ``parameters.alias``, the traffic split or the aliases
    choose; JSON or binary tensor data in and out."""
    return await _infer(request, name, None, service)


async def version_infer(request: Request, name: str = Depends(model_name), version: str = VERSION,
                        service: PredictionService = Depends(get_service)) -> Response:
    """Predict the one input tensor with the version (or alias) named; JSON or binary tensor data in and out."""
    return await _infer(request, name, version, service)


for _path, _endpoint in (("/{name}/infer", infer), ("/{name}/versions/{version}/infer", version_infer)):
    models_router.add_api_route(_path, _endpoint, methods=["POST"], openapi_extra=INFER_BODY,
                                route_class_override=V2InferRoute)


async def _infer(request: Request, name: str, version: str | None, service: PredictionService, *,
                 body: bytes | None = None) -> Response:
    header_length = _header_length(request.headers.get(HEADER_LENGTH))
    infer_request, tensors = decode_request(await request.body() if body is None else body, header_length)
    header, selected, binary = await infer_outputs(service, name, version, infer_request, tensors,
                                                   request_id=request_id(request), headers=request.headers,
                                                   correlation_id=correlation_id(request))
    body, size = encode_response(header, selected, binary)
    if size is None:
        return Response(body, media_type="application/json")
    return Response(body, media_type="application/octet-stream", headers={HEADER_LENGTH: str(size)})


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


def _header_length(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.strip().isdigit():
        raise TensorError(f"{HEADER_LENGTH}: expected a byte count, got {value[:20]!r}")
    return int(value)


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


router = APIRouter()
router.include_router(open_router)
router.include_router(models_router)
