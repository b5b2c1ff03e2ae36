"""Running the server: uvicorn, with limits so that slow or idle clients cannot starve the rest.

Left alone, uvicorn waits for a request line and headers as long as the client takes,
keeps a connection that never sends a byte open forever, and accepts connections until
the process runs out of file descriptors; then ``accept()`` fails in a loop and nobody,
``/healthz`` included, is answered. ``run`` (used by ``dlforge serve`` and ``python -m
dlforge.serve``) adds, in the HTTP protocol (a subclass of uvicorn's own, passed as
``uvicorn.Config(http=...)``):

- a header timeout (``header_timeout_s``): a timer armed when a connection opens, and at
  the first byte of each later request, cancelled when the request head is complete. When
  it fires the connection is closed (after a 408 if part of a request had arrived). A
  client trickling bytes cannot extend it: only a complete head stops it;
- an idle timeout between requests: uvicorn's ``timeout_keep_alive`` (``keep_alive_s``);
- a connection cap (``max_connections``, by default derived from the open-files limit by
  ``connection_limit``). A connection beyond the cap closes the connection that has waited
  longest for a request head (a slow or idle client), so a normal client still gets in;
  when every connection is busy with a request, the new one is closed before anything is
  read. uvicorn's backlog is small (``BACKLOG``) because asyncio accepts up to that many
  sockets in one go before any protocol sees them: they come out of the reserve, so
  ``accept()`` never hits the open-files limit. The kernel's listen queue is then deepened
  again (``LISTEN_QUEUE``): a burst of connections waits there, holding no descriptor of
  ours, instead of being dropped (a dropped SYN costs the client a 1 s retry).
  uvicorn's ``limit_concurrency`` (503) bounds request tasks, which can outlive their
  connections.

The body timeout (``body_timeout_s``: 408, then the connection closes) is applied where
the body is read, in the security middleware (``serve/security.py``).

Example:
    >>> connection_limit(None, soft_limit=1024, open_fds=20)
    812
    >>> connection_limit(100, soft_limit=1024, open_fds=20)
    100
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
from typing import Any

import uvicorn

from dlforge.errors import ConfigError
from dlforge.registry.store import Registry
from dlforge.serve.main import create_app
from dlforge.serve.settings import ServeSettings

log = logging.getLogger("dlforge.serve")

RESERVED_FDS = 64  # model files, the registry database, logs, pipes: what the process opens besides sockets
BACKLOG = 16  # the most sockets asyncio accepts in one go (uvicorn's backlog; see the module docstring)
# Accepted sockets no protocol has seen yet, and closed ones not yet released: a few loop turns of accepts.
IN_TRANSIT = 8 * BACKLOG
LISTEN_QUEUE = 2048  # the kernel's queue of connections not yet accepted: they hold none of our descriptors
MAX_CONNECTIONS = 10_000  # a default above this buys nothing for one worker and costs memory
MIN_CONNECTIONS = 16
REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


def _open_fds() -> int:
    """File descriptors this process has open now (0 where the system does not say)."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(folder))
        except OSError:
            continue
    return 0


def connection_limit(max_connections: int | None, *, soft_limit: int | None = None,
                     open_fds: int | None = None) -> int:
    """The connection cap: ``max_connections`` if the open-files limit leaves room for it, or
    (None) what that limit leaves after the descriptors open now, ``RESERVED_FDS`` and
    ``IN_TRANSIT``, at most ``MAX_CONNECTIONS``.

    Raises ConfigError when the room is too small (a lower cap would turn clients away for
    nothing; a higher one would make ``accept()`` fail with "Too many open files").

    Example:
        >>> connection_limit(None, soft_limit=300, open_fds=20)
        88
    """
    if soft_limit is None:
        try:
            import resource
        except ImportError:  # Windows: no open-files limit to read
            return max_connections or MAX_CONNECTIONS
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft_limit == resource.RLIM_INFINITY:
            soft_limit = MAX_CONNECTIONS * 2
    open_now = _open_fds() if open_fds is None else open_fds
    room = soft_limit - open_now - RESERVED_FDS - IN_TRANSIT
    raise_it = "raise the open-files limit (e.g. `ulimit -n 4096` before dlforge serve, or LimitNOFILE= in systemd)"
    if max_connections is None:
        if room < MIN_CONNECTIONS:
            raise ConfigError(f"the open-files limit ({soft_limit}) leaves room for {max(room, 0)} connections after "
                              f"{open_now} open files and {RESERVED_FDS + IN_TRANSIT} reserved; the server needs at "
                              f"least {MIN_CONNECTIONS}", hint=raise_it)
        return min(room, MAX_CONNECTIONS)
    if max_connections > room:
        raise ConfigError(f"--max-connections {max_connections} does not fit under the open-files limit "
                          f"({soft_limit}): {open_now} files are open and {RESERVED_FDS + IN_TRANSIT} are reserved, "
                          f"which leaves {max(room, 0)}", hint=f"pass at most {max(room, 0)}, or {raise_it}")
    return max_connections


class _Limits:
    """What every connection of one server shares: the timeout, the cap and who waits for a head."""

    def __init__(self, header_timeout_s: float, max_connections: int) -> None:
        self.header_timeout_s = header_timeout_s
        self.max_connections = max_connections
        self.waiting: dict[Any, None] = {}  # connections without a request in progress, longest-waiting first
        self.shed, self._noted = 0, -math.inf  # connections closed for the cap; when the log last said so

    def note_shed(self) -> None:
        """Count a connection closed for the cap; log it at most once a minute (a flood must not flood the log)."""
        self.shed += 1
        if time.monotonic() - self._noted >= 60:
            self._noted = time.monotonic()
            log.warning("%d connections open (the cap, --max-connections): closing the longest-idle one, or the "
                        "newest when all are busy; %d so far", self.max_connections, self.shed)


class _Guard:
    """Mixed in front of uvicorn's HTTP protocol class by ``protocol_class``.

    It reads only what both uvicorn protocols (h11 and httptools) have: ``transport``,
    ``connections``, ``loop`` and ``cycle`` (the current request, ``response_complete``).
    """

    limits: _Limits
    _head_timer: asyncio.TimerHandle | None = None
    _head_bytes = False  # part of a request head arrived since the last response

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self.limits.note_shed()
            oldest = next(iter(self.limits.waiting), None)
            if oldest is None:  # every connection is serving a request: refuse this one, unread
                oldest = self
            # The longest-idle or slowest client makes room. It leaves the count now, not when the
            # transport reports the loss, so uvicorn's limit_concurrency never sees it (503).
            self.limits.waiting.pop(oldest, None)
            self.connections.discard(oldest)
            oldest.transport.abort()
            if oldest is self:
                return
        self.limits.waiting[self] = None
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self in self.limits.waiting:
            self._head_bytes = True
            if self._head_timer is None:  # the first byte of a request after an idle keep-alive
                self._arm()
        super().data_received(data)
        if self.cycle is not None and not self.cycle.response_complete:
            self._head_arrived()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._head_arrived()  # a pipelined request was already buffered
        else:  # idle now: uvicorn's keep-alive timer runs; the header timer starts at the next byte
            self.limits.waiting.pop(self, None)
            self.limits.waiting[self] = None  # to the end: it has waited the shortest
            self._head_bytes = False

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.limits.waiting.pop(self, None)
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timeout)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_arrived(self) -> None:
        self._disarm()
        self.limits.waiting.pop(self, None)

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self not in self.limits.waiting:
            return
        if self._head_bytes:  # it began a request: say why it ends
            self.transport.write(REQUEST_TIMEOUT)
        self.transport.close()


def protocol_class(header_timeout_s: float, max_connections: int) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools when installed, else h11) with the header timeout and
    the connection cap; pass it as ``uvicorn.Config(http=...)``. Each call makes a new class,
    whose connections share one cap.

    Example:
        >>> protocol_class(10.0, 500).limits.max_connections
        500
    """
    try:
        import httptools  # noqa: F401  (uvicorn's "auto" makes the same choice)
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol as base
    return type(f"Guarded{base.__name__}", (_Guard, base), {"limits": _Limits(header_timeout_s, max_connections)})


def uvicorn_config(app: Any, settings: ServeSettings, *, log_level: str = "info") -> uvicorn.Config:
    """The ``uvicorn.Config`` that serves ``app`` under ``settings``' connection limits.

    Example:
        >>> config = uvicorn_config(object(), ServeSettings(max_connections=100, keep_alive_s=3))
        >>> config.timeout_keep_alive, config.limit_concurrency, config.backlog
        (3.0, 101, 16)
    """
    max_connections = connection_limit(settings.max_connections)
    return uvicorn.Config(
        app, host=settings.host, port=settings.port, workers=1, log_level=log_level,
        http=protocol_class(settings.header_timeout_s, max_connections),
        ws="none",  # no WebSocket routes: an upgrade would leave the guarded protocol
        timeout_keep_alive=settings.keep_alive_s,
        # uvicorn answers 503 once connections or request tasks reach this; the cap above already
        # holds connections at max_connections, so this bounds tasks that outlived their client.
        limit_concurrency=max_connections + 1,
        backlog=BACKLOG,
    )


class _Server(uvicorn.Server):
    """uvicorn's server, listening with ``LISTEN_QUEUE`` once started: asyncio keeps accepting at
    most ``BACKLOG`` sockets per go, while the kernel holds a burst of new connections instead of
    dropping them."""

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets=sockets)
        for listener in getattr(self, "servers", []):
            for sock in listener.sockets:
                with socket.socket(fileno=os.dup(sock.fileno())) as dup:  # the same socket; closing the dup keeps it
                    dup.listen(LISTEN_QUEUE)


def run(settings: ServeSettings, *, log_level: str = "info") -> None:
    """Serve the registry's models until interrupted (one worker: models live in this process).

    Example::

        run(ServeSettings(registry="sqlite:///registry/registry.db", port=8000))
    """
    with Registry(settings.registry, settings.artifacts) as registry:
        registry.revision()  # a damaged or unreachable registry: exit 2 with the fix, before uvicorn starts
    config = uvicorn_config(create_app(settings), settings, log_level=log_level)
    log.info("at most %d connections; request heads within %g s, bodies within %g s, idle connections "
             "closed after %g s", config.limit_concurrency - 1, settings.header_timeout_s,
             settings.body_timeout_s, settings.keep_alive_s)
    _Server(config).run()
