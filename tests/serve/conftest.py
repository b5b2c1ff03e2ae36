"""Shared fixtures of the server tests (used by several test files: keep them stable).

``serve_env``  a registry in ``tmp_path`` (SQLite file + artifact folder) holding the model
               ``"iris"`` with two versions of a tiny MLP classifier (4 inputs, 3 classes
               ``setosa/versicolor/virginica``, different weights, each with a training
               reference for drift), aliases ``production -> 1`` and ``candidate -> 2``, one
               predict key and one admin key. See :class:`ServeEnv`.
``make_client`` a factory ``make_client(settings_overrides=None, **overrides) -> TestClient``:
               builds ``create_app`` on ``serve_env``'s registry URL and enters the client
               (so the lifespan runs and the models load); every client is closed at teardown.
``module_env`` ``serve_env``'s registry shared by one test module (module scope).
``server``     a real ``python -m dlforge.cli serve`` process on ``module_env`` (module scope);
               ``server.url`` is its base URL. ``start_server``/``stop_server`` start others.

Example:
    def test_something(serve_env, make_client):
        client = make_client({"max_batch_size": 4})
        r = client.post("/v1/models/iris/predict", json={"inputs": [[0, 0, 0, 0]]},
                        headers=serve_env.headers())
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from dlforge.models import build
from dlforge.registry.artifact import load_artifact, save_artifact
from dlforge.registry.reference import build_reference
from dlforge.registry.store import Registry
from dlforge.serve.settings import ServeSettings

MODEL = "iris"
CLASS_NAMES = ["setosa", "versicolor", "virginica"]
INPUT_DIM = 4


def save_tiny_classifier(folder: Path, seed: int) -> Path:
    """A 4 -> 8 -> 3 MLP classifier artifact with a drift reference of 200 standard-normal inputs."""
    torch.manual_seed(seed)
    model = build({"arch": "mlp", "hidden": [8]}, input_shape=(INPUT_DIM,), num_outputs=len(CLASS_NAMES))
    path = save_artifact(model, folder, task="classification", class_names=CLASS_NAMES)
    art = load_artifact(path)
    x = torch.randn(200, INPUT_DIM, generator=torch.Generator().manual_seed(seed))
    reference = build_reference(x, art.predict(x), "classification", {})
    return save_artifact(model, folder, task="classification", class_names=CLASS_NAMES,
                         training={"reference": reference}, overwrite=True)


@dataclass
class ServeEnv:
    """A ready registry for server tests.

    ``registry`` is this process's own connection (change aliases with it to simulate another
    process); ``url``/``artifacts`` let an app or a subprocess open the same registry;
    ``dirs[v]`` is the artifact folder registered as version ``v`` (for reference predictions).
    """

    registry: Registry
    url: str
    artifacts: Path
    predict_key: str
    admin_key: str
    dirs: dict[int, Path]
    model: str = MODEL
    class_names: list[str] = field(default_factory=lambda: list(CLASS_NAMES))

    def headers(self, admin: bool = False, **extra: str) -> dict[str, str]:
        """``Authorization: Bearer <key>`` (the admin key if ``admin``) plus ``extra`` headers."""
        return {"Authorization": f"Bearer {self.admin_key if admin else self.predict_key}", **extra}

    def settings(self, **overrides: Any) -> ServeSettings:
        """ServeSettings on this registry; tests poll fast (0.05 s) unless told otherwise."""
        values = {"registry": self.url, "artifacts": str(self.artifacts), "poll_interval": 0.05, **overrides}
        return ServeSettings(**values)


def make_serve_env(folder: Path) -> ServeEnv:
    """The registry of ``serve_env`` in ``folder`` (for fixtures of other scopes); close ``env.registry`` after."""
    url, artifacts = f"sqlite:///{folder / 'registry.db'}", folder / "artifacts"
    registry = Registry(url, artifacts)
    dirs = {}
    for version, seed in ((1, 1), (2, 2)):
        dirs[version] = save_tiny_classifier(folder / f"model-v{version}", seed)
        assert registry.register(dirs[version], MODEL).version == version
    registry.set_alias(MODEL, "production", 1)
    registry.set_alias(MODEL, "candidate", 2)
    return ServeEnv(registry=registry, url=url, artifacts=artifacts, predict_key=registry.create_key(label="tests"),
                    admin_key=registry.create_key(admin=True, label="tests-admin"), dirs=dirs)


@pytest.fixture
def serve_env(tmp_path: Path) -> Iterator[ServeEnv]:
    """The registry described in the module docstring."""
    env = make_serve_env(tmp_path)
    yield env
    env.registry.close()


@pytest.fixture
def make_client(serve_env: ServeEnv) -> Iterator[Callable[..., Any]]:
    """``make_client(settings_overrides=None, **overrides)``: an entered TestClient on ``serve_env``."""
    from fastapi.testclient import TestClient

    from dlforge.serve.main import create_app

    clients: list[TestClient] = []

    def make(settings_overrides: dict[str, Any] | None = None, **overrides: Any) -> TestClient:
        app = create_app(serve_env.settings(**{**(settings_overrides or {}), **overrides}))
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in reversed(clients):
        client.__exit__(None, None, None)


# ------------------------------------------------------------------ a real server process
def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A ``python -m dlforge.cli serve`` subprocess; ``url`` is its base URL."""

    process: subprocess.Popen
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(env: ServeEnv, tmp_path: Path, *extra: str, timeout: float = 30.0) -> Server:
    """Start the server on a free port and wait until /readyz answers 200."""
    port = free_port()
    log = tmp_path / f"server-{port}.log"
    cmd = [sys.executable, "-m", "dlforge.cli", "serve", "--registry", env.url, "--artifacts", str(env.artifacts),
           "--port", str(port), "--log-level", "warning", *extra]
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    server = Server(process, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}:\n{server.output()}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=1.0).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    stop_server(server)
    raise AssertionError(f"the server did not become ready in {timeout} s:\n{server.output()}")


def stop_server(server: Server) -> None:
    """SIGTERM (uvicorn shuts down gracefully), then SIGKILL if it hangs."""
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="module")
def module_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeEnv]:
    """Like ``serve_env``, shared by a module's tests (a server process is slow to start)."""
    env = make_serve_env(tmp_path_factory.mktemp("serve"))
    yield env
    env.registry.close()


@pytest.fixture(scope="module")
def server(module_env: ServeEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real server process on ``module_env`` (keys required), shared by a module's tests."""
    srv = start_server(module_env, tmp_path_factory.mktemp("server"))
    yield srv
    stop_server(srv)
