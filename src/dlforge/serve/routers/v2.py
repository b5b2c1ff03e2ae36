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
413/429/503 as on v1. What an infer does apart from HTTP lives in :mod:`dlforge.serve.v2_infer`, which
gRPC (``dlforge serve --grpc-port``, :mod:`dlforge.serve.grpc_v2`) calls too.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

import dlforge
from dlforge.serve.dependencies import bearer, get_pool, get_service, model_name, require_predict_key
from dlforge.serve.pool import ModelPool
from dlforge.serve.routers.predict import checked_model_name, read_body
from dlforge.serve.security import correlation_id, request_id
from dlforge.serve.service import PredictionService
from dlforge.serve.v2_codec import InferRequest, ModelMetadata, ServerMetadata, TensorError, decode_request, encode_response
from dlforge.serve.v2_infer import chosen_version, describe_model, error_of, infer_outputs

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


def _header_length(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.strip().isdigit():
        raise TensorError(f"{HEADER_LENGTH}: expected a byte count, got {value[:20]!r}")
    return int(value)


router = APIRouter()
router.include_router(open_router)
router.include_router(models_router)
