"""A/B records in the registry database: the store, the batched writer and one model's shared records.

The statistics are checked against the in-memory experiment (the reference): the same
requests and feedback give the same numbers from either store.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from dlforge.errors import UnavailableError
from dlforge.registry import Registry
from dlforge.registry.experiments import ExperimentStore, ExperimentWriter, SharedRecords, StatsRow
from dlforge.serve.routing import Experiment


def _row(i: int, model: str = "iris", variant: str = "production", **extra) -> dict:
    return {"model": model, "request_id": f"r{i}", "variant": variant, "version": 1, "predictions": ["setosa"],
            "indices": [0], "latency_s": 0.001 * (i + 1), **extra}


@pytest.fixture
def registry(tmp_path: Path):
    with Registry(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "artifacts") as reg:
        yield reg


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_records_round_trip_without_moving_the_revision(backend: str, tmp_path: Path, request) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}" if backend == "sqlite" else request.getfixturevalue("pg_registry_url")
    with Registry(url, tmp_path / "artifacts") as reg:
        store, before = reg.experiments, reg.revision()
        assert store.record_batch([_row(0, correlation_id="client-7"), _row(1, variant="candidate")]) == 2
        store.record_batch([_row(0, variant="candidate")])  # a retried flush: the stored row stays as it was
        rec = store.record_of("iris", "r0")
        assert {k: rec[k] for k in ("variant", "version", "predictions", "indices", "correlation_id", "feedback",
                                    "correct", "label")} == {
            "variant": "production", "version": 1, "predictions": ["setosa"], "indices": [0],
            "correlation_id": "client-7", "feedback": 0, "correct": 0, "label": None}
        assert abs(rec["at"] - time.time()) < 60 and store.record_of("iris", "nope") is None
        assert store.record_of("other", "r0") is None  # ids are per model
        assert store.feedback("iris", "r0", label="setosa", feedback=1, correct=1)
        assert not store.feedback("iris", "nope", label="setosa", feedback=1, correct=1)
        assert store.record_of("iris", "r0")["label"] == "setosa"
        assert store.counts("iris") == {"candidate": 1, "production": 1}
        assert store.stats_rows("iris") == [StatsRow("production", 1, 0.001, 1, 1), StatsRow("candidate", 1, 0.002, 0, 0)]
        assert reg.revision() == before, "A/B records are no reason for servers to reload"


def test_prune_keeps_the_last_records_of_each_model(registry: Registry) -> None:
    store = registry.experiments
    store.record_batch([_row(i) for i in range(10)] + [_row(i, model="other") for i in range(3)])
    assert store.prune("iris", 4) == 6 and store.prune("iris", 4) == 0
    assert [r.latency_s for r in store.stats_rows("iris")] == pytest.approx([0.007, 0.008, 0.009, 0.010])
    store.record_batch([_row(i) for i in range(10, 13)], keep=5)  # a flush prunes as it writes
    assert store.counts("iris") == {"production": 5} and store.counts("other") == {"production": 3}
    assert len(store.stats_rows("iris", limit=2)) == 2


def test_the_writer_batches_reports_a_full_batch_and_bounds_its_queue(registry: Registry) -> None:
    full = []
    writer = ExperimentWriter(registry.experiments, batch_rows=3, max_pending=5, on_full=lambda: full.append(1))
    for i in range(2):
        writer.append(_row(i))
    assert writer.pending("iris", "r1") and not full and registry.experiments.counts("iris") == {}
    writer.append(_row(2))
    assert full == [1], "a full batch asks for an early flush"
    for i in range(3, 8):
        writer.append(_row(i))
    assert (len(writer), writer.dropped) == (5, 3) and not writer.pending("iris", "r0")  # the oldest went
    assert writer.flush() == 5 and writer.written == 5 and len(writer) == 0
    assert not writer.pending("iris", "r7")
    assert [r.latency_s for r in registry.experiments.stats_rows("iris")] == pytest.approx([0.004, 0.005, 0.006,
                                                                                            0.007, 0.008])


class _FlakyStore:
    """Fails ``failures`` times with the database's error, then writes through to ``store``."""

    def __init__(self, store: ExperimentStore, failures: int) -> None:
        self.store, self.failures = store, failures

    def record_batch(self, rows, *, keep=None):
        if self.failures:
            self.failures -= 1
            raise UnavailableError("the registry database failed: connection refused")
        return self.store.record_batch(rows, keep=keep)


def test_a_failed_flush_is_logged_once_and_retried(registry: Registry, caplog) -> None:
    writer = ExperimentWriter(_FlakyStore(registry.experiments, failures=2))  # type: ignore[arg-type]
    writer.append(_row(0))
    with caplog.at_level(logging.ERROR, logger="dlforge.registry"):
        assert writer.flush() == 0 and writer.flush() == 0  # never raises
    assert len([r for r in caplog.records if "cannot store" in r.message]) == 1, "once per distinct error"
    assert writer.failures == 2 and writer.pending("iris", "r0")
    writer.append(_row(1))
    assert writer.flush() == 2 and registry.experiments.counts("iris") == {"production": 2}


def test_rows_the_database_refuses_are_dropped_not_retried_forever(registry: Registry) -> None:
    writer = ExperimentWriter(registry.experiments, batch_rows=1)
    writer.append(_row(0, predictions=[object()]))  # not JSON: the database can never take it
    writer.append(_row(1))
    assert writer.flush() == 1 and writer.dropped == 1 and registry.experiments.counts("iris") == {"production": 1}


def test_a_record_from_another_replica_is_found_once_it_flushes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    with Registry(url, tmp_path / "a") as a, Registry(url, tmp_path / "a") as b:
        writer_a, writer_b = ExperimentWriter(a.experiments), ExperimentWriter(b.experiments)
        on_a, on_b = SharedRecords(writer_a, "iris", wait_s=2.0), SharedRecords(writer_b, "iris", wait_s=2.0)
        on_a.add("r1", {"variant": "production", "version": 1, "predictions": ["setosa"], "indices": [0],
                        "latency_s": 0.01, "correlation_id": None})
        assert on_b.get("r1") is None, "still queued on replica A"
        threading.Timer(0.2, writer_a.flush).start()  # A's background flush, a moment later
        started = time.monotonic()
        assert on_b.get("r1", wait=True)["variant"] == "production"
        assert 0.15 < time.monotonic() - started < 1.5
        started = time.monotonic()
        on_b.wait_s = 0.2
        assert on_b.get("unknown", wait=True) is None and time.monotonic() - started < 1.0  # the wait is bounded
        assert on_a.get("r1") is not None  # a lookup on the serving replica flushes first
        Experiment(records=on_b).feedback("r1", "setosa")
        assert [(r.variant, r.feedback, r.correct) for r in on_a.rows()] == [("production", 1, 1)]


def test_shared_statistics_equal_the_in_memory_experiment(registry: Registry) -> None:
    shared = Experiment(records=SharedRecords(ExperimentWriter(registry.experiments, batch_rows=7), "iris"))
    memory = Experiment()
    truth = {"production": 0.6, "candidate": 0.8}
    for i in range(120):
        variant = "production" if i % 3 else "candidate"
        for exp in (shared, memory):
            exp.record(f"r{i}", variant, 1 if variant == "production" else 2, ["a", "b"], 0.001 * (i % 17 + 1),
                       indices=[0, 1])
    for i in range(0, 120, 2):
        variant = "production" if i % 3 else "candidate"
        label = ["a", 1] if (i * 7919 % 100) / 100 < truth[variant] else ["b", 0]
        assert shared.feedback(f"r{i}", label) and memory.feedback(f"r{i}", label)
    assert not shared.feedback("nope", "a", wait=False)
    got, want = shared.stats(), memory.stats()
    assert got["test"] is not None and got == want  # floats stored as doubles: the very same numbers
    assert shared.record_of("r2")["label"] == memory.record_of("r2")["label"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_replicas_starting_together_all_find_the_table(backend: str, tmp_path: Path, request) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}" if backend == "sqlite" else request.getfixturevalue("pg_registry_url")
    Registry(url, tmp_path / "artifacts").close()  # the registry's own tables exist; the records' table not yet
    registries = [Registry(url, tmp_path / "artifacts") for _ in range(4)]
    barrier, errors = threading.Barrier(len(registries)), []

    def first_flush(i: int) -> None:
        barrier.wait()
        try:
            registries[i].experiments.record_batch([_row(i)])
        except Exception as err:  # the test reports it below
            errors.append(err)

    threads = [threading.Thread(target=first_flush, args=(i,)) for i in range(len(registries))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and registries[0].experiments.counts("iris") == {"production": 4}
    for reg in registries:
        reg.close()
