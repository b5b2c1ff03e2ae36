"""Topic 30 at the quick budget: the served numbers agree with their references (the
router's own hash, statsmodels' z-test, weight bytes of a fresh int8 copy, offline
predictions), and the in-process server leaves nothing behind."""

from __future__ import annotations

import contextlib
import doctest
import glob
import math
import os
import random
import tempfile
import threading

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
import torch
from statsmodels.stats.proportion import proportions_ztest

from dlforge.compress.quantize import quantize_dynamic_int8, weight_bytes
from dlforge.lab import q30_deployment as q30
from dlforge.lab._q30_traffic import PREDICT
from dlforge.models import build
from dlforge.serve.routing import TrafficConfig, choose_variant

from .cache import finding_for


@pytest.fixture(scope="module")
def numbers() -> dict:
    return finding_for(30).numbers


def test_ab_share_is_the_routers_hash_and_z_matches_statsmodels(numbers):
    n = numbers["ab_users"]
    assert numbers["ab_answered"] == n and numbers["ab_failed_requests"] == 0
    config = TrafficConfig(variants=[{"alias": a, "weight": w} for a, w in q30.AB.items()])
    want = sum(choose_variant(config, q30.NAME, f"user-{i}", random.Random(0)) == "candidate" for i in range(n))
    assert numbers["ab_candidate_share"] == pytest.approx(want / n, abs=1e-5)
    z, _ = proportions_ztest(want, n, value=q30.AB["candidate"], prop_var=q30.AB["candidate"])
    assert numbers["ab_z"] == pytest.approx(z, rel=1e-3)
    assert numbers["ab_candidate_answered_by_v2"] == 1.0 and numbers["sticky_repeats"] == q30.STICKY_REPEAT


def test_int8_numbers_agree_with_a_fresh_quantized_copy(numbers):
    model = build(q30.MODEL, input_shape=(1, 8, 8), num_outputs=10)
    small = quantize_dynamic_int8(model)  # byte counts depend on the shapes only
    assert (numbers["fp32_weight_bytes"], numbers["int8_weight_bytes"]) == (weight_bytes(model), weight_bytes(small))
    assert numbers["int8_accuracy_drop"] == pytest.approx(
        numbers["fp32_test_accuracy"] - numbers["int8_test_accuracy"], abs=1e-4)
    # The fp32 server answers exactly what the artifact predicts offline: the server
    # standardised the raw samples as training did.
    assert numbers["fp32_served_matches_offline"] == 1.0


def test_latency_numbers_are_consistent(numbers):
    f = finding_for(30)
    per_model = numbers["latency_requests_per_model"]
    assert numbers["latency_answered"] == {"fp32": per_model, "int8": per_model}
    for name in ("fp32", "int8"):
        assert 0 < numbers[f"{name}_served_p50_ms"] <= numbers[f"{name}_served_p99_ms"]
        assert numbers[f"offline_{name}_ms"] > 0
    # per seed: the speedup is that seed's fp32 p50 over its int8 p50, measured in turns in one process
    ps = f.per_seed
    for fp32, int8, speedup in zip(ps["fp32_served_p50_ms"], ps["int8_served_p50_ms"], ps["int8_served_p50_speedup"]):
        assert speedup == pytest.approx(fp32 / int8, rel=2e-3)
    for speedup, log2 in zip(ps["int8_served_p50_speedup"], ps["int8_served_p50_log2_speedup"]):
        assert log2 == pytest.approx(math.log2(speedup), abs=2e-3)  # what the check reads: > 0 iff faster
    assert numbers["int8_served_p50_speedup"] == pytest.approx(np.mean(ps["int8_served_p50_speedup"]), rel=1e-3)
    assert numbers["latency_request_batch"] == q30.LATENCY_BATCH > 1
    for fp32, int8, speedup in zip(ps.get("batch1_fp32_served_p50_ms", []), ps.get("batch1_int8_served_p50_ms", []),
                                   ps.get("batch1_int8_served_p50_speedup", [])):
        assert speedup == pytest.approx(fp32 / int8, rel=2e-3)
    # the model alone: the median of per-round paired ratios lies within the rounds' spread
    assert numbers["offline_int8_speedup"] > 0 and numbers["offline_int8_ms"] > 0


def test_latency_alternates_the_servers_one_request_at_a_time():
    seen: list[tuple[str, int, int]] = []  # server, samples in the request, requests in flight
    in_flight: list[int] = []

    def app(name: str) -> FastAPI:
        a = FastAPI()

        @a.post(PREDICT)
        def predict(body: dict):
            in_flight.append(1)
            seen.append((name, len(body["inputs"]), len(in_flight)))
            in_flight.pop()
            return {"outputs": ["0"] * len(body["inputs"])}
        return a

    raw = np.arange(5 * 64, dtype=float).reshape(5, 1, 8, 8)
    with q30.serving(app("fp32")) as u1, q30.serving(app("int8")) as u2:
        out = q30._latency({"fp32": u1, "int8": u2}, "k", raw, 4, deadline=float("inf"), batch=3)
    timed = seen[2 * q30.WARMUP:]
    assert [name for name, _, _ in timed] == ["fp32", "int8", "int8", "fp32"] * 2  # turns, first one flipping
    assert {size for _, size, _ in seen} == {3} and {k for _, _, k in seen} == {1}  # one request in flight
    assert [len(v) for v in out.values()] == [4, 4] and all(r.status == 200 for v in out.values() for r in v)


def test_offline_ms_pairs_rounds_and_paired_speedup_takes_their_median():
    models = {"fp32": torch.nn.Linear(256, 256), "int8": torch.nn.Linear(256, 8)}
    ms = q30.offline_ms(models, torch.zeros(1, 256), q30.ROUNDS * 2)
    assert [len(v) for v in ms.values()] == [q30.ROUNDS, q30.ROUNDS]
    ratios = sorted(a / b for a, b in zip(ms["fp32"], ms["int8"]))
    assert q30.paired_speedup(ms["fp32"], ms["int8"]) == pytest.approx(np.median(ratios))


def test_rollback_monitoring_and_access(numbers):
    assert numbers["rollback_admin_calls_ok"] == 1
    stage = q30.BUDGETS["quick"]["stage"]
    assert numbers["rollback_answers_after_swap"] >= stage and numbers["rollback_answers_after_rollback"] >= stage
    assert numbers["metrics_counted_requests"] == numbers["rollback_requests"]  # every request answered and counted
    assert numbers["access_statuses"] == q30.EXPECTED
    assert numbers["aliases_unchanged"] == 1  # the refused admin calls changed nothing


def test_no_temporary_folder_is_left(numbers):
    assert not glob.glob(os.path.join(tempfile.gettempdir(), "dlforge-q30-*"))


def _server_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "q30-uvicorn"]


@pytest.mark.parametrize("fail", [False, True])
def test_serving_stops_the_server_and_frees_the_port(fail):
    app = FastAPI()
    app.get("/ping")(lambda: {"ok": True})
    with pytest.raises(RuntimeError) if fail else contextlib.nullcontext():
        with q30.serving(app) as url:
            assert httpx.get(url + "/ping").json() == {"ok": True}
            assert len(_server_threads()) == 1
            if fail:
                raise RuntimeError("a step failed")
    assert not _server_threads()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/ping")


def test_share_z_matches_statsmodels():
    for count, n in ((90, 400), (80, 400), (431, 2000)):
        z, _ = proportions_ztest(count, n, value=0.2, prop_var=0.2)
        assert q30.share_z(count, n, 0.2) == pytest.approx(z, rel=1e-12)
    assert q30.percentiles([3.0, 1.0, 2.0]) == tuple(np.percentile([1.0, 2.0, 3.0], [50, 99]).round(4))


def test_doctests():
    result = doctest.testmod(q30, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
