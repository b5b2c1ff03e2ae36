"""The lab: one experiment per question of the guide, each measuring whether its claim
holds and computing its verdict from the numbers (see ``shared/LAB.md``).

Each experiment is a module ``qNN_<topic>.py`` with ``TOPIC``, ``TITLE`` and ``CLAIM``
constants, ``BUDGETS`` (``{"quick": {...}, "full": {...}}``, the sizes each budget runs)
and ``run(cfg, seed) -> Finding``, which takes one budget's dict. Call experiments through
:func:`run_topic`, which looks the budget up, times the run and keeps it on one thread (see
:mod:`dlforge.lab.threads`); the modules do not repeat that themselves. Figures are drawn
with :func:`dlforge.lab.finding.plot`.

Example:
    >>> from dlforge.lab import available_topics, run_topic
    >>> finding = run_topic(3, budget="quick")  # doctest: +SKIP
    >>> finding.verdict  # doctest: +SKIP
    'supported'
"""

from __future__ import annotations

import importlib
import pkgutil
import time
from types import ModuleType

from dlforge.errors import ConfigError
from dlforge.lab.finding import Check, Figure, Finding, Plot, figure_from_matplotlib, plot, verdict_of
from dlforge.lab.threads import single_thread

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


def run_topic(topic: int, budget: str = "quick", seed: int = 0) -> Finding:
    """Run topic ``topic``'s experiment at ``budget`` ("quick" or "full"), on one thread, and time it.

    Example:
        >>> run_topic(3, budget="quick").numbers["hidden_corners_worst"]  # doctest: +SKIP
        1.0
    """
    if budget not in BUDGETS:
        raise ConfigError(f"budget is {budget!r}", hint=f"use one of: {', '.join(BUDGETS)}")
    module = experiment(topic)
    start = time.perf_counter()
    with single_thread():  # tiny models: see dlforge.lab.threads
        finding = module.run(module.BUDGETS[budget], seed)
    finding.seconds = time.perf_counter() - start
    finding.budget = budget
    return finding


__all__ = ["BUDGETS", "Check", "Figure", "Finding", "Plot", "available_topics", "experiment",
           "figure_from_matplotlib", "plot", "run_topic", "single_thread", "verdict_of"]
