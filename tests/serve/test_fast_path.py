"""The fast predict path (orjson body, one envelope validation, no per-request dependency
solving) answers every request exactly as FastAPI's own body handling did.

The reference is FastAPI itself: an app with the same security layer and a predict route
declared the ordinary way (``body: PredictRequest``, the key and name dependencies), whose
answers to malformed bodies are compared field by field with the served app's.
"""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest
import torch
from fastapi import Depends, FastAPI, Request
from fastapi.testclient import TestClient

from dlforge.registry.reference import out_of_range
from dlforge.serve import inputs, tensor_checks
from dlforge.serve.batching import DynamicBatcher
from dlforge.serve.dependencies import KeyCache, model_name, require_predict_key
from dlforge.serve.routers import predict as predict_router
from dlforge.serve.schemas import PredictRequest
from dlforge.serve.security import install_security

PREDICT = "/v1/models/iris/predict"
BAD_BODIES = [
    b"", b"{", b"[1, 2]", b"null", b'"inputs"', b"{}", b'{"inputs": []}', b'{"inputs": "x"}',
    b'{"inputs": [[1, 2, 3, 4]], "extra": 1}', b'{"inputs": [[1, 2, 3, 4]], "version": 0}',
    b'{"inputs": [[1, 2, 3, 4]], "version": "two"}', b'{"inputs": [[1, 2, 3, 4]], "alias": "../x"}',
    b'{"inputs": [[1, 2, 3, 4]], "mask_format": "gif"}', b'{"inputs": [[1, 2, 3, 4]], "version": 1.5}',
    b'{"inputs": [[1, 2, 3, 4]]} trailing', b"\xff\xfe\x00", b'{"inputs": [[1, 2, 3, 4]], "alias": 7}',
]


def _reference_app(served: FastAPI) -> FastAPI:
    """The predict route as FastAPI parses it by default: the answers the fast path must give."""
    app = FastAPI()
    app.state.settings, app.state.registry = served.state.settings, served.state.registry
    install_security(app)

    @app.post("/v1/models/{name}/predict", dependencies=[Depends(require_predict_key)])
    async def predict(body: PredictRequest, request: Request, name: str = Depends(model_name)) -> dict:
        return {"parsed": body.model_dump()}

    return app


def _error(r) -> tuple[int, list | None]:
    body = r.json()
    fields = body["error"].get("fields") if "error" in body else None
    return r.status_code, fields


@pytest.fixture
def clients(serve_env, make_client):
    served = make_client()
    with TestClient(_reference_app(served.app), raise_server_exceptions=False) as reference:
        yield served, reference


@pytest.mark.parametrize("headers", [{"admin": False}, None])
def test_malformed_bodies_are_refused_as_fastapi_refuses_them(clients, serve_env, headers) -> None:
    served, reference = clients
    sent = {"content-type": "application/json", **(serve_env.headers(**headers) if headers else {})}
    for body in BAD_BODIES:
        ours, theirs = served.post(PREDICT, content=body, headers=sent), reference.post(PREDICT, content=body,
                                                                                          headers=sent)
        assert ours.status_code >= 400, body
        assert _error(ours) == _error(theirs), body


def test_valid_bodies_parse_as_fastapi_parses_them() -> None:
    """The envelope equals FastAPI's (the standard json module, then the model), including the
    forms orjson refuses (NaN, lone surrogates, integers beyond 64 bits, UTF-16 text)."""
    bodies = ['{"inputs": [[1, 2, 3, 4]], "version": "2", "alias": "candidate"}', '{"inputs": [[NaN, 2, 3, 4]]}',
              '{"inputs": ["a \\ud800"]}', '{"inputs": [[1e400, 2, 3, 99999999999999999999999]]}',
              '{"inputs": [{"b64": "AAAA"}, 1.5, "text"], "mask_format": "rle"}']
    for body in bodies:
        for raw in (body.encode(), body.encode("utf-16")):
            expected = PredictRequest.model_validate(json.loads(raw))
            assert repr(predict_router.read_envelope(raw)) == repr(expected), body


def test_the_range_prefilter_never_hides_a_warning() -> None:
    """``_inside_every_range`` may only say "no warning" when out_of_range (the reference) finds none."""
    rng = np.random.default_rng(3)
    for features in (1, 3, 5):
        lo = rng.normal(size=features)
        ref = {"ranges": {"features": [f"x{i}" for i in range(features)], "min": lo.tolist(),
                          "max": (lo + rng.uniform(0.1, 3, size=features)).tolist()}}
        for scale in (1.0, 5.0, 20.0):
            x = torch.tensor(rng.normal(scale=scale, size=(4, features)), dtype=torch.float32)
            found = out_of_range(x, ref, {"encoding": {"kind": "tabular"}})
            if tensor_checks.inside_every_range(x, ref):
                assert found == []
            elif features == 1:  # one feature: the prefilter is exact
                assert found
    assert tensor_checks.inside_every_range(torch.zeros(2, 3), {}) and tensor_checks.inside_every_range(torch.zeros(2), None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_all_finite_equals_torch(dtype) -> None:
    for values in ([1.0, -2.0], [1.0, float("nan")], [float("inf"), 0.0], [float("-inf")]):
        x = torch.tensor(values, dtype=dtype)
        assert tensor_checks.all_finite(x) == bool(torch.isfinite(x).all())


def test_holds_bool_equals_the_recursive_reference() -> None:
    def reference(items, depth):
        return bool in map(type, items) if depth == 0 else any(reference(sub, depth - 1) for sub in items)

    rng = np.random.default_rng(4)
    for shape in ((3,), (2, 4), (2, 3, 4), (1, 1, 8, 8)):
        nested = rng.normal(size=shape).tolist()
        assert inputs.holds_bool(nested, len(shape) - 1) is reference(nested, len(shape) - 1) is False
        cell = nested
        for k in shape[:-1]:
            cell = cell[k - 1]
        cell[-1] = True
        assert inputs.holds_bool(nested, len(shape) - 1) is reference(nested, len(shape) - 1) is True


class _CountingEvent(asyncio.Event):
    sets = 0

    def set(self) -> None:
        type(self).sets += 1
        super().set()


def test_a_forming_batch_wakes_once_not_once_per_request() -> None:
    """Requests that cannot fill the waiting batch join it at its deadline without waking the
    collector; a request of another shape wakes it and the batch runs before the deadline."""
    sizes: list[int] = []

    def fn(x):
        sizes.append(len(x))
        time.sleep(0.05 if len(sizes) == 1 else 0.0)
        return {"y": x}

    async def main() -> float:
        batcher = DynamicBatcher(fn, max_batch_size=8, max_wait_ms=400)
        await batcher.start()
        batcher._arrived = _CountingEvent()
        first = asyncio.ensure_future(batcher.submit(torch.zeros(1, 2)))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(batcher.submit(torch.zeros(1, 2)))  # arrives while the first runs
        await asyncio.sleep(0.08)  # the first is done: the second's batch waits for company
        sets = _CountingEvent.sets
        rest = [asyncio.ensure_future(batcher.submit(torch.zeros(1, 2))) for _ in range(3)]
        await asyncio.sleep(0.02)
        assert _CountingEvent.sets == sets  # three requests, no wake-up: they cannot fill the batch
        started = time.perf_counter()
        other = asyncio.ensure_future(batcher.submit(torch.zeros(1, 5)))  # another shape: run what waits
        await asyncio.gather(first, second, *rest)
        waited = time.perf_counter() - started
        await other
        await batcher.stop()
        return waited

    waited = asyncio.run(main())
    assert sizes == [1, 4, 1] and waited < 0.3  # the forming batch did not sit out its 400 ms


def test_an_expired_key_is_looked_up_once_for_every_request_waiting() -> None:
    calls: list[str] = []

    async def check(key: str) -> str | None:
        calls.append(key)
        await asyncio.sleep(0.01)
        if key == "dlf_broken":
            raise RuntimeError("database down")
        return "predict" if key == "dlf_good" else None

    async def main() -> None:
        cache = KeyCache(ttl=60.0)
        assert await asyncio.gather(*(cache.role("dlf_good", check) for _ in range(32))) == ["predict"] * 32
        assert await asyncio.gather(*(cache.role("dlf_bad", check) for _ in range(3))) == [""] * 3
        assert calls == ["dlf_good", "dlf_bad"]  # one lookup each; the answers are cached
        assert await cache.role("dlf_good", check) == "predict" and len(calls) == 2
        broken = await asyncio.gather(*(cache.role("dlf_broken", check) for _ in range(4)), return_exceptions=True)
        assert all(isinstance(e, RuntimeError) for e in broken) and calls.count("dlf_broken") == 1
        with pytest.raises(RuntimeError):  # a failed lookup is not cached: the next request tries again
            await cache.role("dlf_broken", check)
        assert calls.count("dlf_broken") == 2

    asyncio.run(main())


def test_a_lookup_begun_before_a_registry_change_is_not_cached() -> None:
    """A key revoked while its lookup was in flight: the stale answer is not kept, and requests
    after the change look the key up afresh."""
    calls: list[str] = []

    async def main() -> None:
        cache = KeyCache(ttl=60.0)
        gate = asyncio.Event()

        async def slow(key: str) -> str:
            calls.append("slow")
            await gate.wait()
            return "predict"

        async def revoked(key: str) -> None:
            calls.append("fresh")
            return None

        first = asyncio.ensure_future(cache.role("dlf_k", slow))
        await asyncio.sleep(0)
        cache.clear()  # the registry changed (the pool's on_change)
        assert await cache.role("dlf_k", revoked) == ""
        gate.set()
        assert await first == "predict"  # the request that asked before the change gets its answer
        assert cache.get("dlf_k") == ""  # but the cache keeps the fresh one
        assert calls == ["slow", "fresh"]

    asyncio.run(main())
