"""The FastAPI app: ``create_app`` builds it, the lifespan loads the models.

Nothing loads at import time. The lifespan opens the registry (unless one is given),
creates the app's metrics and model pool, loads the served versions, then polls the
registry's revision so changes made by other processes take effect; on shutdown it stops
the poll and drains every batcher.

Example:
    >>> from fastapi.testclient import TestClient
    >>> app = create_app(ServeSettings(registry="sqlite:///reg.db", require_keys=False))  # doctest: +SKIP
    >>> with TestClient(app) as client:                                                  # doctest: +SKIP
    ...     client.get("/healthz").json()
    {'status': 'ok'}
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI

import dlforge
from dlforge.registry.store import Registry
from dlforge.serve.dependencies import key_cache_of
from dlforge.serve.grpc_v2 import start_grpc
from dlforge.serve.monitor import Metrics
from dlforge.serve.pool import ModelPool
from dlforge.serve.routers import admin, health, models, predict, status, v2
from dlforge.serve.security import install_security
from dlforge.serve.settings import ServeSettings

log = logging.getLogger("dlforge.serve")
GRPC_GRACE_S = 5.0  # seconds in-flight gRPC calls get to finish at shutdown

DESCRIPTION = """Predictions from the models in a dlforge registry, with A/B traffic splits, shadow
deployments, dynamic batching, drift monitoring and hot swaps that fail no request.

Send `Authorization: Bearer <key>` (from `dlforge keys create`); admin routes need an admin key.
`/`, `/healthz`, `/readyz` and `/metrics` are open."""


def create_app(settings: ServeSettings | None = None, *, registry: Registry | None = None) -> FastAPI:
    """The server app; ``registry`` (already open) overrides ``settings.registry``/``artifacts``.

    Example:
        >>> app = create_app(ServeSettings(require_keys=False))
        >>> app.title, "/v1/models/{name}/predict" in app.openapi()["paths"]
        ('dlforge', True)
    """
    settings = settings or ServeSettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = registry is None
        reg = Registry(settings.registry, settings.artifacts) if own else registry
        metrics = Metrics()
        pool = ModelPool(reg, settings, metrics)
        pool.on_change = key_cache_of(app).clear  # a revoked key stops working at the next poll
        app.state.registry, app.state.metrics, app.state.pool = reg, metrics, pool
        app.state.experiments = pool.experiments
        app.state.started = time.monotonic()
        for secret, is_admin in [*((k, True) for k in settings.admin_keys), *((k, False) for k in settings.predict_keys)]:
            reg.provision_key(secret.get_secret_value(), admin=is_admin, label="from the environment")
        if not settings.require_keys:
            log.warning("API keys are OFF (--no-auth): anyone who can reach %s:%d can predict and change "
                        "aliases", settings.host, settings.port)
        poll = grpc_server = None
        try:
            await pool.refresh(force=True)
            # The loaded models and imports are long-lived: keep them out of the collector's full
            # passes, which otherwise stall a request now and then (p99 95 ms -> 25-28 ms measured).
            gc.collect()
            gc.freeze()
            log.info("serving %s from %s", ", ".join(m["name"] for m in pool.snapshot()) or "no model", reg.url)
            poll = asyncio.create_task(pool.poll(), name="dlforge-registry-poll")
            if settings.grpc_port is not None:  # the V2 protocol over gRPC, in this event loop
                grpc_server = await start_grpc(app, settings)
                log.info("gRPC (GRPCInferenceService) on %s:%d", settings.host, settings.grpc_port)
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(GRPC_GRACE_S)
            if poll is not None:
                poll.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poll
            await pool.close()
            if own:
                reg.close()

    app = FastAPI(title="dlforge", version=dlforge.__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings  # the security middleware reads the limits before the lifespan runs
    install_security(app)
    for module in (predict, v2, models, admin, health, status):  # the two infer paths first: routes match in order
        app.include_router(module.router)
    return app
