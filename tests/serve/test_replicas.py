"""Two real ``dlforge serve`` processes on one PostgreSQL registry act as one service.

A client spreads requests over both replicas (threads). Then ``GET .../experiment`` on
either reports all of them (within one flush interval), sticky users get the same variant
from both, feedback sent to B for requests A served counts, and an alias moved (and rolled
back) through A is served by B within the poll interval, with no failed request. The
figures (requests, failures, time to converge) are printed (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from dlforge.registry.store import Registry
from dlforge.serve import pool as pool_module
from dlforge.serve.monitor import Metrics
from dlforge.serve.pool import FLUSH_INTERVAL_S
from dlforge.serve.routing import TrafficConfig, choose_variant
from tests.serve.conftest import (CLASS_NAMES, MODEL, ServeEnv, Server, save_tiny_classifier, start_server,
                                  stop_server)

PREDICT, EXPERIMENT, FEEDBACK = (f"/v1/models/{MODEL}/{route}" for route in ("predict", "experiment", "feedback"))
POLL_S = 0.2  # --poll-interval of both replicas
MARGIN_S = 1.5  # a busy 2-core machine: a refresh loads nothing new here, but the event loop may lag
REQUESTS, THREADS = 200, 8
SPLIT = {"variants": [{"alias": "production", "weight": 0.5}, {"alias": "candidate", "weight": 0.5}]}
X = [[0.1, -0.2, 0.3, 0.4]]


@pytest.fixture(scope="module")
def replicas(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServeEnv, list[Server]]]:
    """iris v1 (production) and v2 (candidate) split 50/50 in a fresh PostgreSQL database, served by two replicas."""
    import psycopg

    admin_dsn, name = postgres_url.replace("postgresql+psycopg://", "postgresql://"), f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url, folder = postgres_url.rsplit("/", 1)[0] + f"/{name}", tmp_path_factory.mktemp("replicas")
    registry = Registry(url, folder / "artifacts")
    dirs = {v: save_tiny_classifier(folder / f"model-v{v}", seed=v) for v in (1, 2)}
    for v in (1, 2):
        registry.register(dirs[v], MODEL)
    registry.set_alias(MODEL, "production", 1)
    registry.set_alias(MODEL, "candidate", 2)
    registry.set_traffic(MODEL, SPLIT)
    env = ServeEnv(registry=registry, url=url, artifacts=folder / "artifacts", predict_key=registry.create_key(),
                   admin_key=registry.create_key(admin=True), dirs=dirs)
    servers: list[Server] = []
    try:
        for _ in range(2):
            servers.append(start_server(env, folder, "--poll-interval", str(POLL_S), timeout=60))
        yield env, servers
    finally:
        for server in servers:
            stop_server(server)
        registry.close()
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _experiment(env: ServeEnv, server: Server) -> dict:
    r = httpx.get(server.url + EXPERIMENT, headers=env.headers(), timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _totals(stats: dict) -> dict[str, tuple[int, int, int]]:
    return {alias: (v["requests"], v["feedback"], v["correct"]) for alias, v in stats["variants"].items()}


def test_experiment_and_feedback_span_both_replicas(replicas) -> None:
    env, servers = replicas
    users = [f"user-{i // 2}" for i in range(REQUESTS)]  # each user once on A, once on B

    def send(indices: list[int]) -> list[tuple[int, int, dict]]:
        clients = [httpx.Client(base_url=s.url, headers=env.headers(), timeout=30) for s in servers]
        try:
            out = []
            for i in indices:
                r = clients[i % 2].post(PREDICT, json={"inputs": X}, headers={"X-User-Id": users[i]})
                out.append((i, r.status_code, r.json()))
            return out
        finally:
            for client in clients:
                client.close()

    started = time.monotonic()
    with ThreadPoolExecutor(THREADS) as pool:
        answers = [a for chunk in pool.map(send, [list(range(REQUESTS))[t::THREADS] for t in range(THREADS)])
                   for a in chunk]
    sent_s = time.monotonic() - started
    statuses = Counter(status for _, status, _ in answers)
    assert statuses == {200: REQUESTS}, statuses
    by_index = {i: body for i, _, body in answers}
    config = TrafficConfig.model_validate(SPLIT)
    for i in range(0, REQUESTS, 2):  # sticky: both replicas agree with the hash, and so with each other
        assert by_index[i]["variant"] == by_index[i + 1]["variant"] == choose_variant(config, MODEL, users[i],
                                                                                      random.Random())
    sent = Counter(body["variant"] for body in by_index.values())

    # Every replica reports every request, at the latest one flush interval after the last answer.
    done, deadline = time.monotonic(), time.monotonic() + FLUSH_INTERVAL_S + MARGIN_S
    while True:
        seen = [_totals(_experiment(env, s)) for s in servers]
        if all({a: t[0] for a, t in s.items()} == sent for s in seen) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    converged_s = time.monotonic() - done
    assert seen[0] == seen[1] and {a: t[0] for a, t in seen[0].items()} == dict(sent), (seen, sent)

    # Feedback to B for what A served: right for every other request, wrong (another class) for the rest.
    served_by_a = [by_index[i] for i in range(0, REQUESTS, 2)]
    want = Counter()
    with httpx.Client(base_url=servers[1].url, headers=env.headers(), timeout=30) as b:
        for k, body in enumerate(served_by_a):
            answer = body["outputs"][0]
            label = answer if k % 2 == 0 else next(c for c in CLASS_NAMES if c != answer)
            r = b.post(FEEDBACK, json={"request_id": body["request_id"], "label": label})
            assert r.status_code == 200, r.text
            want[body["variant"], "feedback"] += 1
            want[body["variant"], "correct"] += k % 2 == 0
        assert b.post(FEEDBACK, json={"request_id": uuid.uuid4().hex, "label": "setosa"}).status_code == 404
        # at once, before A's next flush: B waits for it (up to a moment) instead of answering 404
        fresh = httpx.post(servers[0].url + PREDICT, json={"inputs": X, "alias": "candidate"}, headers=env.headers())
        r = b.post(FEEDBACK, json={"request_id": fresh.json()["request_id"], "label": fresh.json()["outputs"][0]})
        assert r.status_code == 200, r.text
        want["candidate", "feedback"] += 1
        want["candidate", "correct"] += 1
        sent["candidate"] += 1
    for server in servers:
        stats = _experiment(env, server)
        assert _totals(stats) == {a: (sent[a], want[a, "feedback"], want[a, "correct"]) for a in sent}
    print(f"\nreplicas: {REQUESTS} requests over 2 replicas in {sent_s:.2f} s, {REQUESTS - statuses[200]} failed; "
          f"both reported all {REQUESTS} {converged_s:.3f} s after the last answer (flush interval "
          f"{FLUSH_INTERVAL_S} s); {len(served_by_a)} feedbacks sent to B for A's requests, all counted")


def test_an_alias_moved_through_one_replica_is_served_by_both(replicas) -> None:
    env, servers = replicas
    stop, lock = threading.Event(), threading.Lock()
    statuses: Counter = Counter()
    answers: list[tuple[int, float, int]] = []  # (replica, sent, version)

    def load(t: int) -> None:
        clients = [httpx.Client(base_url=s.url, headers=env.headers(), timeout=30) for s in servers]
        try:
            n = t
            while not stop.is_set():
                replica, n = n % 2, n + 1
                sent = time.monotonic()
                try:
                    r = clients[replica].post(PREDICT, json={"inputs": X, "alias": "production"})
                    status = r.status_code
                except httpx.HTTPError as err:  # a dropped connection is a failure too
                    status = type(err).__name__
                with lock:
                    statuses[status] += 1
                    if status == 200:
                        answers.append((replica, sent, r.json()["version"]))
        finally:
            for client in clients:
                client.close()

    def settle(changed: float, version: int) -> list[float]:
        """Wait until both replicas answered ``version`` to 20 requests sent after ``changed``; per
        replica, how long after ``changed`` the last request answered by the old version was sent."""
        deadline = time.monotonic() + POLL_S + MARGIN_S + 5
        while time.monotonic() < deadline:
            with lock:
                fresh = [sum(1 for r, s, v in answers if r == k and s > changed and v == version) for k in (0, 1)]
            if min(fresh) >= 20:
                break
            time.sleep(0.02)
        with lock:
            return [max([s - changed for r, s, v in answers if r == k and s > changed and v != version], default=0.0)
                    for k in (0, 1)]

    admin = httpx.Client(base_url=servers[0].url, headers=env.headers(admin=True), timeout=30)
    threads = [threading.Thread(target=load, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        assert admin.put(f"/v1/models/{MODEL}/aliases/production", json={"version": 2}).status_code == 200
        swapped = time.monotonic()
        swap_lag = settle(swapped, 2)
        assert admin.post(f"/v1/models/{MODEL}/rollback", json={"alias": "production"}).status_code == 200
        rolled_back = time.monotonic()
        rollback_lag = settle(rolled_back, 1)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        admin.close()
    assert set(statuses) == {200}, statuses
    assert swap_lag[0] == 0 and rollback_lag[0] == 0, "A answers with the new version once its admin route returns"
    assert max(swap_lag + rollback_lag) <= POLL_S + MARGIN_S, (swap_lag, rollback_lag)
    assert env.registry.aliases(MODEL)["production"] == 1
    print(f"\nreplicas: {sum(statuses.values())} requests during a swap and a rollback through A, "
          f"{sum(statuses.values()) - statuses[200]} failed; B served the new version {swap_lag[1]:.3f} s "
          f"(swap) and {rollback_lag[1]:.3f} s (rollback) after A's admin route returned (poll interval {POLL_S} s)")


def test_the_pool_writes_records_in_the_background_and_at_close(serve_env, monkeypatch) -> None:
    """In one process: the flusher beside the poll loop writes a full batch at once, the rest at close."""
    monkeypatch.setattr(pool_module, "FLUSH_INTERVAL_S", 30.0)  # only a full batch wakes the flusher now
    store = serve_env.registry.experiments

    async def main() -> None:
        pool = pool_module.ModelPool(serve_env.registry, serve_env.settings(), Metrics())
        pool.writer.batch_rows = 5
        await pool.refresh(force=True)
        poll = asyncio.create_task(pool.poll())
        await asyncio.sleep(0.05)
        experiment = pool.experiment(MODEL)
        for i in range(4):
            experiment.record(f"r{i}", "production", 1, ["setosa"], 0.01)
        await asyncio.sleep(0.3)
        assert store.counts(MODEL) == {}, "queued, not written on the request path"
        experiment.record("r4", "production", 1, ["setosa"], 0.01)
        deadline = time.monotonic() + 5
        while not store.counts(MODEL) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert store.counts(MODEL) == {"production": 5}, "a full batch is written at once"
        poll.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poll
        experiment.record("r5", "candidate", 2, ["setosa"], 0.01)
        await pool.close()
        assert store.counts(MODEL) == {"candidate": 1, "production": 5}, "close writes what is left"
        assert pool.writer.written == 6 and pool.writer.dropped == 0

    asyncio.run(main())
