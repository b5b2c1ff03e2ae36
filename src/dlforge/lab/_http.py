"""An in-process HTTP server, a bounded client load and its latency statistics, for lab
experiments that measure a served model (topic 30): uvicorn in a thread on a free port,
keep-alive httpx clients, the server's own request count from ``/metrics``.

Example:
    >>> with serving(app) as url, httpx.Client(base_url=url) as client:  # doctest: +SKIP
    ...     send(client, "/healthz", None, method="GET").status
    200
"""

from __future__ import annotations

import contextlib
import math
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families


@dataclass
class Reply:
    """One request as the client saw it: HTTP status (or the transport error's name) and timing."""

    status: int | str
    sent: float
    done: float
    body: dict | None

    @property
    def ms(self) -> float:
        return (self.done - self.sent) * 1000


@contextlib.contextmanager
def serving(app, timeout: float = 30.0) -> Iterator[str]:
    """Run ``app`` under uvicorn in a thread on a free port; yields its base URL.

    On exit (also after an error) the server stops, its thread is joined and the port closed.

    Example:
        >>> with serving(create_app(ServeSettings(registry="sqlite:///r.db"))) as url:  # doctest: +SKIP
        ...     httpx.get(url + "/healthz").json()
        {'status': 'ok'}
    """
    import uvicorn

    # Bound here, so no other process can take the port meanwhile. IPPROTO_TCP explicitly:
    # asyncio sets TCP_NODELAY only on sockets that say so, and without it Nagle's algorithm
    # and delayed ACKs add about 40 ms to every keep-alive request.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    # A request stuck in the app must not hold the shutdown (and the experiment) forever.
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="q30-uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the in-process server did not start (see the log above)")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


def bearer(key: str) -> dict[str, str]:
    """The header that sends API key ``key``.

    Example:
        >>> bearer("k")
        {'Authorization': 'Bearer k'}
    """
    return {"Authorization": f"Bearer {key}"}


@contextlib.contextmanager
def clients(url: str, key: str, n: int, timeout: float) -> Iterator[list[httpx.Client]]:
    """``n`` keep-alive clients of ``url`` sending ``key``, closed on exit."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(httpx.Client(base_url=url, headers=bearer(key), timeout=timeout))
               for _ in range(n)]


def send(client: httpx.Client, path: str, body: dict | None, headers: dict | None = None,
          method: str = "POST") -> Reply:
    sent = time.perf_counter()
    try:
        r = client.request(method, path, json=body, headers=headers)
        status, data = r.status_code, (r.json() if r.status_code == 200 else None)
    except httpx.HTTPError as err:  # a dropped connection is a failed request too
        status, data = type(err).__name__, None
    return Reply(status, sent, time.perf_counter(), data)


def bounded_load(pool: list[httpx.Client], path: str, jobs: list[tuple[dict, dict]],
                 deadline: float) -> list[Reply]:
    """POST ``jobs`` (body, extra headers) to ``path``, one thread per client of ``pool``;
    the replies come back in job order.

    Jobs still waiting at ``deadline`` (``time.monotonic()``) are not sent and not
    returned: the load is bounded in count and in time.
    """
    replies: list[Reply | None] = [None] * len(jobs)

    def worker(k: int) -> None:
        for i in range(k, len(jobs), len(pool)):
            if time.monotonic() > deadline:
                return
            replies[i] = send(pool[k], path, *jobs[i])

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(pool))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for r in replies if r is not None]


def served_requests(url: str, model: str, timeout: float) -> float:
    """Predict requests of ``model`` the server's ``/metrics`` counted, all statuses and versions."""
    text = httpx.get(url + "/metrics", timeout=timeout).text
    return sum(s.value for family in text_string_to_metric_families(text) if family.name == "dlforge_requests"
               for s in family.samples if s.name == "dlforge_requests_total" and s.labels.get("model") == model)


def percentiles(ms: list[float]) -> tuple[float, float]:
    """(p50, p99) of latencies, numpy's linear interpolation.

    Example:
        >>> percentiles([float(i) for i in range(1, 101)])
        (50.5, 99.01)
    """
    if not ms:  # nothing answered: no latency, and every check on it fails
        return math.nan, math.nan
    p50, p99 = np.percentile(ms, [50, 99])
    return round(float(p50), 4), round(float(p99), 4)


def ratio_interval(a: list[float], b: list[float], seed: int = 0, draws: int = 2000) -> tuple[float, float]:
    """95% bootstrap interval of median(a) / median(b), resampling each list independently.

    Example:
        >>> lo, hi = ratio_interval([2.0] * 50, [1.0] * 50)
        >>> (lo, hi)
        (2.0, 2.0)
    """
    if not a or not b:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    x, y = np.asarray(a), np.asarray(b)
    ratios = (np.median(rng.choice(x, (draws, len(x))), axis=1)
              / np.median(rng.choice(y, (draws, len(y))), axis=1))
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return float(lo), float(hi)
