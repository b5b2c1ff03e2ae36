"""A real server process (``python -m dlforge.cli serve``) over HTTP: predictions, a hot swap and a
rollback under concurrent load with zero failed requests, and the sticky A/B split."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import scipy.stats
import torch
from torch.testing import assert_close

from dlforge.registry.artifact import load_artifact
from dlforge.serve.routing import TrafficConfig, choose_variant

PREDICT = "/v1/models/iris/predict"
THREADS = 8


def test_predict_hot_swap_and_rollback_under_load(module_env, server) -> None:
    x = np.random.default_rng(0).normal(size=(3, 4)).tolist()
    r = httpx.post(server.url + PREDICT, json={"inputs": x}, headers=module_env.headers())
    assert r.status_code == 200, r.text
    want = load_artifact(module_env.dirs[1]).predict(torch.tensor(x))
    assert_close(torch.tensor(r.json()["probabilities"]), want["probabilities"])
    assert r.json()["outputs"] == want["labels"] and r.headers["x-request-id"]

    stop = threading.Event()
    statuses: Counter = Counter()
    answers: list[tuple[float, float, int]] = []  # (sent, answered, version)
    lock = threading.Lock()

    def load() -> None:
        with httpx.Client(base_url=server.url, headers=module_env.headers(), timeout=10) as client:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    r = client.post(PREDICT, json={"inputs": [[0.1, 0.2, 0.3, 0.4]]})
                    status = r.status_code
                except httpx.HTTPError as err:  # a dropped connection is a failure too
                    status = type(err).__name__
                with lock:
                    statuses[status] += 1
                    if status == 200:
                        answers.append((sent, time.monotonic(), r.json()["version"]))

    def wait_for(n: int) -> None:
        """Until ``n`` more requests were answered (the machine may be slow: no fixed sleeps)."""
        target, deadline = len(answers) + n, time.monotonic() + 30
        while len(answers) < target and time.monotonic() < deadline and not any(s != 200 for s in statuses):
            time.sleep(0.01)

    admin = httpx.Client(base_url=server.url, headers=module_env.headers(admin=True), timeout=30)
    threads = [threading.Thread(target=load) for _ in range(THREADS)]
    for t in threads:
        t.start()
    try:
        wait_for(40)
        swap_sent = time.monotonic()
        r = admin.put("/v1/models/iris/aliases/production", json={"version": 2})
        assert r.status_code == 200, r.text
        swapped = time.monotonic()
        wait_for(80)
        rollback_sent = time.monotonic()
        r = admin.post("/v1/models/iris/rollback", json={"alias": "production"})
        assert r.status_code == 200, r.text
        rolled_back = time.monotonic()
        wait_for(40)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
        admin.close()
    assert set(statuses) == {200}, statuses
    # Requests answered before a change, or sent after it returned, got the version of their phase.
    phases = [({v for sent, done, v in answers if done < swap_sent}, {1}),
              ({v for sent, done, v in answers if sent > swapped and done < rollback_sent}, {2}),
              ({v for sent, done, v in answers if sent > rolled_back}, {1})]
    assert [seen for seen, _ in phases] == [want for _, want in phases]
    assert module_env.registry.aliases("iris")["production"] == 1


@pytest.mark.slow  # 2000 requests: about 10 s on two busy cores
def test_sticky_ab_split_follows_the_weights(module_env, server) -> None:
    config = {"variants": [{"alias": "production", "weight": 0.9}, {"alias": "candidate", "weight": 0.1}]}
    r = httpx.put(server.url + "/v1/models/iris/traffic", json=config, headers=module_env.headers(admin=True),
                  timeout=30)
    assert r.status_code == 200, r.text
    users = [f"user-{i}" for i in range(2000)]

    def variants(ids: list[str]) -> list[str]:
        with httpx.Client(base_url=server.url, headers=module_env.headers(), timeout=10) as client:
            return [client.post(PREDICT, json={"inputs": [[0.0, 0.0, 0.0, 0.0]]},
                                headers={"X-User-Id": user}).json()["variant"] for user in ids]

    with ThreadPoolExecutor(THREADS) as pool:
        chunks = [users[i::THREADS] for i in range(THREADS)]
        answered = dict(zip((u for c in chunks for u in c), (v for vs in pool.map(variants, chunks) for v in vs)))
    parsed = TrafficConfig.model_validate(config)
    assert answered == {u: choose_variant(parsed, "iris", u, random.Random()) for u in users}
    assert variants(users[:100]) == [answered[u] for u in users[:100]]  # asked again: the same variant
    n_candidate = sum(v == "candidate" for v in answered.values())
    low, high = scipy.stats.binom.ppf([1e-6, 1 - 1e-6], len(users), 0.1)
    assert low <= n_candidate <= high, n_candidate
