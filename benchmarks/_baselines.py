"""The servers benchmarks/serving.py compares dlforge serve with, each a one-file FastAPI app.

* ``plain``: what most users write first: load the artifact once, and in the route
  encode the one request's inputs with the stored preprocessing (``Artifact.encode``)
  and call the model under ``torch.inference_mode``. The route is a
  ``def`` (FastAPI's advice for blocking code: it runs in the threadpool) unless
  ``--route async`` asks for an ``async def`` that blocks the event loop while the model
  runs. No batching, no validation beyond ``inputs`` being a list.
* ``noop``: the same request and response shapes, no model: the HTTP stack alone
  (uvicorn + FastAPI + pydantic parsing the body). Nothing that calls a model can serve
  more requests per second than this on the same machine.
* ``batched``: the no-op app plus the model behind dlforge's own ``DynamicBatcher`` (the
  same batch settings): each request is encoded (``Artifact.encode``) and its sample joins
  a batched ``Artifact.predict``. No key, no validation, no metrics, no records, no drift:
  the least work any batched server of this model does on top of the HTTP stack, so its
  throughput bounds dlforge serve's from above.

Both answer ``POST /predict`` with ``{"inputs": [...]}`` and ``GET /healthz``; both run
under uvicorn with one worker and access logs off, as the benchmark runs dlforge serve.

    python benchmarks/_baselines.py plain --artifact DIR --port 8100
    python benchmarks/_baselines.py noop --port 8101
    python benchmarks/_baselines.py batched --artifact DIR --port 8102
"""

from __future__ import annotations

import argparse
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel


class PredictBody(BaseModel):
    inputs: list[Any]


def noop_app() -> FastAPI:
    """An app that parses the body and answers without a model."""
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.post("/predict")
    async def predict(body: PredictBody) -> dict:
        return {"outputs": ["0"] * len(body.inputs), "probabilities": None}

    return app


def plain_app(artifact_dir: str, route: str = "sync") -> FastAPI:
    """The one-model-call-per-request app most users write (``route``: ``sync`` or ``async``)."""
    import numpy as np
    import torch

    from dlforge.registry.artifact import load_artifact

    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state["artifact"] = load_artifact(artifact_dir)
        yield

    app = FastAPI(lifespan=lifespan)

    def run(body: PredictBody) -> dict:
        art = state["artifact"]
        x = art.encode(np.asarray(body.inputs))  # the stored standardisation, as dlforge serve applies
        with torch.inference_mode():
            out = art.predict(x)
        return {"outputs": out["labels"], "probabilities": out["probabilities"].tolist()}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    if route == "async":
        @app.post("/predict")
        async def predict_async(body: PredictBody) -> dict:
            return run(body)
    else:
        @app.post("/predict")
        def predict_sync(body: PredictBody) -> dict:
            return run(body)

    return app


def batched_app(artifact_dir: str, max_batch_size: int, max_wait_ms: float) -> FastAPI:
    """The no-op app plus the model behind dlforge's ``DynamicBatcher``, and nothing else."""
    import numpy as np
    import torch

    from dlforge.registry.artifact import load_artifact
    from dlforge.serve.batching import DynamicBatcher

    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        art = state["artifact"] = load_artifact(artifact_dir)

        def run(x: Any) -> dict:
            with torch.inference_mode():
                return art.predict(x)

        batcher = state["batcher"] = DynamicBatcher(run, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms)
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.post("/predict")
    async def predict(body: PredictBody) -> dict:
        out = await state["batcher"].submit(state["artifact"].encode(np.asarray(body.inputs)))
        return {"outputs": list(out["labels"]), "probabilities": out["probabilities"].tolist()}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["plain", "noop", "batched"])
    parser.add_argument("--artifact", help="the artifact folder (plain, batched)")
    parser.add_argument("--route", choices=["sync", "async"], default="sync")
    parser.add_argument("--max-batch-size", type=int, default=32, help="batched: as dlforge serve's")
    parser.add_argument("--max-wait-ms", type=float, default=3.0, help="batched: as dlforge serve's")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    import uvicorn

    if args.kind == "batched":
        app = batched_app(args.artifact, args.max_batch_size, args.max_wait_ms)
    else:
        app = noop_app() if args.kind == "noop" else plain_app(args.artifact, args.route)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
