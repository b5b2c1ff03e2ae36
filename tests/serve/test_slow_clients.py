"""Slow, idle and oversized clients against a real server (``python -m dlforge.cli serve``) whose
open-files limit is 1,024: normal clients keep being answered, slow sockets are closed.

The server inherits the limit: this process lowers its own soft limit to 1,024 while it
starts the server, then raises it again to hold 1,100 client sockets. Timeouts are short
(header 1.5 s, body and keep-alive 1 s) to keep the file fast. The cap's two cases, the
body timeout and the derived cap are also tested without a process (uvicorn in a thread,
the middleware called directly).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request

from dlforge.errors import ConfigError
from dlforge.serve import server as serve_server
from dlforge.serve.security import install_security
from dlforge.serve.settings import ServeSettings
from tests.serve.conftest import ServeEnv, Server, free_port, start_server, stop_server

resource = pytest.importorskip("resource", reason="the open-files limit (resource module) is POSIX-only")

SERVER_NOFILE = 1024
N_SLOW = 1100
CLIENT_NOFILE = N_SLOW + 200
HEADER_S, BODY_S, KEEP_ALIVE_S = 1.5, 1.0, 1.0
PREDICT = "/v1/models/iris/predict"


@pytest.fixture(scope="module")
def limited_server(module_env: ServeEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < CLIENT_NOFILE:
        pytest.skip(f"the hard open-files limit ({hard}) is below the {CLIENT_NOFILE} this test's client sockets need")
    resource.setrlimit(resource.RLIMIT_NOFILE, (SERVER_NOFILE, hard))  # the server process inherits it
    try:
        srv = start_server(module_env, tmp_path_factory.mktemp("limited"), "--header-timeout", str(HEADER_S),
                           "--body-timeout", str(BODY_S), "--keep-alive", str(KEEP_ALIVE_S))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, CLIENT_NOFILE), hard))
    yield srv
    stop_server(srv)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _port(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (EOF, reset, or the 408 it writes just before closing)."""
    sock.setblocking(False)
    try:
        data = sock.recv(4096)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return data == b"" or data.startswith(b"HTTP/1.1 408")


def _wait_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes ``sock``, and how long that took."""
    sock.settimeout(timeout)
    started, received = time.monotonic(), b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(4096):
            received += chunk
    return received, time.monotonic() - started


def test_slow_and_idle_sockets_neither_starve_normal_clients_nor_stay_open(module_env, limited_server) -> None:
    port = _port(limited_server)
    probes: list[tuple[str, object, float]] = []
    stop = threading.Event()

    def probe() -> None:  # a new connection per request: it must find room among the slow ones
        while not stop.is_set():
            for what, send in (("healthz", lambda: httpx.get(limited_server.url + "/healthz", timeout=5)),
                               ("predict", lambda: httpx.post(limited_server.url + PREDICT, timeout=5,
                                                              json={"inputs": [[0.1, 0.2, 0.3, 0.4]]},
                                                              headers=module_env.headers()))):
                started = time.monotonic()
                try:
                    status: object = send().status_code
                except httpx.HTTPError as err:
                    status = type(err).__name__
                probes.append((what, status, time.monotonic() - started))
            time.sleep(0.05)

    slow: list[socket.socket] = []
    prober = threading.Thread(target=probe)
    prober.start()
    try:
        for i in range(N_SLOW):  # more sockets than the server may open files
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            if i % 2 == 0:  # half send part of a request head, half send nothing
                sock.sendall(b"POST /v1/models/iris/predict HTTP/1.1\r\nHost: x\r\n")
            slow.append(sock)
        opened = time.monotonic()
        while time.monotonic() < opened + HEADER_S * 0.8:  # trickling bytes does not extend the header timeout
            for sock in slow[-200::2]:  # the newest: the oldest made room for normal clients
                with contextlib.suppress(OSError):
                    sock.send(b"X")
            time.sleep(0.2)
        time.sleep(max(0.0, opened + HEADER_S + 2.0 - time.monotonic()))
        still_open = sum(not _closed_by_server(sock) for sock in slow)
    finally:
        stop.set()
        prober.join(15)
        for sock in slow:
            sock.close()
    assert still_open == 0, f"{still_open} of {N_SLOW} slow sockets still open {HEADER_S + 2.0} s after the last opened"
    assert len(probes) >= 10 and {what for what, _, _ in probes} == {"healthz", "predict"}
    late = [(what, status, round(seconds, 2)) for what, status, seconds in probes if status != 200 or seconds > 1.0]
    assert not late, late
    assert "Too many open files" not in limited_server.output()


def test_an_idle_keep_alive_connection_is_closed_after_keep_alive(limited_server) -> None:
    with socket.create_connection(("127.0.0.1", _port(limited_server)), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        received, seconds = _wait_closed(sock, timeout=KEEP_ALIVE_S + 5)
    assert received.startswith(b"HTTP/1.1 200") and seconds < KEEP_ALIVE_S + 2.0, (received[:40], seconds)


def test_a_body_shorter_than_its_content_length_is_answered_408_and_closed(module_env, limited_server) -> None:
    head = (f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {module_env.predict_key}\r\nContent-Length: 100\r\n\r\n")
    with socket.create_connection(("127.0.0.1", _port(limited_server)), timeout=5) as sock:
        sock.sendall(head.encode() + b'{"inputs":')  # 10 of the 100 bytes promised
        received, seconds = _wait_closed(sock, timeout=BODY_S + 5)
    assert received.startswith(b"HTTP/1.1 408"), received[:200]
    assert b"request_timeout" in received and seconds < BODY_S + 2.0, seconds


# ---------------------------------------------------------------- without a server process
def _app(body_timeout_s: float) -> FastAPI:
    app = FastAPI()
    app.state.settings = ServeSettings(body_timeout_s=body_timeout_s)
    install_security(app)

    @app.post("/echo")
    async def echo(body: dict) -> dict:
        return body

    @app.post("/v1/models/m/versions")  # the upload route: its timeout runs between reads
    async def upload(request: Request) -> dict:
        return {"bytes": sum([len(chunk) async for chunk in request.stream()])}

    return app


async def _call(app: FastAPI, path: str, content_type: str, chunks: list[tuple[float, bytes]],
                length: int) -> tuple[int, dict[str, str], float]:
    """Send ``chunks`` (delay, bytes) as a request body, then nothing: (status, headers, seconds)."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
             "headers": [(b"content-type", content_type.encode()), (b"content-length", str(length).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    pending, sent = list(chunks), []
    body_bytes = 0

    async def receive() -> dict:
        nonlocal body_bytes
        if pending:
            delay, data = pending.pop(0)
            await asyncio.sleep(delay)
            body_bytes += len(data)
            return {"type": "http.request", "body": data, "more_body": body_bytes < length}
        await asyncio.Event().wait()  # the client sends no more
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    started = time.monotonic()
    await asyncio.wait_for(app(scope, receive, send), timeout=10)
    start = next(m for m in sent if m["type"] == "http.response.start")
    headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, time.monotonic() - started


def test_the_body_timeout_answers_408_with_connection_close() -> None:
    status, headers, seconds = asyncio.run(_call(_app(0.3), "/echo", "application/json", [(0, b'{"a":')], 100))
    assert status == 408 and headers["connection"] == "close" and 0.25 < seconds < 2.0, (status, headers, seconds)


def test_a_complete_body_and_a_slow_upload_that_keeps_sending_are_not_timed_out() -> None:
    app = _app(0.3)
    status, _, _ = asyncio.run(_call(app, "/echo", "application/json", [(0, b'{"a": 1}')], 8))
    assert status == 200
    chunks = [(0.15, b"x" * 10)] * 5  # 0.75 s in all, never 0.3 s without a byte
    status, _, seconds = asyncio.run(_call(app, "/v1/models/m/versions", "application/gzip", chunks, 50))
    assert status == 200 and seconds > 0.6


@contextlib.contextmanager
def _in_thread(app: FastAPI, settings: ServeSettings) -> Iterator[int]:
    """``app`` served by uvicorn with ``settings``' limits, in a thread; yields the port."""
    port = free_port()
    server = uvicorn.Server(serve_server.uvicorn_config(app, settings.model_copy(update={"port": port}),
                                                       log_level="warning"))
    thread = threading.Thread(target=server.run)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def test_beyond_the_cap_the_longest_idle_connection_makes_room_and_else_the_newcomer_is_refused() -> None:
    settings = ServeSettings(max_connections=4, header_timeout_s=5, body_timeout_s=5)
    with _in_thread(_app(5), settings) as port:
        connect = functools.partial(socket.create_connection, ("127.0.0.1", port), timeout=5)
        idle = [connect() for _ in range(4)]
        time.sleep(0.2)
        with connect() as newcomer:  # the oldest idle connection is closed for it
            newcomer.sendall(b"GET /docs HTTP/1.1\r\nHost: x\r\n\r\n")
            assert newcomer.recv(12) == b"HTTP/1.1 200"
        assert _wait_closed(idle[0], timeout=1)[0] == b""
        busy = [connect() for _ in range(4)]  # requests in progress (bodies still coming)
        for sock in busy:
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{")
        time.sleep(0.3)
        with connect() as refused:  # nobody idle to close: the newcomer is closed unread
            received, seconds = _wait_closed(refused, timeout=2)
        assert received == b"" and seconds < 1.0
        assert not any(_closed_by_server(sock) for sock in busy)  # the requests in progress keep going
        for sock in idle + busy:
            sock.close()


def test_the_connection_cap_follows_the_open_files_limit_and_refuses_too_low_a_limit() -> None:
    reserved = serve_server.RESERVED_FDS + serve_server.IN_TRANSIT
    assert serve_server.connection_limit(None, soft_limit=1024, open_fds=30) == 1024 - 30 - reserved
    assert serve_server.connection_limit(None, soft_limit=10**6, open_fds=30) == serve_server.MAX_CONNECTIONS
    assert serve_server.connection_limit(500, soft_limit=1024, open_fds=30) == 500
    with pytest.raises(ConfigError, match="open-files limit") as low:
        serve_server.connection_limit(None, soft_limit=reserved + 40, open_fds=30)
    assert "ulimit -n" in low.value.hint
    with pytest.raises(ConfigError, match="does not fit") as high:
        serve_server.connection_limit(2000, soft_limit=1024, open_fds=30)
    assert f"at most {1024 - 30 - reserved}" in high.value.hint


def test_dlforge_serve_options_reach_uvicorn() -> None:
    settings = ServeSettings(header_timeout_s=2.5, keep_alive_s=4, max_connections=300)
    config = serve_server.uvicorn_config(FastAPI(), settings)
    config.load()
    assert config.http_protocol_class.limits.header_timeout_s == 2.5
    assert config.http_protocol_class.limits.max_connections == 300
    assert config.timeout_keep_alive == 4 and config.limit_concurrency == 301
    assert config.backlog == serve_server.BACKLOG
