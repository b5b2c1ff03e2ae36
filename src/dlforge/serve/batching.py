"""Dynamic batching: concurrent predict requests share one forward pass.

Requests wait in one queue. A collector task takes the oldest request, adds the requests
behind it that fit in ``max_batch_size`` samples, concatenates them along dim 0, runs ``fn``
in a single worker thread and hands each request its own rows of the outputs.

Bounded work per batch: a request of at most ``max_batch_size`` samples always runs whole,
in one batch. A larger one runs in chunks of at most ``max_batch_size`` samples (its rows
also fill the room other requests leave in a batch); after each chunk it goes to the back
of the queue, behind the requests that arrived meanwhile. So large requests take turns
with everything else (round-robin), and a one-sample request behind a 1,024-sample one
waits for about one chunk, not for the whole request. Its chunks run in order, and their
outputs are joined back into one answer.

When does a batch wait for more requests? Only when there is evidence of concurrent load:
the oldest request arrived while the previous batch was running, or several requests were
already waiting. Then the batch waits until it is full or ``max_wait_ms`` have passed since
its oldest request arrived (a request that already waited that long dispatches at once). While
it waits, an arriving request wakes the collector only when the waiting samples could fill the
batch or when it cannot join the batch (another shape or dtype): one wake-up per batch, not one
per request, which was most of the batcher's cost per request under load. A
lone request that finds the worker idle and the queue empty runs immediately, so batching
adds no latency at concurrency 1; under load, batches form while the worker is busy.

``max_queue`` counts the samples of requests that have not started; the rest of a request
already running in chunks was admitted and takes turns, so it does not make newcomers 429.

Example:
    >>> import asyncio, torch
    >>> async def main():
    ...     batcher = DynamicBatcher(lambda x: {"double": x * 2}, max_batch_size=8)
    ...     await batcher.start()
    ...     outs = await asyncio.gather(*(batcher.submit(torch.full((1, 2), float(i))) for i in range(3)))
    ...     await batcher.stop()
    ...     return [o["double"][0, 0].item() for o in outs]
    >>> asyncio.run(main())
    [0.0, 2.0, 4.0]
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

logger = logging.getLogger("dlforge.serve")
MIN_RETRY_AFTER = 0.05  # seconds; a hint below this only makes clients hammer the server


class QueueFullError(Exception):
    """The batcher's queue holds ``max_queue`` samples; the client should retry after ``retry_after`` s."""

    def __init__(self, retry_after: float, queued: int | None = None, max_queue: int | None = None) -> None:
        self.retry_after = retry_after
        held = "" if queued is None else f" ({queued} of {max_queue} samples waiting)"
        super().__init__(f"the request queue is full{held}; retry after {retry_after:.2f} s")


class BatcherStoppedError(RuntimeError):
    """``submit`` was called after ``stop``: route the request to the model that replaced this one."""


class BatchObserver(Protocol):
    """Told about every executed batch (the server's metrics implement it)."""

    def batch(self, size: int, queue_seconds: list[float]) -> None:
        """``size`` samples ran together; ``queue_seconds`` is each request's wait in the queue
        (for a request run in chunks: once, with its first chunk)."""


@dataclass
class _Request:
    x: torch.Tensor
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)
    done: int = 0  # rows already dispatched (to a batch that ran or is running)
    parts: list[dict[str, Any]] = field(default_factory=list)  # outputs of its finished chunks, in order

    @property
    def n(self) -> int:
        return len(self.x)

    @property
    def left(self) -> int:
        """Rows not yet dispatched."""
        return len(self.x) - self.done

    def fits_with(self, other: _Request) -> bool:
        """Whether the two requests can be concatenated along dim 0."""
        return self.x.shape[1:] == other.x.shape[1:] and self.x.dtype == other.x.dtype


@dataclass
class _Part:
    """Rows ``start:stop`` of one request, in one batch."""

    request: _Request
    start: int
    stop: int

    @property
    def x(self) -> torch.Tensor:
        whole = self.start == 0 and self.stop == self.request.n
        return self.request.x if whole else self.request.x[self.start:self.stop]

    @property
    def last(self) -> bool:
        return self.stop == self.request.n


def _slice(value: Any, start: int, stop: int, total: int) -> Any:
    """Rows ``start:stop`` of one output: tensors and arrays by rows, lists by items."""
    if isinstance(value, (torch.Tensor, np.ndarray, list, tuple)):
        if len(value) != total:
            raise RuntimeError(f"the batch function returned {len(value)} rows for a batch of {total} samples")
        return value[start:stop]
    return value  # a scalar describes the whole batch: every request gets it


def _check_rows(outputs: dict[str, Any], total: int) -> None:
    for value in outputs.values():
        _slice(value, 0, total, total)  # raises for an output of the wrong length


def _join(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One request's outputs from the outputs of its chunks (rows in order)."""
    if len(parts) == 1:
        return parts[0]
    joined = {}
    for key, first in parts[0].items():
        values = [p[key] for p in parts]
        if isinstance(first, torch.Tensor):
            joined[key] = torch.cat(values)
        elif isinstance(first, np.ndarray):
            joined[key] = np.concatenate(values)
        elif isinstance(first, (list, tuple)):
            joined[key] = type(first)(item for v in values for item in v)
        else:
            joined[key] = first  # a scalar described one chunk's batch: keep the first
    return joined


class DynamicBatcher:
    """Run ``fn`` on batches of concurrently submitted requests, in one worker thread.

    ``fn`` maps a model-ready batch (N, ...) to a dict of tensors, arrays or lists whose
    leading length is N (``Artifact.predict``'s dict). ``max_batch_size=1`` turns batching
    off: every sample runs alone, through the same queue and worker.

    Example:
        >>> batcher = DynamicBatcher(lambda x: {"y": x}, max_batch_size=32, max_wait_ms=2.0)
        >>> batcher.queue_size
        0
    """

    def __init__(self, fn: Callable[[torch.Tensor], dict[str, Any]], *, max_batch_size: int = 32,
                 max_wait_ms: float = 2.0, max_queue: int = 256, observer: BatchObserver | None = None) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError(f"need max_batch_size >= 1, max_queue >= 1 and max_wait_ms >= 0; got "
                             f"{max_batch_size}, {max_queue}, {max_wait_ms}")
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.observer = observer
        self._pending: deque[_Request] = deque()
        self._queued = 0  # samples waiting (not yet dispatched)
        self._unstarted = 0  # of those, samples of requests no chunk of which was dispatched (max_queue counts these)
        self._arrived: asyncio.Event | None = None
        # While a forming batch waits: the samples that would fill it and the (shape, dtype) of its rows.
        self._fill: tuple[int, torch.Size, torch.dtype] | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self._stopped = False
        self._last_done = -math.inf  # perf_counter when the last batch finished
        self._batch_seconds: float | None = None  # moving average, for Retry-After

    @property
    def queue_size(self) -> int:
        """Samples waiting for a batch (not counting the batch running now)."""
        return self._queued

    @property
    def running(self) -> bool:
        """Whether the collector is accepting and running requests."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start the worker thread and the collector task (idempotent)."""
        if self._stopped:
            raise BatcherStoppedError("this batcher was stopped; create a new one")
        if self._task is None:
            self._arrived = asyncio.Event()
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dlforge-batch")
            self._task = asyncio.create_task(self._collect(), name="dlforge-batcher")

    async def stop(self) -> None:
        """Run every queued request, then stop the collector and the worker thread."""
        if self._task is None:
            self._stopped = True
            return
        self._closing = True
        self._arrived.set()
        await self._task
        self._executor.shutdown(wait=True)
        self._stopped = True

    async def submit(self, x: torch.Tensor) -> dict[str, Any]:
        """Queue one request's samples ``x`` (n, ...) and return ``fn``'s outputs for its rows.

        Raises QueueFullError when the waiting samples plus these would exceed ``max_queue``
        (a request arriving at an empty queue is always accepted, whatever its size).
        """
        if self._stopped or self._closing and not self.running:
            raise BatcherStoppedError("this model's batcher is stopped")
        if self._task is None:
            await self.start()
        n = len(x)
        if n == 0:
            raise ValueError("a request needs at least one sample")
        if self._unstarted > 0 and self._unstarted + n > self.max_queue:
            raise QueueFullError(self._retry_after(), self._unstarted, self.max_queue)
        request = _Request(x, asyncio.get_running_loop().create_future())
        self._pending.append(request)
        self._queued += n
        self._unstarted += n
        fill = self._fill
        if fill is None or self._queued >= fill[0] or x.shape[1:] != fill[1] or x.dtype != fill[2]:
            self._arrived.set()
        return await request.future

    def _retry_after(self) -> float:
        """Seconds until the queue has likely drained: batches ahead times the mean batch time."""
        batches = math.ceil(self._queued / self.max_batch_size)
        return max(MIN_RETRY_AFTER, (self._batch_seconds or 0.0) * batches)

    def _drop(self, request: _Request) -> None:
        """Forget the undispatched rows of a request taken off the queue."""
        self._queued -= request.left
        if request.done == 0:
            self._unstarted -= request.n

    def _take(self, batch: list[_Part], size: int) -> int:
        """Move rows of waiting requests into ``batch``, in queue order; returns the new size.

        The head request joins whole if it fits; one larger than ``max_batch_size`` gives the
        rows that fit (the rest waits at the back of the queue, see ``_run``); otherwise the
        batch is complete (the head waits for the next batch rather than being skipped).
        """
        while self._pending and size < self.max_batch_size:
            head = self._pending[0]
            if head.future.done():  # cancelled while waiting (client gone): drop it
                self._pending.popleft()
                self._drop(head)
                continue
            room = self.max_batch_size - size
            if batch and not head.fits_with(batch[0].request):
                break
            if head.left > room and head.n <= self.max_batch_size:
                break  # a request that fits in one batch is never split
            take = min(room, head.left)
            self._pending.popleft()
            self._drop(head)  # the rows it keeps come back to the queue after this batch ran
            batch.append(_Part(head, head.done, head.done + take))
            head.done += take
            size += take
        return size

    async def _collect(self) -> None:
        """Form and run batches until stopped; the waiting rule is in the module docstring."""
        loop = asyncio.get_running_loop()
        while True:
            self._arrived.clear()
            batch: list[_Part] = []
            size = self._take(batch, 0)
            if not batch:
                if self._closing:
                    return
                await self._arrived.wait()
                continue
            first = batch[0].request
            under_load = first.enqueued < self._last_done or len(batch) > 1
            deadline = first.enqueued + self.max_wait
            while (under_load and size < self.max_batch_size and not self._closing and
                   (self._pending or time.perf_counter() < deadline)):
                if not self._pending:
                    self._arrived.clear()
                    self._fill = (self.max_batch_size - size, first.x.shape[1:], first.x.dtype)
                    try:
                        async with asyncio.timeout(max(0.0, deadline - time.perf_counter())):
                            await self._arrived.wait()
                    except TimeoutError:
                        pass  # the deadline: take whoever arrived meanwhile, then run
                    finally:
                        self._fill = None
                before = size
                size = self._take(batch, size)
                if size == before:
                    break  # the next request does not fit, or nobody came before the deadline: run what we have
            await self._run(loop, batch, size)

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Part], size: int) -> None:
        started = time.perf_counter()
        waits = [started - p.request.enqueued for p in batch if p.start == 0]
        try:
            outputs = await loop.run_in_executor(self._executor, self._execute, [p.x for p in batch])
        except Exception as err:  # fn failed: every request of this batch gets its error
            for p in batch:
                if not p.request.future.done():
                    p.request.future.set_exception(err)
        else:
            for p, out in zip(batch, outputs):
                p.request.parts.append(out)
                if p.last and not p.request.future.done():
                    p.request.future.set_result(_join(p.request.parts))
        for p in batch:  # the rest of a large request goes behind the requests that arrived meanwhile
            request = p.request
            if request.left and not request.future.done():
                self._pending.append(request)
                self._queued += request.left
            elif request.left:  # failed or cancelled: its other chunks never run
                request.done = request.n
        self._last_done = time.perf_counter()
        elapsed = self._last_done - started
        self._batch_seconds = elapsed if self._batch_seconds is None else 0.8 * self._batch_seconds + 0.2 * elapsed
        if self.observer is not None:
            try:
                self.observer.batch(size, waits)
            except Exception:  # metrics must never break serving
                logger.exception("batch observer failed")

    def _execute(self, xs: list[torch.Tensor]) -> list[dict[str, Any]]:
        """In the worker thread: concatenate, run ``fn``, split the outputs per request."""
        x = xs[0] if len(xs) == 1 else torch.cat(xs)
        try:
            outputs = self.fn(x)
        except StopIteration as err:  # asyncio cannot put StopIteration in a future: it would hang the batch
            raise RuntimeError(f"the model raised StopIteration: {err!r}") from err
        if len(xs) == 1:
            _check_rows(outputs, len(x))
            return [outputs]
        total, start, per_request = len(x), 0, []
        sizes = [len(part) for part in xs]
        split = {k: torch.split(v, sizes) for k, v in outputs.items()  # one call per output, not one per request
                 if isinstance(v, torch.Tensor) and len(v) == total}
        for i, n in enumerate(sizes):
            stop = start + n
            per_request.append({k: split[k][i] if k in split else _slice(v, start, stop, total)
                                for k, v in outputs.items()})
            start = stop
        return per_request
