"""The lab's findings, computed once per test session and shared by every lab test.

Seed set A (each topic's own seeds from 0, one thread each) runs in two worker processes.
The first request queues every topic this session's tests will ask for (``PLANNED``, filled
by tests/lab/conftest.py at collection), in topic order, so the workers stay busy while the
tests read the findings one by one. Seed set B (seeds from 100, two threads each, two workers) is
the stability test's second opinion (tests/lab/test_stability.py).
"""

from __future__ import annotations

import atexit
import functools
from concurrent.futures import Future

from dlforge.lab import LabPool, combine, experiment, seeds_for
from dlforge.lab.finding import Finding

SET_B_FIRST_SEED = 100  # far from set A's 0, 1, 2...: no seed in common
PLANNED: dict[str, set[int]] = {"A": set(), "B": set()}  # topics the collected tests use, per seed set
_SETS = {"A": (0, 2, 1), "B": (SET_B_FIRST_SEED, 2, 2)}  # first seed, workers, threads per worker


class _SeedSet:
    def __init__(self, name: str) -> None:
        self.first_seed, workers, threads = _SETS[name]
        self.name = name
        self.pool = LabPool(workers=workers, threads=threads)
        atexit.register(self.pool.close, cancel_queued=True)
        self.futures: dict[int, list[Future]] = {}

    def finding(self, topic: int) -> Finding:
        for t in sorted(PLANNED[self.name] | {topic}):
            if t not in self.futures:
                self.futures[t] = [self.pool.submit(t, "quick", s) for s in self.seeds(t)]
        return combine([f.result() for f in self.futures[topic]], self.seeds(topic), experiment(topic))

    def seeds(self, topic: int) -> list[int]:
        return seeds_for(experiment(topic), "quick", self.first_seed)


@functools.lru_cache(maxsize=None)
def _seed_set(name: str) -> _SeedSet:
    return _SeedSet(name)


@functools.lru_cache(maxsize=None)
def finding_for(topic: int) -> Finding:
    """Topic ``topic`` at the quick budget over seed set A (seeds 0, 1, ...), one thread."""
    return _seed_set("A").finding(topic)


@functools.lru_cache(maxsize=None)
def second_finding_for(topic: int) -> Finding:
    """Topic ``topic`` at the quick budget over seed set B (seeds 100, 101, ...), two threads."""
    return _seed_set("B").finding(topic)
