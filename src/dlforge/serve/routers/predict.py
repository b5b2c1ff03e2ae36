"""Predictions and what they teach: predict, feedback, the A/B experiment and input drift.

``POST /v1/models/{name}/predict`` resolves the answering version (explicit version or
alias, else the traffic split, else ``production``, else the latest), encodes the inputs
with that version's rules (:mod:`dlforge.serve.inputs`), waits for its batcher and records
the request in the model's experiment. With a shadow alias configured, the same inputs are
sent to the shadow version in a background task: its answer is recorded (variant
``shadow:<alias>``) but never changes the response or delays it.

Example (with ``requests``-like clients)::

    POST /v1/models/iris/predict  {"inputs": [[5.1, 3.5, 1.4, 0.2]]}
    -> {"request_id": "9c1e...", "model": "iris", "version": 2, "variant": "production",
        "outputs": ["setosa"], "probabilities": [[0.97, 0.02, 0.01]], ...}
    POST /v1/models/iris/feedback {"request_id": "9c1e...", "label": "setosa"}

``request_id`` is the server's id of the request (also its ``X-Request-Id`` header); a
client's own ``X-Request-Id`` only comes back as ``X-Correlation-Id`` and is stored beside
the record, so feedback quotes the server's id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import torch
from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError

from dlforge.errors import ArtifactError, DlforgeError, NotFoundError
from dlforge.registry.names import validate_name
from dlforge.serve.batching import BatcherStoppedError, QueueFullError
from dlforge.serve.dependencies import get_metrics, get_pool, model_name, require_predict_key
from dlforge.serve.inputs import MAX_WARNINGS, check_outputs, check_tokens, encode_inputs, invalid, range_warnings
from dlforge.serve.monitor import Metrics
from dlforge.serve.pool import LoadedModel, ModelPool
from dlforge.serve.schemas import (
    DriftReport,
    DriftResponse,
    ExperimentResponse,
    FeedbackRequest,
    FeedbackResponse,
    InputWarning,
    PredictRequest,
    PredictResponse,
    error_responses,
)
from dlforge.serve.security import ApiError, correlation_id, status_of
from dlforge.serve.security import request_id as request_id_of

log = logging.getLogger("dlforge.serve")
router = APIRouter(prefix="/v1/models", tags=["predict"], dependencies=[Depends(require_predict_key)])
UNKNOWN = "_unknown"  # the model label of requests for names this server does not serve
THREAD_ENCODE_ITEMS = 32  # larger requests (and all text) are encoded off the event loop
_background: set[asyncio.Task] = set()  # shadow tasks: a reference keeps them from being garbage-collected


@router.post("/{name}/predict", response_model=PredictResponse,
             responses=error_responses(400, 401, 404, 413, 415, 422, 429, 500, 503))
async def predict(
    body: PredictRequest,
    request: Request,
    name: str = Depends(model_name),
    pool: ModelPool = Depends(get_pool),
    metrics: Metrics = Depends(get_metrics),
) -> PredictResponse:
    """Predict ``inputs`` with the version the request, the traffic split or the aliases choose."""
    started = time.perf_counter()
    max_inputs = request.app.state.settings.max_inputs
    if len(body.inputs) > max_inputs:
        raise invalid([((), f"at most {max_inputs} inputs per request, got {len(body.inputs)}")])
    alias = None if body.alias is None else validate_name(body.alias, "alias")
    request_id = request_id_of(request)  # the server's id (X-Request-Id of the response), never the client's
    # Unknown names are counted under one label: a scanner must not grow the metrics without bound.
    labels = {"model": name if pool.loaded(name) else UNKNOWN, "version": "", "variant": ""}
    metrics.in_flight.labels(labels["model"]).inc()
    status = 500
    try:
        for attempt in range(2):  # a second try only if a hot swap stopped the version under us
            model, variant, shadow = pool.resolve(name, version=body.version, alias=alias,
                                                  sticky_id=_sticky_id(request, pool, name))
            labels.update(version=str(model.version), variant=variant)
            shadow_variant = f"shadow:{pool.traffic(name).shadow}" if shadow is not None else ""  # before any await
            try:
                with model.lease(), contextlib.ExitStack() as stack:  # leased before any await
                    if shadow is not None:
                        stack.enter_context(shadow.lease())
                    if model.artifact.task == "mlm":
                        raise ArtifactError(f"{name} v{model.version} is a masked-LM model: it predicts masked "
                                            "tokens, not labels", hint="serve a model fine-tuned on a labelled task")
                    x = await _encode(model, body.inputs)
                    check_tokens(model.artifact, x, request.app.state.settings.max_tokens)  # 413 above the cap
                    warnings = range_warnings(model.artifact, x)
                    if shadow is not None:
                        shadow.acquire()  # released by the shadow task
                        _spawn(_shadow(pool, metrics, shadow, body.inputs, request_id, variant=shadow_variant))
                    outputs = await model.batcher.submit(x)
                break
            except BatcherStoppedError:
                if attempt == 1:
                    raise
        check_outputs(outputs)  # a 422 naming the inputs, never a 200 with null numbers
        response = _response(model, outputs, request_id=request_id, variant=variant, started=started)
        if warnings:  # answered, but the client should check the units of these inputs
            response.warnings = [InputWarning(**w) for w in warnings[:MAX_WARNINGS]]
            metrics.out_of_range.labels(labels["model"]).inc(len({w["input"] for w in warnings}))
        pool.experiment(name).record(request_id, variant, model.version, response.outputs,
                                     time.perf_counter() - started, indices=_indices(outputs),
                                     correlation_id=correlation_id(request))
        status = 200
        return response
    except Exception as err:
        status = _status_of(err)
        raise
    finally:
        metrics.in_flight.labels(labels["model"]).dec()
        _count(metrics, labels, status, time.perf_counter() - started)


@router.post("/{name}/feedback", response_model=FeedbackResponse, responses=error_responses(400, 401, 404, 422))
async def feedback(body: FeedbackRequest, name: str = Depends(model_name),
                   pool: ModelPool = Depends(get_pool)) -> FeedbackResponse:
    """Record the true label of an earlier request (by the ``request_id`` its predict response gave)."""
    _served(pool, name)
    experiment = pool.experiment(name)
    if not experiment.feedback(body.request_id, body.label):
        raise NotFoundError(f"no recent request {body.request_id!r} for model {name!r}",
                            hint="quote the request_id of a predict response; the server keeps the last 10,000")
    with contextlib.suppress(DlforgeError):  # the shadow's answer is judged too, when it came back
        experiment.feedback(_shadow_id(body.request_id), body.label)
    return FeedbackResponse(request_id=body.request_id, recorded=True)


@router.get("/{name}/experiment", response_model=ExperimentResponse, responses=error_responses(400, 401, 404))
async def experiment(name: str = Depends(model_name), pool: ModelPool = Depends(get_pool)) -> ExperimentResponse:
    """Requests, latency and accuracy per variant, and the significance test between two of them."""
    _served(pool, name)
    stats = pool.experiment(name).stats()
    return ExperimentResponse(model=name, **stats)


@router.get("/{name}/drift", response_model=DriftResponse, responses=error_responses(400, 401, 404))
async def drift(name: str = Depends(model_name), pool: ModelPool = Depends(get_pool)) -> DriftResponse:
    """Each loaded version's live inputs and predictions against its training reference."""
    loaded = _served(pool, name)
    reports = [DriftReport(version=v, **m.drift.report()) for v, m in sorted(loaded.items())]
    return DriftResponse(model=name, versions=reports)


# ---------------------------------------------------------------------------- helpers
def _served(pool: ModelPool, name: str) -> dict[int, LoadedModel]:
    loaded = pool.loaded(name)
    if not loaded:
        raise NotFoundError(f"model {name!r} is not served here", hint="GET /v1/models lists the served models")
    return loaded


def _sticky_id(request: Request, pool: ModelPool, name: str) -> str | None:
    """The header value that keeps a user on one variant (the traffic config names the header)."""
    config = pool.traffic(name)
    header = "X-User-Id" if config is None else config.sticky_header
    return request.headers.get(header) if header else None


async def _encode(model: LoadedModel, inputs: list[Any]) -> torch.Tensor:
    if model.inputs.kind == "text" or len(inputs) > THREAD_ENCODE_ITEMS:
        return await asyncio.to_thread(encode_inputs, model.inputs, model.artifact, inputs)
    return encode_inputs(model.inputs, model.artifact, inputs)


def _response(model: LoadedModel, outputs: dict[str, Any], *, request_id: str, variant: str,
              started: float) -> PredictResponse:
    if "labels" in outputs:
        probabilities = outputs["probabilities"]
        return PredictResponse(
            request_id=request_id, model=model.name, version=model.version, variant=variant,
            outputs=list(outputs["labels"]), probabilities=_as_list(probabilities),
            class_names=model.artifact.class_names or [str(i) for i in range(probabilities.shape[1])],
            latency_ms=(time.perf_counter() - started) * 1000)
    values = _as_list(outputs["values"])
    values = [v[0] if isinstance(v, list) and len(v) == 1 else v for v in values]  # one output: a number
    return PredictResponse(request_id=request_id, model=model.name, version=model.version, variant=variant,
                           outputs=values, latency_ms=(time.perf_counter() - started) * 1000)


def _as_list(value: Any) -> list:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    return value.tolist() if hasattr(value, "tolist") else list(value)


def _indices(outputs: dict[str, Any]) -> list[int] | None:
    return _as_list(outputs["indices"]) if "indices" in outputs else None


def _shadow_id(request_id: str) -> str:
    return f"{request_id}-shadow"


def _spawn(coro) -> None:
    task = asyncio.create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _shadow(pool: ModelPool, metrics: Metrics, model: LoadedModel, inputs: list[Any], request_id: str,
                  *, variant: str) -> None:
    """Mirror one request to the shadow version (already acquired; released here).

    Failures are counted and logged, never raised: the client already has its answer."""
    started = time.perf_counter()
    labels = {"model": model.name, "version": str(model.version), "variant": variant}
    status = 200
    try:
        x = await _encode(model, inputs)
        outputs = await model.batcher.submit(x)
        check_outputs(outputs)  # a shadow's non-finite answer is counted (422), not recorded
        answer = _response(model, outputs, request_id=request_id, variant=variant, started=started)
        pool.experiment(model.name).record(_shadow_id(request_id), variant, model.version, answer.outputs,
                                           time.perf_counter() - started, indices=_indices(outputs))
    except Exception as err:
        status = _status_of(err)
        if status >= 500:
            log.exception("shadow request to %s v%d failed", model.name, model.version)
    finally:
        model.release()
        _count(metrics, labels, status, time.perf_counter() - started)


def _status_of(err: BaseException) -> int:
    if isinstance(err, ApiError):
        return err.status_code
    if isinstance(err, RequestValidationError):
        return 422
    if isinstance(err, QueueFullError):
        return 429
    if isinstance(err, DlforgeError):
        return status_of(err)[0]
    return 500


def _count(metrics: Metrics, labels: dict[str, str], status: int, seconds: float) -> None:
    metrics.requests.labels(**labels, status=str(status)).inc()
    if status >= 400:
        metrics.errors.labels(**labels, status=str(status)).inc()
    if status < 400:
        metrics.latency.labels(**labels).observe(seconds)
