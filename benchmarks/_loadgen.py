"""A closed-loop HTTP load generator that costs little CPU: asyncio streams, keep-alive HTTP/1.1.

``concurrency`` connections each loop send -> await the whole response -> send the next,
so at most ``concurrency`` requests are in flight (a closed loop: a slower server gets
fewer requests, never an unbounded queue). Requests are pre-encoded bytes; responses are
read by ``Content-Length`` (or chunked encoding) without parsing the body, so the client
spends a few tens of microseconds per request. It is bounded in time (``warmup`` +
``duration`` seconds) and in count (``max_requests``), and it only targets the host given
(the benchmark passes 127.0.0.1).

Requests that complete inside the measured window count: throughput is their number over
the window; latencies are theirs; a non-2xx status or a broken connection is an error.
Run it in its own process (the benchmark does) so it does not share an event loop or a GIL
with the server:

    python benchmarks/_loadgen.py --port 8000 --path /predict --bodies bodies.json \\
        --concurrency 32 --duration 5

The last line printed is one JSON object (see :func:`summarize`).

Example:
    >>> build_request("127.0.0.1", 8000, "/p", b"{}", {}).split(b"\\r\\n")[0]
    b'POST /p HTTP/1.1'
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import resource
import time
from dataclasses import dataclass, field

# A request still unanswered this long after the window closed is counted as an error.
REQUEST_TIMEOUT_S = 30.0


def build_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str],
                  content_type: str = "application/json") -> bytes:
    """One keep-alive ``POST`` with a body (JSON unless ``content_type`` says otherwise), as bytes ready to write."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Type: {content_type}",
             f"Content-Length: {len(body)}", "Connection: keep-alive"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class HttpClient(asyncio.Protocol):
    """One keep-alive connection: ``request(raw)`` writes a request and resolves to the status.

    A Protocol, not asyncio streams: the response is framed straight from the bytes
    received (status line, ``content-length`` or chunked), about half the CPU per request
    of ``StreamReader.readuntil``/``readexactly``.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("the server closed the connection"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        framed = frame_response(self.buffer)
        if framed is not None and self.waiter is not None and not self.waiter.done():
            status, used, keep_alive = framed
            del self.buffer[:used]
            self.closed = self.closed or not keep_alive
            self.waiter.set_result(status)

    def request(self, raw: bytes) -> asyncio.Future:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def frame_response(buf: bytes | bytearray) -> tuple[int, int, bool] | None:
    """(status, bytes used, keep_alive) when ``buf`` holds one whole response, else None.

    Example:
        >>> frame_response(b"HTTP/1.1 200 OK\\r\\ncontent-length: 2\\r\\n\\r\\nok")
        (200, 40, True)
        >>> frame_response(b"HTTP/1.1 200 OK\\r\\ncontent-length: 2\\r\\n\\r\\no") is None
        True
    """
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).lower()
    status = int(head[9:12])  # "http/1.1 200"
    keep_alive = b"\r\nconnection: close" not in head
    at = head.find(b"\r\ncontent-length:")
    if at >= 0:
        line_end = head.find(b"\r\n", at + 2)
        length = int(head[at + 17:line_end if line_end >= 0 else len(head)])
        total = end + 4 + length
        return (status, total, keep_alive) if len(buf) >= total else None
    if b"\r\ntransfer-encoding: chunked" in head:
        pos = end + 4
        while True:  # chunks: size in hex, CRLF, data, CRLF; the last one has size 0
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                return None
            size = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
            pos = line_end + 2 + size + 2
            if len(buf) < pos:
                return None
            if size == 0:
                return status, pos, keep_alive
    return status, end + 4, keep_alive  # no body (e.g. 204)


@dataclass
class Tally:
    """What the connections record: completion times, latencies and errors in the window."""

    window: tuple[float, float]
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    sent: int = 0
    timeouts: int = 0

    def done(self, started: float, ended: float, ok: bool, status: int | None) -> None:
        if not self.window[0] <= ended <= self.window[1]:
            return  # finished during the warmup, or after the window closed
        if status is not None:
            self.statuses[status] = self.statuses.get(status, 0) + 1
        if ok:
            self.latencies.append(ended - started)
        else:
            self.errors += 1


async def _connection(host: str, port: int, requests: list[bytes], offset: int, stride: int, tally: Tally,
                      max_requests: int) -> None:
    loop = asyncio.get_running_loop()
    client: HttpClient | None = None
    i = offset
    try:
        while time.perf_counter() < tally.window[1] and tally.sent < max_requests:
            tally.sent += 1
            started = time.perf_counter()
            status = None
            try:
                if client is None or client.closed:
                    _, client = await loop.create_connection(HttpClient, host, port)
                status = await client.request(requests[i % len(requests)])
                ok = 200 <= status < 300
            except (OSError, ValueError):  # refused, reset, or a response we cannot read
                ok = False
                if client is not None:
                    client.close()
                client = None
                await asyncio.sleep(0.01)  # a refused connection must not spin
            tally.done(started, time.perf_counter(), ok, status)
            i += stride  # connection c sends bodies c, c + N, ...: together they cycle through all
    finally:  # also when a request still hangs after the grace period and is cancelled
        if client is not None:
            client.close()


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation, as ``numpy.percentile``."""
    if not values:
        return math.nan
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize(tally: Tally, concurrency: int, cpu_s: float) -> dict:
    """Throughput (completed 2xx per second of the window), latency percentiles (ms), errors."""
    seconds = tally.window[1] - tally.window[0]
    lat = tally.latencies
    return {
        "concurrency": concurrency,
        "duration_s": round(seconds, 3),
        "requests": len(lat),
        "errors": tally.errors + tally.timeouts,
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "throughput": round(len(lat) / seconds, 2),
        # None, not NaN, when nothing completed: the output stays strict JSON.
        **{f"p{q}_ms": round(percentile(lat, q) * 1000, 3) if lat else None for q in (50, 95, 99)},
        "mean_ms": round(sum(lat) / len(lat) * 1000, 3) if lat else None,
        "sent": tally.sent,  # warmup and the requests still in flight when the window closed too
        "client_cpu_s": round(cpu_s, 3),
        "client_cpu_us_per_request": round(cpu_s / max(tally.sent, 1) * 1e6, 1),
    }


async def run_load(host: str, port: int, path: str, bodies: list[bytes], *, concurrency: int,
                   duration: float, warmup: float = 1.0, headers: dict[str, str] | None = None,
                   max_requests: int = 1_000_000, keep_latencies: bool = False,
                   content_type: str = "application/json") -> dict:
    """Drive ``concurrency`` keep-alive connections for ``warmup + duration`` seconds.

    Example:
        >>> asyncio.run(run_load("127.0.0.1", 9, "/", [b"{}"], concurrency=1, duration=0.05,
        ...                      warmup=0))["requests"]   # nothing listens on port 9
        0
    """
    requests = [build_request(host, port, path, body, headers or {}, content_type) for body in bodies]
    start = time.perf_counter()
    tally = Tally(window=(start + warmup, start + warmup + duration))
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    tasks = [asyncio.create_task(_connection(host, port, requests, c, concurrency, tally, max_requests))
             for c in range(concurrency)]
    # In-flight requests may finish after the window; one that hangs past the grace period
    # is cancelled and counted as a timeout (the server is stuck, not slow).
    _, pending = await asyncio.wait(tasks, timeout=warmup + duration + REQUEST_TIMEOUT_S)
    for task in pending:
        task.cancel()
    tally.timeouts = len(pending)
    await asyncio.gather(*pending, return_exceptions=True)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    result = summarize(tally, concurrency, cpu)
    if keep_latencies:  # for pooling several runs' percentiles
        result["latencies_ms"] = [round(v * 1000, 3) for v in tally.latencies]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--bodies", required=True, help="a JSON file: a list of request bodies (JSON values; "
                        "with --binary, base64 strings of raw bodies)")
    parser.add_argument("--binary", action="store_true", help="the bodies are base64 strings of raw bytes")
    parser.add_argument("--content-type", default="application/json")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring")
    parser.add_argument("--max-requests", type=int, default=1_000_000)
    parser.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    parser.add_argument("--latencies", action="store_true", help="add every latency (ms) as latencies_ms")
    args = parser.parse_args()
    with open(args.bodies, encoding="utf-8") as f:
        loaded = json.load(f)
    bodies = ([base64.b64decode(b) for b in loaded] if args.binary else
              [json.dumps(b, separators=(",", ":")).encode() for b in loaded])
    headers = dict(h.split(": ", 1) for h in args.header)
    result = asyncio.run(run_load(args.host, args.port, args.path, bodies, concurrency=args.concurrency,
                                  duration=args.duration, warmup=args.warmup, headers=headers,
                                  max_requests=args.max_requests, keep_latencies=args.latencies,
                                  content_type=args.content_type))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
