"""The lab: one experiment per question of the guide, each measuring whether its claim
holds and computing its verdict from the numbers (see ``shared/LAB.md``).

Each experiment is a module ``qNN_<topic>.py`` with ``TOPIC``, ``TITLE`` and ``CLAIM``
constants, ``BUDGETS`` (``{"quick": {...}, "full": {...}}``, the sizes each budget runs),
optionally ``SEEDS`` (how many seeds each budget runs, :data:`~dlforge.lab.seeds.DEFAULT_SEEDS`
otherwise), optionally ``MAX_THREADS`` (the most CPU threads a seed may use, whatever the
runner asks), optionally ``WALL_CLOCK = True`` (some check reads a wall-clock timing: the
test suite runs such a topic at normal priority, never in its low-priority background),
``run(cfg, seed) -> Finding``, which measures one seed at one budget's dict, and
optionally ``figure_over_seeds(finding) -> Figure``, a figure of every seed of the combined finding.

* :func:`run_topic` runs one seed, timed, on a fixed number of threads (see
  :mod:`dlforge.lab.threads`); the modules do not repeat that themselves.
* :func:`run_seeds` runs a topic's seeds and combines them into one finding whose checks
  read 95% intervals (:func:`dlforge.lab.seeds.combine`).
* :func:`run_topics` does that for many topics at once, the seeds spread over worker
  processes (:class:`dlforge.lab.pool.LabPool`).

Figures are drawn with :func:`dlforge.lab.finding.plot`.

Example:
    >>> from dlforge.lab import available_topics, run_seeds
    >>> finding = run_seeds(3, budget="quick")  # doctest: +SKIP
    >>> finding.verdict, finding.seeds  # doctest: +SKIP
    ('supported', [0, 1, 2])
"""

from __future__ import annotations

import importlib
import pkgutil
import time
from collections.abc import Sequence
from types import ModuleType

from dlforge.errors import ConfigError
from dlforge.lab.finding import Check, Figure, Finding, Plot, figure_from_matplotlib, plot, verdict_of
from dlforge.lab.pool import LabPool
from dlforge.lab.seeds import combine, seeds_for
from dlforge.lab.threads import limited_threads, single_thread

BUDGETS = ("quick", "full")


def _modules() -> dict[int, str]:
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("q") and info.name[1:3].isdigit():
            found[int(info.name[1:3])] = f"{__name__}.{info.name}"
    return dict(sorted(found.items()))


def available_topics() -> list[int]:
    """Topic numbers that have an experiment."""
    return list(_modules())


def experiment(topic: int) -> ModuleType:
    """The experiment module of ``topic``."""
    modules = _modules()
    if topic not in modules:
        raise ConfigError(f"the lab has no experiment for topic {topic}",
                          hint=f"available topics: {', '.join(map(str, modules))}")
    return importlib.import_module(modules[topic])


def run_topic(topic: int, budget: str = "quick", seed: int = 0, threads: int = 1) -> Finding:
    """One seed of topic ``topic``'s experiment at ``budget`` ("quick" or "full"), on ``threads``
    CPU threads, timed: ``seconds`` of wall clock and ``cpu_seconds`` of this process's CPU time.

    Example:
        >>> run_topic(3, budget="quick").numbers["hidden_corners_worst"]  # doctest: +SKIP
        1.0
    """
    if budget not in BUDGETS:
        raise ConfigError(f"budget is {budget!r}", hint=f"use one of: {', '.join(BUDGETS)}")
    module = experiment(topic)
    start, cpu_start = time.perf_counter(), time.process_time()
    with limited_threads(min(threads, getattr(module, "MAX_THREADS", threads))):  # see dlforge.lab.threads
        finding = module.run(module.BUDGETS[budget], seed)
    finding.seconds, finding.cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    finding.budget = budget
    return finding


def run_seeds(topic: int, budget: str = "quick", seeds: Sequence[int] | None = None, *, threads: int = 1,
              pool: LabPool | None = None) -> Finding:
    """Topic ``topic`` over ``seeds`` (default: the topic's own count from seed 0), combined into one
    finding with intervals; in this process unless a ``pool`` is given.

    Example:
        >>> f = run_seeds(4, "quick", seeds=[0, 1, 2])  # doctest: +SKIP
        >>> f.intervals["max_relative_error"]  # doctest: +SKIP
    """
    return run_topics([topic], budget, seeds, threads=threads, pool=pool)[0]


def run_topics(topics: Sequence[int], budget: str = "quick", seeds: Sequence[int] | None = None, *,
               first_seed: int = 0, workers: int = 1, threads: int = 1,
               pool: LabPool | None = None) -> list[Finding]:
    """Every topic of ``topics`` over its seeds, combined per topic; with ``workers`` > 1 (or a
    ``pool``) the seeds of all topics run in worker processes, ``workers`` at a time.

    ``seeds`` gives the same seeds to every topic; by default each topic runs its own count
    (``SEEDS`` in its module) starting at ``first_seed``.

    Example:
        >>> findings = run_topics([3, 4], "quick", workers=2)  # doctest: +SKIP
    """
    if budget not in BUDGETS:
        raise ConfigError(f"budget is {budget!r}", hint=f"use one of: {', '.join(BUDGETS)}")
    plan = {t: list(seeds) if seeds is not None else seeds_for(experiment(t), budget, first_seed) for t in topics}
    if pool is None and workers <= 1:
        return [combine([run_topic(t, budget, s, threads) for s in plan[t]], plan[t], experiment(t)) for t in topics]
    own = pool is None
    pool = pool or LabPool(workers=workers, threads=threads)
    try:
        futures = {t: [pool.submit(t, budget, s) for s in plan[t]] for t in topics}
        return [combine([f.result() for f in futures[t]], plan[t], experiment(t)) for t in topics]
    finally:
        if own:
            pool.close()


__all__ = ["BUDGETS", "Check", "Figure", "Finding", "LabPool", "Plot", "available_topics", "combine", "experiment",
           "figure_from_matplotlib", "limited_threads", "plot", "run_seeds", "run_topic", "run_topics", "seeds_for",
           "single_thread", "verdict_of"]
