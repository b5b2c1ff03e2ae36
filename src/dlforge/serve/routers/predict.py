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
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from dlforge.serve.dependencies import get_service, model_name, require_predict_key
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


@router.post("/{name}/predict", response_model=PredictResponse,
             responses=error_responses(400, 401, 404, 413, 415, 422, 429, 500, 503))
async def predict(body: PredictRequest, request: Request, name: str = Depends(model_name),
                  service: PredictionService = Depends(get_service)) -> PredictResponse:
    """Predict ``inputs`` with the version the request, the traffic split or the aliases choose."""
    return await service.predict(name, body.inputs, version=body.version, alias=body.alias,
                                 headers=request.headers, request_id=request_id(request),
                                 correlation_id=correlation_id(request), mask_format=body.mask_format)


@router.post("/{name}/feedback", response_model=FeedbackResponse, responses=error_responses(400, 401, 404, 422))
async def feedback(body: FeedbackRequest, name: str = Depends(model_name),
                   service: PredictionService = Depends(get_service)) -> FeedbackResponse:
    """Record the true label of an earlier request (by the ``request_id`` its predict response gave)."""
    service.feedback(name, body.request_id, body.label)
    return FeedbackResponse(request_id=body.request_id, recorded=True)


@router.get("/{name}/experiment", response_model=ExperimentResponse, responses=error_responses(400, 401, 404))
async def experiment(name: str = Depends(model_name),
                     service: PredictionService = Depends(get_service)) -> ExperimentResponse:
    """Requests, latency and accuracy per variant, and the significance test between two of them."""
    return ExperimentResponse(model=name, **service.experiment(name))


@router.get("/{name}/drift", response_model=DriftResponse, responses=error_responses(400, 401, 404))
async def drift(name: str = Depends(model_name), service: PredictionService = Depends(get_service)) -> DriftResponse:
    """Each loaded version's live inputs and predictions against its training reference."""
    reports = [DriftReport(version=v, **report) for v, report in service.drift(name).items()]
    return DriftResponse(model=name, versions=reports)
