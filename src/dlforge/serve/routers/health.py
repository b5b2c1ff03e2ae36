"""Liveness, readiness and Prometheus metrics: open routes for load balancers and monitoring.

``/healthz`` answers while the process runs; ``/readyz`` only once the models are loaded
(503 before, so a load balancer sends no traffic to a replica still loading); its body adds
``unhealthy`` (model, version, reason) when a version failed to load, so it is easy to see why;
``/metrics`` is the Prometheus text format of this app's own collector registry.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse

from dlforge.serve.dependencies import get_metrics, get_pool
from dlforge.serve.monitor import Metrics
from dlforge.serve.pool import ModelPool
from dlforge.serve.schemas import HealthResponse, ReadyResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse)
async def healthz() -> HealthResponse:
    """The process is up."""
    return HealthResponse(status="ok")


@router.get("/readyz", response_model=ReadyResponse,
            responses={503: {"model": ReadyResponse, "description": "models are still loading (or failed to)"}})
async def readyz(pool: ModelPool = Depends(get_pool)) -> Response:
    """200 with the served model names once every served model has a loaded version; 503 before.

    A version that failed to load is listed under ``unhealthy`` with the reason (no paths).
    """
    snapshot, ready = pool.snapshot(), pool.ready()
    body = ReadyResponse(status="ready" if ready else "loading", models=[m["name"] for m in snapshot]).model_dump()
    unhealthy = [{"model": m["name"], **u} for m in snapshot for u in m["unhealthy"]]
    if unhealthy:  # only then, so a healthy replica's body stays {"status", "models"}
        body["unhealthy"] = unhealthy
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
async def metrics(metrics: Metrics = Depends(get_metrics)) -> Response:
    """Requests, errors, latency, batch sizes, queue time, loaded versions and drift, by label."""
    body, content_type = metrics.render()
    return Response(content=body, media_type=content_type)
