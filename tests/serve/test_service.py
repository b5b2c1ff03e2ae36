"""The prediction service without HTTP: resolve, lease, retry on a hot swap, shadow, record and metrics.

Each test builds a ModelPool on ``serve_env`` (iris v1 = production, v2 = candidate), wraps
it in a PredictionService and calls it directly, inside ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import doctest
import logging
import random
import time
from collections.abc import Awaitable, Callable

import pytest
import torch
from fastapi.exceptions import RequestValidationError

from dlforge.errors import ArtifactError, NotFoundError, UnavailableError
from dlforge.serve import monitor as monitor_module
from dlforge.serve import pool as pool_module
from dlforge.serve import service as service_module
from dlforge.serve.batching import BatcherStoppedError, QueueFullError
from dlforge.serve.errors import ApiError, error_status
from dlforge.serve.monitor import Metrics
from dlforge.serve.pool import ModelPool
from dlforge.serve.routing import TrafficConfig, choose_variant
from dlforge.serve.service import UNKNOWN, PredictionService, shadow_id

X = [[0.1, 0.2, 0.3, 0.4]]
SHADOW_SPLIT = {"variants": [{"alias": "production", "weight": 1.0}], "shadow": "candidate"}


def _run(serve_env, test: Callable[[ModelPool, PredictionService], Awaitable[None]], **settings) -> None:
    """Run ``test(pool, service)`` on a freshly loaded pool, closing the pool afterwards."""
    async def main() -> None:
        pool = ModelPool(serve_env.registry, serve_env.settings(**settings), Metrics())
        await pool.refresh(force=True)
        try:
            await test(pool, PredictionService(pool))
        finally:
            await _settle()
            await pool.close()

    asyncio.run(main())


async def _settle(timeout: float = 5.0) -> None:
    """Wait for the shadow tasks to finish."""
    deadline = time.monotonic() + timeout
    while service_module._background:
        assert time.monotonic() < deadline, "a shadow task did not finish"
        await asyncio.sleep(0.01)


def _count(pool: ModelPool, metric: str, **labels: str) -> float:
    return pool.metrics.registry.get_sample_value(metric, labels) or 0.0


def _requests(pool: ModelPool, model: str = "iris", version: str = "1", variant: str = "production",
              status: str = "200") -> float:
    return _count(pool, "dlforge_requests_total", model=model, version=version, variant=variant, status=status)


def _total_requests(pool: ModelPool) -> float:
    return sum(s.value for m in pool.metrics.registry.collect() for s in m.samples
               if s.name == "dlforge_requests_total")


def test_resolves_by_version_alias_default_and_traffic_split(serve_env) -> None:
    async def test(pool: ModelPool, service: PredictionService) -> None:
        cases = [({}, 1, "production"), ({"alias": "candidate"}, 2, "candidate"),
                 ({"version": 2}, 2, "version:2"), ({"version": 1, "alias": "candidate"}, 1, "version:1")]
        for kwargs, version, variant in cases:
            answer = await service.predict("iris", X, request_id=f"r-{variant}", **kwargs)
            assert (answer.model, answer.version, answer.variant) == ("iris", version, variant)
            assert answer.class_names == serve_env.class_names and len(answer.probabilities[0]) == 3
        split = {"variants": [{"alias": "production", "weight": 0.5}, {"alias": "candidate", "weight": 0.5}]}
        serve_env.registry.set_traffic("iris", split)
        await pool.refresh()
        parsed = TrafficConfig.model_validate(split)
        seen = set()
        for user in (f"user-{i}" for i in range(12)):
            answer = await service.predict("iris", X, request_id=user, headers={"X-User-Id": user})
            assert answer.variant == choose_variant(parsed, "iris", user, random.Random())  # sticky per user
            assert answer.version == {"production": 1, "candidate": 2}[answer.variant]
            seen.add(answer.variant)
        assert seen == {"production", "candidate"}
        with pytest.raises(NotFoundError, match="no alias 'nope'"):
            await service.predict("iris", X, alias="nope", request_id="r-nope")

    _run(serve_env, test)


def test_a_version_retired_mid_request_is_retried_on_its_replacement(serve_env) -> None:
    async def test(pool: ModelPool, service: PredictionService) -> None:
        v1 = pool.loaded("iris")[1]
        refreshes = []

        async def retired(x: torch.Tensor) -> dict:  # a hot swap moves production to v2 and stops v1
            serve_env.registry.set_alias("iris", "production", 2)
            refreshes.append(asyncio.create_task(pool.refresh()))
            while pool.resolve("iris", version=None, alias=None, sticky_id=None)[0] is v1:
                await asyncio.sleep(0.005)
            raise BatcherStoppedError("stopped")

        v1.batcher.submit = retired
        answer = await service.predict("iris", X, request_id="r1")
        assert (answer.version, answer.variant) == (2, "production")
        await asyncio.wait_for(refreshes[0], 5)  # v1 retires once the request let go of it
        assert v1.active == 0 and sorted(pool.loaded("iris")) == [2]
        assert _requests(pool, version="2") == 1 and _total_requests(pool) == 1  # counted once, as answered
        assert pool.experiment("iris").record_of("r1")["version"] == 2

    _run(serve_env, test)


def test_a_version_stopped_on_both_tries_is_one_500(serve_env) -> None:
    async def test(pool: ModelPool, service: PredictionService) -> None:
        v1 = pool.loaded("iris")[1]
        calls = []

        async def stopped(x: torch.Tensor) -> dict:
            calls.append(1)
            raise BatcherStoppedError("stopped")

        v1.batcher.submit = stopped
        with pytest.raises(BatcherStoppedError):
            await service.predict("iris", X, request_id="r1")
        assert len(calls) == 2 and v1.active == 0
        assert _requests(pool, status="500") == 1 and _total_requests(pool) == 1

    _run(serve_env, test)


def test_the_shadow_answer_is_recorded_never_returned(serve_env) -> None:
    serve_env.registry.set_traffic("iris", SHADOW_SPLIT)

    async def test(pool: ModelPool, service: PredictionService) -> None:
        answer = await service.predict("iris", X, request_id="r1", correlation_id="client-7")
        assert (answer.version, answer.variant) == (1, "production")
        await _settle()
        experiment = pool.experiment("iris")
        shadow = experiment.record_of(shadow_id("r1"))
        assert (shadow["variant"], shadow["version"], shadow["correlation_id"]) == ("shadow:candidate", 2, None)
        assert experiment.record_of("r1")["variant"] == "production"
        assert _requests(pool, version="2", variant="shadow:candidate") == 1 and _requests(pool) == 1
        assert pool.loaded("iris")[2].active == 0  # the shadow task released it
        service.feedback("iris", "r1", answer.outputs[0])  # judges the shadow's answer too
        assert experiment.record_of(shadow_id("r1"))["feedback"] == 1

    _run(serve_env, test)


def test_a_failing_shadow_is_counted_and_logged_never_raised(serve_env, caplog) -> None:
    serve_env.registry.set_traffic("iris", SHADOW_SPLIT)

    async def test(pool: ModelPool, service: PredictionService) -> None:
        v2 = pool.loaded("iris")[2]

        async def crash(x: torch.Tensor) -> dict:
            raise RuntimeError("shadow crashed")

        v2.batcher.submit = crash
        with caplog.at_level(logging.ERROR, logger="dlforge.serve"):
            answer = await service.predict("iris", X, request_id="r1")
            await _settle()
        assert answer.version == 1 and _requests(pool) == 1
        assert _requests(pool, version="2", variant="shadow:candidate", status="500") == 1
        assert _count(pool, "dlforge_errors_total", model="iris", version="2", variant="shadow:candidate",
                      status="500") == 1
        assert pool.experiment("iris").record_of(shadow_id("r1")) is None and v2.active == 0
        assert "shadow request to iris v2 failed" in caplog.text

    _run(serve_env, test)


def test_each_request_is_counted_once_with_its_status(serve_env) -> None:
    async def test(pool: ModelPool, service: PredictionService) -> None:
        batcher = pool.loaded("iris")[1].batcher
        await service.predict("iris", X * 3, request_id="ok")
        with pytest.raises(NotFoundError):
            await service.predict("nope", X, request_id="unknown")
        with pytest.raises(RequestValidationError):
            await service.predict("iris", [[0.0, 0.0, 0.0]], request_id="bad-shape")
        real = batcher.submit

        async def full(x: torch.Tensor) -> dict:
            raise QueueFullError(0.3, 256, 256)

        batcher.submit = full
        with pytest.raises(QueueFullError):
            await service.predict("iris", X, request_id="full")
        batcher.submit = real
        assert _requests(pool) == 1 and _requests(pool, status="422") == 1 and _requests(pool, status="429") == 1
        assert _requests(pool, model=UNKNOWN, version="", variant="", status="404") == 1
        assert _total_requests(pool) == 4
        assert _count(pool, "dlforge_errors_total", model="iris", version="1", variant="production", status="200") == 0
        assert _count(pool, "dlforge_request_latency_seconds_count", model="iris", version="1",
                      variant="production") == 1
        assert _count(pool, "dlforge_requests_in_flight", model="iris") == 0
        assert _count(pool, "dlforge_requests_in_flight", model=UNKNOWN) == 0

    _run(serve_env, test)


def test_an_unhealthy_version_is_a_503_counted_under_its_labels(serve_env, monkeypatch) -> None:
    bad, real = str(serve_env.registry.get("iris", version=2).path), pool_module.load_artifact

    def load(path, **options):
        if str(path) == bad:
            raise ArtifactError("model.safetensors is damaged")
        return real(path, **options)

    monkeypatch.setattr(pool_module, "load_artifact", load)

    async def test(pool: ModelPool, service: PredictionService) -> None:
        with pytest.raises(UnavailableError, match="damaged"):
            await service.predict("iris", X, alias="candidate", request_id="r1")
        assert _requests(pool, version="", variant="", status="503") == 1  # resolve failed: no version yet

    _run(serve_env, test)


def test_non_finite_outputs_are_refused_and_not_recorded(serve_env) -> None:
    async def test(pool: ModelPool, service: PredictionService) -> None:
        async def nan(x: torch.Tensor) -> dict:
            probabilities = torch.tensor([[float("nan"), 0.5, 0.5]] * len(x))
            return {"labels": ["setosa"] * len(x), "probabilities": probabilities, "indices": torch.zeros(len(x))}

        pool.loaded("iris")[1].batcher.submit = nan
        with pytest.raises(RequestValidationError) as caught:
            await service.predict("iris", X * 2, request_id="r1")
        assert [e["loc"] for e in caught.value.errors()] == [("body", "inputs", 0), ("body", "inputs", 1)]
        assert pool.experiment("iris").record_of("r1") is None and _requests(pool, status="422") == 1

    _run(serve_env, test)


def test_the_server_request_id_keys_the_record_and_the_correlation_id_sits_beside_it(serve_env) -> None:
    async def test(pool: ModelPool, service: PredictionService) -> None:
        answer = await service.predict("iris", X, request_id="server-1", correlation_id="client-7")
        assert answer.request_id == "server-1"
        experiment = pool.experiment("iris")
        assert experiment.record_of("server-1")["correlation_id"] == "client-7"
        assert experiment.record_of("client-7") is None
        with pytest.raises(NotFoundError, match="no recent request 'client-7'"):
            service.feedback("iris", "client-7", "setosa")
        service.feedback("iris", "server-1", answer.outputs[0])
        assert service.experiment("iris")["variants"]["production"]["correct"] == 1
        assert sorted(service.drift("iris")) == [1, 2]
        with pytest.raises(NotFoundError, match="not served here"):
            service.experiment("nope")

    _run(serve_env, test)


def test_too_many_inputs_and_a_bad_alias_are_refused_before_counting(serve_env) -> None:
    async def test(pool: ModelPool, service: PredictionService) -> None:
        with pytest.raises(RequestValidationError, match="at most 2 inputs per request, got 3"):
            await service.predict("iris", X * 3, request_id="r1")
        with pytest.raises(Exception, match="alias"):
            await service.predict("iris", X, alias="../x", request_id="r2")
        assert _total_requests(pool) == 0  # as before the service: refused while parsing

    _run(serve_env, test, max_inputs=2)


def test_metrics_request_counts_once_with_the_status() -> None:
    metrics = Metrics()
    with metrics.request("m", in_flight=True) as count:
        assert metrics.registry.get_sample_value("dlforge_requests_in_flight", {"model": "m"}) == 1
        count.version, count.variant = "3", "a"
    for err in (NotFoundError("x"), QueueFullError(1.0), ApiError(413, "payload_too_large", "big"), KeyError("k")):
        with pytest.raises(type(err)), metrics.request("m", version=3, variant="a"):
            raise err
    with metrics.request("m", version=3, variant="a") as count:
        count.status = 422
    value = metrics.registry.get_sample_value
    labels = {"model": "m", "version": "3", "variant": "a"}
    assert {s: value("dlforge_requests_total", {**labels, "status": s}) for s in ("200", "404", "413", "422",
                                                                                   "429", "500")} == {
        "200": 1, "404": 1, "413": 1, "422": 1, "429": 1, "500": 1}
    assert value("dlforge_errors_total", {**labels, "status": "200"}) is None
    assert value("dlforge_errors_total", {**labels, "status": "422"}) == 1
    assert value("dlforge_request_latency_seconds_count", labels) == 1
    assert value("dlforge_requests_in_flight", {"model": "m"}) == 0
    assert error_status(RequestValidationError([])) == 422 and error_status(UnavailableError("down")) == 503


def test_docstring_examples() -> None:
    for module in (service_module, monitor_module):
        assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0, module.__name__
