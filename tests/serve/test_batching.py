"""Dynamic batching: outputs equal per-request calls, batches form under load, limits hold."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from dlforge.models import build
from dlforge.serve.batching import BatcherStoppedError, DynamicBatcher, QueueFullError


class Recorder:
    """A BatchObserver that keeps every call."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.waits: list[list[float]] = []

    def batch(self, size: int, queue_seconds: list[float]) -> None:
        self.sizes.append(size)
        self.waits.append(queue_seconds)


def slow(fn, seconds: float):
    def wrapped(x):
        time.sleep(seconds)
        return fn(x)
    return wrapped


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=20))


def test_outputs_equal_per_request_calls_for_mixed_sizes():
    torch.manual_seed(0)
    model = build({"arch": "mlp", "hidden": [8]}, input_shape=(4,), num_outputs=3).eval()

    @torch.no_grad()
    def predict(x):
        logits = model(x)
        idx = logits.argmax(dim=1)
        return {"logits": logits, "array": logits.numpy() * 2, "labels": [f"c{i}" for i in idx.tolist()],
                "indices": idx, "batch": len(x)}

    requests = [torch.randn(n, 4) for n in (1, 3, 2, 5, 1, 4, 7)]
    observer = Recorder()

    async def main():
        batcher = DynamicBatcher(slow(predict, 0.01), max_batch_size=8, max_wait_ms=5, observer=observer)
        await batcher.start()
        outs = await asyncio.gather(*(batcher.submit(x) for x in requests))
        await batcher.stop()
        return outs

    outs = run(main())
    for x, out in zip(requests, outs):
        alone = predict(x)
        assert_close(out["logits"], alone["logits"])
        np.testing.assert_allclose(out["array"], alone["array"], rtol=1e-6)
        assert out["labels"] == alone["labels"] and out["indices"].tolist() == alone["indices"].tolist()
    assert max(observer.sizes) <= 8 and sum(observer.sizes) == sum(len(x) for x in requests)
    assert len(observer.sizes) < len(requests)  # some requests shared a batch


def test_concurrent_submits_form_batches_and_respect_max_batch_size():
    observer = Recorder()

    async def main():
        batcher = DynamicBatcher(slow(lambda x: {"y": x + 1}, 0.05), max_batch_size=4, max_wait_ms=2,
                                 observer=observer)
        await batcher.start()
        first = asyncio.create_task(batcher.submit(torch.zeros(1, 2)))
        await asyncio.sleep(0.01)  # the first request is running: the next ones queue behind it
        rest = [batcher.submit(torch.full((1, 2), float(i))) for i in range(9)]
        outs = await asyncio.gather(first, *rest)
        await batcher.stop()
        return outs

    outs = run(main())
    assert [o["y"][0, 0].item() for o in outs] == [1.0] + [i + 1.0 for i in range(9)]
    assert observer.sizes[0] == 1 and max(observer.sizes) == 4 and all(s <= 4 for s in observer.sizes)
    assert sum(observer.sizes) == 10
    assert all(len(w) == s for w, s in zip(observer.waits, observer.sizes))  # one wait per request of 1 sample


def test_a_request_up_to_max_batch_size_is_never_split_and_a_larger_one_runs_in_chunks():
    observer = Recorder()

    def predict(x):
        time.sleep(0.02)
        return {"y": x, "array": x.numpy() * 2, "labels": [f"v{v:g}" for v in x[:, 0].tolist()], "batch": len(x)}

    async def main():
        batcher = DynamicBatcher(predict, max_batch_size=4, observer=observer)
        await batcher.start()
        first = asyncio.create_task(batcher.submit(torch.zeros(1, 1)))
        await asyncio.sleep(0.01)
        sizes = (3, 3, 10, 1)
        xs = [torch.arange(n, dtype=torch.float32).view(n, 1) + 100 * n for n in sizes]
        outs = await asyncio.gather(*(batcher.submit(x) for x in xs))
        await first
        await batcher.stop()
        return xs, outs

    xs, outs = run(main())
    for x, out in zip(xs, outs):  # a chunked request gets its rows back in order, joined per output type
        assert_close(out["y"], x)
        np.testing.assert_array_equal(out["array"], x.numpy() * 2)
        assert out["labels"] == [f"v{v:g}" for v in x[:, 0].tolist()]
    # 3+3 > 4: the second 3 waits whole; the 10 runs in chunks that fill the room and take
    # turns with the 1 behind it.
    assert observer.sizes == [1, 3, 4, 4, 4, 2]


def test_a_small_request_behind_a_large_one_waits_for_one_chunk_not_the_whole_request():
    batches: list[list[float]] = []
    big_started = threading.Event()

    def fn(x):  # 2 ms per sample: 256 samples take about 0.5 s, a chunk of 16 about 32 ms
        batches.append(sorted(set(x[:, 0].tolist())))
        big_started.set()
        time.sleep(0.002 * len(x))
        return {"y": x}

    async def main():
        batcher = DynamicBatcher(fn, max_batch_size=16, max_queue=32)
        await batcher.start()
        big = asyncio.create_task(batcher.submit(torch.zeros(256, 1)))
        await asyncio.to_thread(big_started.wait, 5)  # the big request's first chunk is running
        small = await batcher.submit(torch.ones(1, 1))  # admitted: the big one's other rows already started
        small_done_first = not big.done()
        out = await big
        await batcher.stop()
        return small, small_done_first, out

    small, small_done_first, out = run(main())
    assert small["y"].tolist() == [[1.0]] and len(out["y"]) == 256
    assert small_done_first
    assert batches[0] == [0.0] and 1.0 in batches[1]  # it ran in the very next batch, after one chunk
    assert len(batches) == 17  # 257 samples in full batches of 16, then the last one


def test_large_requests_take_turns():
    order: list[float] = []

    def fn(x):
        order.extend(sorted(set(x[:, 0].tolist())))
        time.sleep(0.005)
        return {"y": x}

    async def main():
        batcher = DynamicBatcher(fn, max_batch_size=8)
        await batcher.start()
        outs = await asyncio.gather(*(batcher.submit(torch.full((24, 1), float(v))) for v in (1, 2)))
        await batcher.stop()
        return outs

    outs = run(main())
    assert [o["y"][:, 0].unique().tolist() for o in outs] == [[1.0], [2.0]]
    assert order == [1.0, 2.0] * 3  # round-robin by chunks of 8, not 24 of one then 24 of the other


def test_max_batch_size_one_runs_every_request_alone():
    observer = Recorder()

    async def main():
        batcher = DynamicBatcher(slow(lambda x: {"y": x * 3}, 0.005), max_batch_size=1, observer=observer)
        outs = await asyncio.gather(*(batcher.submit(torch.full((1, 1), float(i))) for i in range(6)))
        await batcher.stop()
        return outs

    outs = run(main())
    assert [o["y"].item() for o in outs] == [0.0, 3.0, 6.0, 9.0, 12.0, 15.0]
    assert observer.sizes == [1] * 6


def test_full_queue_raises_queue_full_error_with_retry_after():
    release = threading.Event()

    def blocked(x):
        release.wait(10)
        return {"y": x}

    async def main():
        batcher = DynamicBatcher(blocked, max_batch_size=2, max_queue=4)
        await batcher.start()
        running = asyncio.create_task(batcher.submit(torch.zeros(1, 1)))  # occupies the worker
        await asyncio.sleep(0.02)
        queued = [asyncio.create_task(batcher.submit(torch.zeros(n, 1))) for n in (2, 2)]
        await asyncio.sleep(0.02)
        assert batcher.queue_size == 4
        with pytest.raises(QueueFullError) as info:
            await batcher.submit(torch.zeros(1, 1))
        release.set()
        outs = await asyncio.gather(running, *queued)
        after = await batcher.submit(torch.zeros(3, 1))  # room again
        await batcher.stop()
        return info.value, outs, after

    err, outs, after = run(main())
    assert err.retry_after >= 0.05 and "queue is full" in str(err)
    assert [len(o["y"]) for o in outs] == [1, 2, 2] and len(after["y"]) == 3


def test_a_large_request_at_an_empty_queue_is_accepted():
    async def main():
        batcher = DynamicBatcher(lambda x: {"y": x}, max_batch_size=4, max_queue=8)
        out = await batcher.submit(torch.zeros(20, 1))
        await batcher.stop()
        return out

    assert len(run(main())["y"]) == 20


def test_an_exception_in_fn_reaches_every_request_of_the_batch():
    def failing(x):
        time.sleep(0.02)
        if (x < 0).any():
            raise RuntimeError("bad batch")
        return {"y": x}

    async def main():
        batcher = DynamicBatcher(failing, max_batch_size=8, max_wait_ms=20)
        await batcher.start()
        first = asyncio.create_task(batcher.submit(torch.zeros(1, 1)))
        await asyncio.sleep(0.005)
        batch = [batcher.submit(torch.full((1, 1), v)) for v in (1.0, -1.0, 2.0)]
        results = await asyncio.gather(first, *batch, return_exceptions=True)
        after = await batcher.submit(torch.ones(1, 1))  # the worker survives
        await batcher.stop()
        return results, after

    results, after = run(main())
    assert results[0]["y"].item() == 0.0
    assert all(isinstance(r, RuntimeError) and str(r) == "bad batch" for r in results[1:])
    assert after["y"].item() == 1.0


def test_outputs_of_the_wrong_length_are_an_error_not_a_wrong_answer():
    async def main():
        batcher = DynamicBatcher(lambda x: {"y": x[:1]}, max_batch_size=8)
        with pytest.raises(RuntimeError, match="returned 1 rows for a batch of 3"):
            await batcher.submit(torch.zeros(3, 1))
        await batcher.stop()

    run(main())


def test_a_lone_request_is_not_delayed_by_max_wait():
    async def main():
        batcher = DynamicBatcher(lambda x: {"y": x}, max_batch_size=32, max_wait_ms=200)
        await batcher.start()
        await batcher.submit(torch.zeros(1, 1))  # warm the worker thread
        latencies = []
        for _ in range(5):
            await asyncio.sleep(0.005)  # sequential clients: the worker is idle when each arrives
            t0 = time.perf_counter()
            await batcher.submit(torch.zeros(1, 1))
            latencies.append(time.perf_counter() - t0)
        await batcher.stop()
        return latencies

    latencies = run(main())
    assert max(latencies) < 0.15, latencies  # waiting would take max_wait_ms = 200


def test_stop_drains_queued_requests_then_refuses_new_ones():
    observer = Recorder()

    async def main():
        batcher = DynamicBatcher(slow(lambda x: {"y": x}, 0.02), max_batch_size=2, observer=observer)
        await batcher.start()
        tasks = [asyncio.create_task(batcher.submit(torch.full((1, 1), float(i)))) for i in range(7)]
        await asyncio.sleep(0)  # let them enqueue
        await batcher.stop()
        assert all(t.done() for t in tasks)
        with pytest.raises(BatcherStoppedError):
            await batcher.submit(torch.zeros(1, 1))
        return [t.result()["y"].item() for t in tasks]

    assert run(main()) == [float(i) for i in range(7)]
    assert sum(observer.sizes) == 7


def test_cancelled_requests_are_dropped_from_the_queue():
    observer = Recorder()

    async def main():
        batcher = DynamicBatcher(slow(lambda x: {"y": x}, 0.03), max_batch_size=8, observer=observer)
        await batcher.start()
        first = asyncio.create_task(batcher.submit(torch.zeros(1, 1)))
        await asyncio.sleep(0.01)
        head = asyncio.create_task(batcher.submit(torch.full((1, 1), 7.0)))
        gone = [asyncio.create_task(batcher.submit(torch.zeros(5, 1))) for _ in range(2)]  # clients leave
        kept = asyncio.create_task(batcher.submit(torch.ones(2, 1)))
        await asyncio.sleep(0)
        assert batcher.queue_size == 13
        for task in gone:
            task.cancel()
        await asyncio.gather(first, head, kept)
        await batcher.stop()
        return head.result(), kept.result(), batcher.queue_size

    head, kept, left = run(main())
    assert head["y"].item() == 7.0 and kept["y"].tolist() == [[1.0], [1.0]] and left == 0
    assert observer.sizes == [1, 3]  # the cancelled requests neither ran nor took room


def test_a_stop_iteration_in_the_model_fails_the_batch_instead_of_hanging() -> None:
    def fn(x):
        next(iter(()))  # e.g. next(model.parameters()) on a model without parameters

    async def main():
        batcher = DynamicBatcher(fn, max_batch_size=4)
        await batcher.start()
        try:
            with pytest.raises(RuntimeError, match="StopIteration"):
                await asyncio.wait_for(batcher.submit(torch.zeros(1, 2)), timeout=5)
        finally:
            await batcher.stop()

    asyncio.run(main())
