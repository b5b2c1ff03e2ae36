"""One finding from several seeds: each number's mean, and an interval for every number that varied.

An experiment's ``run(cfg, seed)`` measures one seed. :func:`combine` merges the findings of
several seeds into one whose checks read intervals (see :mod:`dlforge.lab.finding`):

* a number equal on every seed stays as it is (a budget setting, a count, an exact result);
* a number that varies becomes its mean in ``numbers``, its 95% t interval in ``intervals``
  and its values in ``per_seed``;
* a list or dict of numbers (a curve, a table) becomes its element-wise mean;
* anything else (text, lists of unequal length) is the first seed's.

The figures and notes are the first seed's (plus, first, the module's figure over every
seed when it draws one); ``seeds`` lists the seeds and ``seed_seconds`` each seed's time. How many seeds a topic runs: ``SEEDS`` in its module (``{"quick": n,
"full": m}``), else :data:`DEFAULT_SEEDS`.

Example:
    >>> from dlforge.lab.finding import Check, Finding
    >>> runs = [Finding(3, "t", "c", "m", {"acc": a, "n": 400}, [Check("acc", ">", 0.5)]) for a in (0.9, 0.8, 0.85)]
    >>> f = combine(runs, seeds=[0, 1, 2])
    >>> f.numbers, f.intervals["acc"].n, f.verdict
    ({'acc': 0.85, 'n': 400}, 3, 'supported')
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from dlforge.lab.finding import Finding, measure, significant

DEFAULT_SEEDS = {"quick": 3, "full": 5}  # the floor; a topic whose spread needs more says so


def seeds_for(module: ModuleType, budget: str, first: int = 0) -> list[int]:
    """The seeds topic ``module`` runs at ``budget``, counting from ``first``.

    Example:
        >>> from types import SimpleNamespace
        >>> seeds_for(SimpleNamespace(), "full", first=10)
        [10, 11, 12, 13, 14]
    """
    count = getattr(module, "SEEDS", DEFAULT_SEEDS).get(budget, DEFAULT_SEEDS[budget])
    return list(range(first, first + count))


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, str)


def _mean_of(values: list[Any]) -> Any:
    """The element-wise mean of ``values`` (one per seed), or the first when they cannot be averaged."""
    first = values[0]
    if all(v == first for v in values[1:]):
        return first
    if all(_is_number(v) for v in values):
        return significant(statistics.fmean(float(v) for v in values))
    if all(isinstance(v, (list, tuple)) and len(v) == len(first) for v in values):
        return [_mean_of([v[i] for v in values]) for i in range(len(first))]
    if all(isinstance(v, dict) and v.keys() == first.keys() for v in values):
        return {k: _mean_of([v[k] for v in values]) for k in first}
    return first


def combine(findings: Sequence[Finding], seeds: Sequence[int], module: ModuleType | None = None) -> Finding:
    """One finding from ``findings`` (one per seed in ``seeds``, same topic and checks). When the
    topic's ``module`` has ``figure_over_seeds(finding) -> Figure`` (a figure of every seed's
    numbers), that figure comes first."""
    if not findings or len(findings) != len(seeds):
        raise ValueError(f"combine needs one finding per seed, got {len(findings)} for seeds {list(seeds)}")
    first = findings[0]
    numbers, intervals, per_seed = {}, {}, {}
    for key in first.numbers:
        values = [f.numbers.get(key) for f in findings]
        numbers[key] = _mean_of(values)
        varies = any(v != values[0] for v in values[1:])
        if varies and len(values) > 1 and all(_is_number(v) for v in values):
            per_seed[key] = [float(v) for v in values]
            m = measure(per_seed[key])
            intervals[key] = type(m)(significant(m.mean), significant(m.low), significant(m.high), m.n, m.method)
    combined = Finding(topic=first.topic, title=first.title, claim=first.claim, method=first.method,
                       numbers=numbers, checks=list(first.checks), figures=list(first.figures), notes=first.notes,
                       budget=first.budget, seconds=sum(f.seconds for f in findings),
                       cpu_seconds=sum(f.cpu_seconds for f in findings), intervals=intervals, per_seed=per_seed,
                       seeds=list(seeds), seed_seconds=[round(f.seconds, 2) for f in findings],
                       seed_cpu_seconds=[round(f.cpu_seconds, 2) for f in findings])
    if module is not None and hasattr(module, "figure_over_seeds") and len(findings) > 1:
        combined.figures.insert(0, module.figure_over_seeds(combined))
    return combined
