"""Predictions and what they teach: predict, feedback, the A/B experiment and input drift.

``POST /v1/models/{name}/predict`` answers with the version the request names (explicit
version or alias), else the traffic split, else ``production``, else the latest. The
handlers only parse and shape: resolving, leasing, encoding, the retry on a hot swap, the
shadow copy, the experiment record and the metrics are :mod:`dlforge.serve.service`'s.

Example (with ``requests``-like clients)::

    POST /v1/models/iris/predict  {"inputs": [[5.1, 3.5, 1.4, 0.2]]}
    -> {"request_id": "9c1e...", "model": "iris", "version": 2, "variant": "production",
        "outputs": ["setosa"], "probabilities": [[0.97, 0.02, 0.01]], ...}
    POST /v1/models/iris/feedback {"request_id": "9c1e...", "label": "setosa"}

``request_id`` is the server's id of the request (also its ``X-Request-Id`` header); a
client's own ``X-Request-Id`` only comes back as ``X-Correlation-Id`` and is stored beside
the record, so feedback quotes the server's id.

The predict route is the hot path, served by :class:`PredictRoute`: documented from the
endpoint's signature like any route, but each request is read without FastAPI's generic
machinery (dependency solving, the standard ``json`` module, the response model validated
again): the body is parsed with orjson (the standard module only for what orjson refuses:
NaN, lone surrogates, integers beyond 64 bits, non-UTF-8 text), the envelope is validated
once by :class:`PredictRequest`, and the answer is written by its own pydantic serializer.
Errors are FastAPI's own, in the same order (body syntax, key, name, envelope fields);
``tests/serve/test_fast_path.py`` holds the two side by side.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from dlforge.registry.names import validate_name
from dlforge.serve.dependencies import bearer, get_service, model_name, require_predict_key
from dlforge.serve.schemas import (
    DriftReport,
    DriftResponse,
    ExperimentResponse,
    FeedbackRequest,
    FeedbackResponse,
    PredictRequest,
    PredictResponse,
    error_responses,
)
from dlforge.serve.security import correlation_id, request_id
from dlforge.serve.service import PredictionService

router = APIRouter(prefix="/v1/models", tags=["predict"], dependencies=[Depends(require_predict_key)])
NO_BODY = object()
_to_json = PredictResponse.__pydantic_serializer__.to_json  # the bytes FastAPI's response model would write


def read_envelope(raw: bytes) -> PredictRequest:
    """A predict body as :class:`PredictRequest`, or FastAPI's own 422 (400 for undecodable bytes).

    Example:
        >>> read_envelope(b'{"inputs": [[5.1, 3.5, 1.4, 0.2]], "alias": "candidate"}').alias
        'candidate'
    """
    return _envelope(_parse(raw))


async def read_body(request: Request) -> bytes:
    """The body, straight from ``receive`` (Starlette's ``body()`` runs an async generator per request)."""
    chunks = []
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _parse(raw: bytes) -> Any:
    """The JSON body (NO_BODY when empty: FastAPI then answers "Field required" at ``body``)."""
    if not raw:
        return NO_BODY
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:  # NaN, lone surrogates, big integers, UTF-16/32: as FastAPI reads them
        pass
    try:
        return json.loads(raw)
    except json.JSONDecodeError as err:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", err.pos), "msg": "JSON decode error",
                                       "input": {}, "ctx": {"error": err.msg}}]) from None
    except Exception:  # bytes no text encoding reads (FastAPI answers the same)
        raise HTTPException(status_code=400, detail="There was an error parsing the body") from None


def _envelope(body: Any) -> PredictRequest:
    if body is NO_BODY:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    try:
        return PredictRequest.model_validate(body, from_attributes=True)  # as FastAPI validates a body
    except ValidationError as err:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in err.errors()]) from None


class PredictRoute(APIRoute):
    """A route documented from its endpoint's signature (body, key, name), but served by
    :func:`_fast_predict`, which calls the same key check, name check and endpoint itself
    (``app.dependency_overrides`` apply to ``get_service``, the one tests swap)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return _fast_predict


async def _fast_predict(request: Request) -> Response:
    """What FastAPI does for :func:`predict`, specialised, in its order: body, key, name, envelope."""
    body = _parse(await read_body(request))
    await require_predict_key(request, await bearer(request))
    name = checked_model_name(request.path_params["name"])
    service = await request.app.dependency_overrides.get(get_service, get_service)(request)
    answer = await predict(_envelope(body), request, name, service)
    return Response(_to_json(answer), media_type="application/json")


_NAMES: dict[str, str] = {}  # raw path name -> validated name (only valid ones; bounded)


def checked_model_name(raw: str) -> str:
    """``validate_name(raw, "model name")``, remembered for the names that pass (the served few)."""
    name = _NAMES.get(raw)
    if name is None:
        name = validate_name(raw, "model name")  # raises for a bad name: never cached
        if len(_NAMES) >= 1024:  # bounded: a scanner sending valid random names must not grow it
            _NAMES.clear()
        _NAMES[raw] = name
    return name


async def predict(body: PredictRequest, request: Request, name: str = Depends(model_name),
                  service: PredictionService = Depends(get_service)) -> PredictResponse:
    """Predict ``inputs`` with the version the request, the traffic split or the aliases choose."""
    return await service.predict(name, body.inputs, version=body.version, alias=body.alias,
                                 headers=request.headers, request_id=request_id(request),
                                 correlation_id=correlation_id(request), mask_format=body.mask_format)


router.add_api_route("/{name}/predict", predict, methods=["POST"], response_model=PredictResponse,
                     route_class_override=PredictRoute,
                     responses=error_responses(400, 401, 404, 413, 415, 422, 429, 500, 503))


@router.post("/{name}/feedback", response_model=FeedbackResponse, responses=error_responses(400, 401, 404, 422))
async def feedback(body: FeedbackRequest, name: str = Depends(model_name),
                   service: PredictionService = Depends(get_service)) -> FeedbackResponse:
    """Record the true label of an earlier request (by the ``request_id`` its predict response gave)."""
    # a thread: the record may live in the registry database (another replica served it)
    await asyncio.to_thread(service.feedback, name, body.request_id, body.label)
    return FeedbackResponse(request_id=body.request_id, recorded=True)


@router.get("/{name}/experiment", response_model=ExperimentResponse, responses=error_responses(400, 401, 404))
async def experiment(name: str = Depends(model_name),
                     service: PredictionService = Depends(get_service)) -> ExperimentResponse:
    """Requests, latency and accuracy per variant, and the significance test between two of them."""
    return ExperimentResponse(model=name, **await asyncio.to_thread(service.experiment, name))  # reads the database


@router.get("/{name}/drift", response_model=DriftResponse, responses=error_responses(400, 401, 404))
async def drift(name: str = Depends(model_name), service: PredictionService = Depends(get_service)) -> DriftResponse:
    """Each loaded version's live inputs and predictions against its training reference."""
    reports = [DriftReport(version=v, **report) for v, report in service.drift(name).items()]
    return DriftResponse(model=name, versions=reports)
