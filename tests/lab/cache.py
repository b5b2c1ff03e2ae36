"""The lab's findings, computed once per test session and shared by every lab test.

Seed set A (each topic's own seeds from 0, one thread each) runs in two worker processes.
Seed set B (seeds from 100, two threads each, two workers) is the stability test's second
opinion (tests/lab/test_stability.py). ``PLANNED`` (filled by tests/lab/conftest.py at
collection) holds the topics this session's tests will ask for, per seed set.

When the session also runs tests outside the lab, conftest.py calls :func:`start_background`
at collection: every planned topic is queued at once in worker processes at niceness 19
(``LabPool(nice=19)``), which take only the CPU time the other tests leave idle (they wait on
servers, subprocesses and the disk), and the lab's tests run last. Topics whose checks read
wall-clock timings (``WALL_CLOCK = True`` in their module) are not run that way: a timing taken
by a process the scheduler keeps preempting measures the preemption. They are queued at
normal priority when the lab's tests first ask, as is everything when the lab runs alone.
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
BACKGROUND_NICE = 19  # the lowest priority: the background workers never slow the foreground tests


def wall_clock(topic: int) -> bool:
    """Whether ``topic``'s checks read wall-clock timings (its module's ``WALL_CLOCK``)."""
    return bool(getattr(experiment(topic), "WALL_CLOCK", False))


class _SeedSet:
    def __init__(self, name: str) -> None:
        self.first_seed, self.workers, self.threads = _SETS[name]
        self.name = name
        self.pools: dict[int, LabPool] = {}  # by niceness: 0, and BACKGROUND_NICE once started
        self.futures: dict[int, list[Future]] = {}

    def queue(self, topics: set[int], *, background: bool = False) -> None:
        """Queue every seed of ``topics`` not queued yet, in topic order (``background``: at
        niceness 19, leaving out the wall-clock topics)."""
        for t in sorted(topics):
            if t in self.futures or (background and wall_clock(t)):
                continue
            pool = self._pool(BACKGROUND_NICE if background else 0)
            self.futures[t] = [pool.submit(t, "quick", s) for s in self.seeds(t)]

    def finding(self, topic: int) -> Finding:
        self.queue(PLANNED[self.name] | {topic})
        return combine([f.result() for f in self.futures[topic]], self.seeds(topic), experiment(topic))

    def seeds(self, topic: int) -> list[int]:
        return seeds_for(experiment(topic), "quick", self.first_seed)

    def _pool(self, nice: int) -> LabPool:
        if nice not in self.pools:
            pool = self.pools[nice] = LabPool(workers=self.workers, threads=self.threads, nice=nice)
            atexit.register(pool.close, cancel_queued=True)
        return self.pools[nice]


@functools.lru_cache(maxsize=None)
def _seed_set(name: str) -> _SeedSet:
    return _SeedSet(name)


def start_background() -> None:
    """Queue every planned topic but the wall-clock ones, both seed sets, at niceness 19."""
    for name in ("A", "B"):
        if PLANNED[name]:
            _seed_set(name).queue(PLANNED[name], background=True)


@functools.lru_cache(maxsize=None)
def finding_for(topic: int) -> Finding:
    """Topic ``topic`` at the quick budget over seed set A (seeds 0, 1, ...), one thread."""
    return _seed_set("A").finding(topic)


@functools.lru_cache(maxsize=None)
def second_finding_for(topic: int) -> Finding:
    """Topic ``topic`` at the quick budget over seed set B (seeds 100, 101, ...), two threads."""
    return _seed_set("B").finding(topic)
