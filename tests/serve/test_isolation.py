"""Failure isolation: a stored version that no longer loads is unhealthy, never contagious.

Before: a version whose load raised something unexpected made every refresh raise, so the
alias call answered 500 after storing the alias, every later alias move of any model 500'd
and was never applied, the poll logged "registry poll failed" forever and the server would
not start again; a version whose load failed the usual way was silently replaced by the
latest version when its alias was asked for, and reloaded on every refresh.
Uses conftest's ``serve_env`` (model "iris": v1 <- production, v2 <- candidate).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dlforge.cli import app
from dlforge.errors import ConflictError, RegistryError, UnavailableError
from dlforge.serve import pool as pool_module
from dlforge.serve.monitor import Metrics
from dlforge.serve.pool import ModelPool
from tests.serve.conftest import save_tiny_classifier
from tests.serve.test_security import assert_error_body

X = {"inputs": [[0.1, 0.2, 0.3, 0.4]]}


def damage(env, version: int, name: str = "iris") -> None:
    """Truncate the stored weights of ``version`` (as a bad disk or a stray write would)."""
    weights = env.registry.get(name, version=version).path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])


def test_a_version_whose_load_raises_anything_is_unhealthy_and_retried_only_after_a_change(
        serve_env, monkeypatch, tmp_path: Path) -> None:
    bad = serve_env.registry.get("iris", version=2).path
    real, attempts = pool_module.load_artifact, []

    def load(path, **options):
        if Path(path) == bad:
            attempts.append(path)
            raise AttributeError(f"'list' object has no attribute 'get' (reading {path}/model.json)")
        return real(path, **options)

    monkeypatch.setattr(pool_module, "load_artifact", load)
    serve_env.registry.register(save_tiny_classifier(tmp_path / "other", seed=5), "other")

    async def main() -> None:
        pool = ModelPool(serve_env.registry, serve_env.settings(), Metrics())
        await pool.refresh(force=True)  # before: AttributeError, so the server never started
        assert sorted(pool.loaded("iris")) == [1] and sorted(pool.loaded("other")) == [1] and pool.ready()
        reason = pool.unhealthy("iris")[2]
        assert "malformed" in reason and "AttributeError" not in reason and str(tmp_path) not in reason, reason
        for how in ({"alias": "candidate", "version": None}, {"alias": None, "version": 2}):
            with pytest.raises(UnavailableError, match="version 2 of 'iris'.*cannot be served"):
                pool.resolve("iris", sticky_id=None, **how)
        assert pool.resolve("iris", version=None, alias=None, sticky_id=None)[0].version == 1
        await pool.refresh(force=True)
        assert len(attempts) == 1  # same registry revision: not tried again
        serve_env.registry.register(save_tiny_classifier(tmp_path / "other2", seed=6), "other")
        await pool.refresh()  # another model hot-swaps as usual, and the bad version is retried once
        assert sorted(pool.loaded("other")) == [2] and len(attempts) == 2
        assert pool.snapshot()[0]["unhealthy"] == [{"version": 2, "reason": reason}]
        await pool.close()

    asyncio.run(main())


def test_server_starts_answers_503_for_the_damaged_version_and_keeps_serving_the_rest(
        serve_env, make_client, tmp_path: Path) -> None:
    serve_env.registry.register(save_tiny_classifier(tmp_path / "other", seed=5), "other")
    damage(serve_env, 1)  # production's blob, damaged after the alias was set
    client = make_client()  # the lifespan loads everything it can
    admin, headers = serve_env.headers(admin=True), serve_env.headers()
    error = assert_error_body(client.post("/v1/models/iris/predict", json=X, headers=headers), 503, "unavailable")
    assert "version 1 of 'iris' (production) cannot be served" in error["message"]
    assert "model.safetensors is not a readable safetensors file" in error["message"]  # before: 200 from v2
    assert client.post("/v1/models/iris/predict", json={**X, "alias": "candidate"}, headers=headers).json()[
        "version"] == 2
    ready = client.get("/readyz")
    assert ready.status_code == 200 and [(u["model"], u["version"]) for u in ready.json()["unhealthy"]] == [
        ("iris", 1)]
    listing = {m["name"]: m for m in client.get("/v1/models", headers=headers).json()}
    assert [u["version"] for u in listing["iris"]["unhealthy"]] == [1] and listing["other"]["unhealthy"] == []
    assert str(tmp_path) not in ready.text + str(listing)
    # other models' alias moves are stored and applied
    serve_env.registry.register(save_tiny_classifier(tmp_path / "other2", seed=6), "other")
    moved = client.put("/v1/models/other/aliases/production", json={"version": 1}, headers=admin)
    assert moved.status_code == 200, moved.text
    assert client.post("/v1/models/other/predict", json=X, headers=headers).json()["version"] == 1
    # and a second server on the same registry starts too
    assert make_client().get("/readyz").status_code == 200


def test_alias_and_rollback_refuse_a_damaged_version_before_storing(serve_env, make_client, tmp_path: Path) -> None:
    reg = serve_env.registry
    reg.set_alias("iris", "candidate", 1)  # candidate: 2 -> 1, so a rollback would go back to 2
    damage(serve_env, 2)
    revision, aliases = reg.revision(), reg.aliases("iris")
    with pytest.raises(ConflictError, match="cannot point at version 2: its stored artifact does not load"):
        reg.set_alias("iris", "production", 2)
    with pytest.raises(ConflictError, match="cannot point at version 2"):
        reg.rollback("iris", "candidate")
    assert (reg.revision(), reg.aliases("iris")) == (revision, aliases)  # nothing stored
    client = make_client()
    admin = serve_env.headers(admin=True)
    error = assert_error_body(client.put("/v1/models/iris/aliases/staging", json={"version": 2}, headers=admin), 409)
    assert "model.safetensors" in error["message"]
    assert_error_body(client.post("/v1/models/iris/rollback", json={"alias": "candidate"}, headers=admin), 409)
    result = CliRunner().invoke(app, ["registry", "alias", "iris", "production", "2", "--registry", serve_env.url,
                                      "--artifacts", str(serve_env.artifacts)])
    assert result.exit_code == 2 and "does not load" in result.output and "Traceback" not in result.output
    assert (reg.revision(), reg.aliases("iris")) == (revision, aliases)


def test_a_failing_registry_is_logged_once_per_distinct_error_not_every_poll(serve_env, caplog) -> None:
    async def main() -> None:
        pool = ModelPool(serve_env.registry, serve_env.settings(poll_interval=0.005), Metrics())
        await pool.refresh(force=True)
        calls = []

        def broken() -> int:
            calls.append(1)
            raise RegistryError("the registry database registry.db is damaged (file is not a database)")

        pool.registry.revision = broken  # this instance only
        task = asyncio.create_task(pool.poll())
        while len(calls) < 20:
            await asyncio.sleep(0.005)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pool.close()

    with caplog.at_level(logging.ERROR, logger="dlforge.serve"):
        asyncio.run(main())
    assert [r.message for r in caplog.records].count(
        "registry poll failed (logged again only when the error changes)") == 1  # before: 20 tracebacks
