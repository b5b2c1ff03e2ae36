"""The model pool: what it loads, hot swaps that fail no request, polling, retiring and failed loads."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import pytest
import torch

from dlforge.errors import ArtifactError, NotFoundError, UnavailableError
from dlforge.serve import pool as pool_module
from dlforge.serve.batching import BatcherStoppedError
from dlforge.serve.monitor import Metrics
from dlforge.serve.pool import ModelPool

PREDICT = "/v1/models/iris/predict"
X = {"inputs": [[0.1, 0.2, 0.3, 0.4]]}


def _pool(serve_env, **overrides) -> ModelPool:
    return ModelPool(serve_env.registry, serve_env.settings(**overrides), Metrics())


def _default_version(client, serve_env) -> int:
    r = client.post(PREDICT, json=X, headers=serve_env.headers())
    assert r.status_code == 200, r.text
    return r.json()["version"]


def test_loads_aliased_and_latest_versions(serve_env) -> None:
    async def main() -> None:
        pool = _pool(serve_env)
        assert not pool.ready()
        await pool.refresh(force=True)
        assert pool.ready() and sorted(pool.loaded("iris")) == [1, 2]
        [entry] = pool.snapshot()
        assert entry["aliases"] == {"candidate": 2, "production": 1} and entry["latest"] == 2
        assert [(v["version"], v["aliases"], v["latest"]) for v in entry["versions"]] == [
            (1, ["production"], False), (2, ["candidate"], True)]
        serve_env.registry.register(serve_env.dirs[1], "iris")  # v3: the new latest
        await pool.refresh()
        assert sorted(pool.loaded("iris")) == [1, 2, 3]
        assert pool.resolve("iris", version=None, alias=None, sticky_id=None)[1] == "production"
        assert pool.resolve("iris", version=3, alias=None, sticky_id=None)[1] == "version:3"
        with pytest.raises(NotFoundError):
            pool.resolve("iris", version=7, alias=None, sticky_id=None)
        serve_env.registry.set_alias("iris", "candidate", 3)
        await pool.refresh()
        assert sorted(pool.loaded("iris")) == [1, 3]  # v2 is neither aliased nor the latest
        await pool.close()
        assert pool.loaded("iris") == {}

    asyncio.run(main())


def test_refresh_is_a_no_op_without_a_registry_change(serve_env, monkeypatch) -> None:
    async def main() -> None:
        pool = _pool(serve_env)
        await pool.refresh(force=True)
        calls = []
        monkeypatch.setattr(pool, "_read_registry", lambda: calls.append(1) or {})
        await pool.refresh()
        assert calls == [] and sorted(pool.loaded("iris")) == [1, 2]
        await pool.close()

    asyncio.run(main())


def test_retired_model_stops_only_after_its_last_request(serve_env) -> None:
    async def main() -> None:
        pool = _pool(serve_env)
        await pool.refresh(force=True)
        old, variant, _ = pool.resolve("iris", version=None, alias=None, sticky_id=None)
        assert (old.version, variant) == (1, "production")
        old.acquire()  # a request in flight on v1
        serve_env.registry.set_alias("iris", "production", 2)
        refresh = asyncio.create_task(pool.refresh())
        await asyncio.sleep(0.2)
        new, _, _ = pool.resolve("iris", version=None, alias=None, sticky_id=None)
        assert new.version == 2 and not refresh.done()  # swapped, but v1 is still held
        out = await old.batcher.submit(torch.zeros(1, 4))  # the held model still answers
        assert out["labels"]
        old.release()
        await asyncio.wait_for(refresh, 5)
        with pytest.raises(BatcherStoppedError):
            await old.batcher.submit(torch.zeros(1, 4))
        await pool.close()

    asyncio.run(main())


def test_a_version_that_fails_to_load_is_skipped(serve_env, monkeypatch) -> None:
    bad = str(serve_env.registry.get("iris", version=2).path)
    real = pool_module.load_artifact

    def load(path, **options):
        if str(path) == bad:
            raise ArtifactError(f"{path}/model.json is missing")
        return real(path, **options)

    monkeypatch.setattr(pool_module, "load_artifact", load)

    async def main() -> None:
        pool = _pool(serve_env)
        await pool.refresh(force=True)
        assert sorted(pool.loaded("iris")) == [1] and pool.ready()  # production still answers
        with pytest.raises(UnavailableError, match="model.json is missing"):  # 503 with the reason
            pool.resolve("iris", version=None, alias="candidate", sticky_id=None)
        serve_env.registry.register(serve_env.dirs[2], "broken")  # same content: same failing path
        await pool.refresh()
        assert not pool.ready() and pool.loaded("broken") == {}
        await pool.close()

    asyncio.run(main())


def test_refresh_picks_up_alias_changes_and_polling_notices_them(serve_env, make_client) -> None:
    client = make_client(poll_interval=30.0)  # no polling: refresh by hand first
    assert _default_version(client, serve_env) == 1
    serve_env.registry.set_alias("iris", "production", 2)  # "another process" moves the alias
    pool = client.app.state.pool
    client.portal.call(pool.refresh)
    assert _default_version(client, serve_env) == 2
    assert sorted(pool.loaded("iris")) == [2]

    polled = make_client(poll_interval=0.05)
    serve_env.registry.set_alias("iris", "production", 1)
    deadline = time.monotonic() + 5
    while _default_version(polled, serve_env) != 1:
        assert time.monotonic() < deadline, "the poll did not pick up the alias change"
        time.sleep(0.05)


def test_no_request_fails_during_three_alias_flips(serve_env, make_client) -> None:
    client = make_client(poll_interval=30.0, max_wait_ms=1.0)
    pool = client.app.state.pool
    stop = threading.Event()
    statuses: Counter = Counter()
    versions: Counter = Counter()
    lock = threading.Lock()

    def send() -> None:
        while not stop.is_set():
            r = client.post(PREDICT, json=X, headers=serve_env.headers())
            with lock:
                statuses[r.status_code] += 1
                if r.status_code == 200:
                    versions[r.json()["version"]] += 1

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for target in (2, 1, 2):  # v1 is unloaded on each flip to 2 and reloaded on the flip back
            time.sleep(0.3)
            serve_env.registry.set_alias("iris", "production", target)
            client.portal.call(pool.refresh)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert set(statuses) == {200}, statuses
    assert versions[1] > 0 and versions[2] > 0
    assert sum(statuses.values()) >= 20
