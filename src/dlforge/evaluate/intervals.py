"""A number measured over several seeds: its mean with a 95% Student t interval.

One home for the interval the lab's findings (:mod:`dlforge.lab.finding`) and the run
compare page (:mod:`dlforge.runs.compare`) report, so both print the same numbers.

Example:
    >>> m = measure([0.61, 0.58, 0.70, 0.66, 0.52])
    >>> round(m.mean, 3), round(m.low, 3), round(m.high, 3), m.n, m.method
    (0.614, 0.527, 0.701, 5, 't95')
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Interval:
    """A number measured several times: its ``mean`` and a ``low``..``high`` interval over ``n``
    runs (``method``: ``t95``, a 95% Student t interval of the mean)."""

    mean: float
    low: float
    high: float
    n: int
    method: str

    def __float__(self) -> float:
        return float(self.mean)


def measure(values: list[float] | tuple[float, ...]) -> Interval:
    """The mean of ``values`` (one per seed) with its 95% t interval.

    One value gives an unbounded interval (one run says nothing about the spread), so any
    check on it is inconclusive.

    Example:
        >>> m = measure([0.61, 0.58, 0.70, 0.66, 0.52])
        >>> round(m.mean, 3), round(m.low, 3), round(m.high, 3), m.n
        (0.614, 0.527, 0.701, 5)
        >>> measure([0.5]).high
        inf
    """
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("measure needs at least one value")
    mean = statistics.fmean(xs)
    if len(xs) == 1:
        return Interval(mean, -math.inf, math.inf, 1, "t95")
    from scipy.stats import t  # scikit-learn's dependency; imported when something is measured

    half = float(t.ppf(0.975, len(xs) - 1)) * statistics.stdev(xs) / math.sqrt(len(xs))
    return Interval(mean, mean - half, mean + half, len(xs), "t95")
