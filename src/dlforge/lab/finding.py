"""A lab finding: a claim, what was measured, and the verdict the numbers produce.

A verdict is never written by hand. Each experiment states its verdict rule as a list of
:class:`Check` objects over its measured numbers; :class:`Finding` evaluates them. A number
measured over several seeds is an :class:`Interval` (:func:`measure`: the mean with a 95% t
interval); a check *holds* when the whole interval lies on the right side of its bound,
*fails* when it lies on the wrong side, and is *inconclusive* when it straddles the bound (a
plain number is an interval of width zero, so it holds or fails):

* every check holds -> ``supported``
* every check fails -> ``not supported``
* none fails and some are inconclusive -> ``inconclusive`` (the spread is too wide to tell)
* otherwise -> ``partly supported``

Example:
    >>> f = Finding(topic=3, title="Network structure", claim="one hidden layer fits XOR",
    ...             method="train both", numbers={"perceptron": 0.5, "mlp": 1.0},
    ...             checks=[Check("perceptron", "<=", 0.75), Check("mlp", ">=", 0.99)])
    >>> f.verdict
    'supported'
"""

from __future__ import annotations

import base64
import io
import operator
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from dlforge.evaluate.intervals import Interval, measure  # noqa: F401 (re-exported)

VERDICTS = ("supported", "partly supported", "inconclusive", "not supported")
LEVELS = {"basic": range(1, 11), "intermediate": range(11, 21), "advanced": range(21, 31)}
_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


# Interval and measure live in dlforge.evaluate.intervals (the run compare page reports them too);
# imported here so `from dlforge.lab.finding import Interval, measure` keeps working.


def _span(value: Any) -> tuple[float, float]:
    """(low, high) of a measured number: an Interval (or its dict), or a plain number (a point)."""
    if isinstance(value, Interval):
        return value.low, value.high
    if isinstance(value, dict) and {"low", "high"} <= set(value):
        return float(value["low"]), float(value["high"])
    return float(value), float(value)


def _mean(value: Any) -> float:
    return float(value["mean"]) if isinstance(value, dict) and "mean" in value else float(value)


OUTCOMES = ("holds", "fails", "inconclusive")


@dataclass(frozen=True)
class Check:
    """``numbers[number] op threshold``; a string threshold names another number.

    On intervals it holds only when every value of the interval satisfies it, and fails only
    when none does (see the module docstring)."""

    number: str
    op: str
    threshold: float | str

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"op must be one of {', '.join(_OPS)}, got {self.op!r}")

    def value(self, numbers: dict[str, Any]) -> float:
        return _mean(numbers[self.number])

    def bound(self, numbers: dict[str, Any]) -> float:
        return _mean(numbers[self.threshold]) if isinstance(self.threshold, str) else float(self.threshold)

    def outcome(self, numbers: dict[str, Any]) -> str:
        """``holds``, ``fails`` or ``inconclusive``: the interval against the bound (itself an
        interval when it names another number)."""
        low, high = _span(numbers[self.number])
        b_low, b_high = _span(numbers[self.threshold]) if isinstance(self.threshold, str) else (
            float(self.threshold), float(self.threshold))
        compare = _OPS[self.op]
        worst, best = ((low, b_high), (high, b_low)) if self.op in (">", ">=") else ((high, b_low), (low, b_high))
        if compare(*worst):
            return "holds"
        return "inconclusive" if compare(*best) else "fails"

    def holds(self, numbers: dict[str, Any]) -> bool:
        return self.outcome(numbers) == "holds"

    def __str__(self) -> str:
        return f"{self.number} {self.op} {self.threshold}"


@dataclass
class Figure:
    """A PNG figure, base64-encoded so reports stay self-contained."""

    title: str
    png_base64: str


def figure_from_matplotlib(fig: Any, title: str) -> Figure:
    """Render a matplotlib figure to an inline PNG and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return Figure(title=title, png_base64=base64.b64encode(buf.getvalue()).decode("ascii"))


@dataclass
class Plot:
    """A figure being drawn: ``fig`` and ``axes`` inside :func:`plot`'s block, ``figure``
    (the finding's :class:`Figure`) once the block has ended."""

    fig: Any
    axes: Any
    figure: Figure | None = None


@contextmanager
def plot(title: str, nrows: int = 1, ncols: int = 1, **subplots: Any) -> Iterator[Plot]:
    """``pyplot.subplots(nrows, ncols, **subplots)`` on the Agg backend (no display needed),
    rendered to a :class:`Figure` titled ``title`` when the block ends, and closed even if
    drawing fails.

    Example:
        >>> with plot("A line", figsize=(4, 3)) as drawn:
        ...     _ = drawn.axes.plot([0, 1], [0, 1])
        >>> drawn.figure.title
        'A line'
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, **subplots)
    drawn = Plot(fig, axes)
    try:
        yield drawn
        drawn.figure = figure_from_matplotlib(fig, title)
    finally:
        plt.close(fig)


def significant(x: float, digits: int = 5) -> float:
    """``x`` rounded to ``digits`` significant digits, as a plain float for the numbers dict.

    Example:
        >>> significant(0.123456789)
        0.12346
    """
    return float(f"{float(x):.{digits}g}")


def level_of(topic: int) -> str:
    return next(name for name, topics in LEVELS.items() if topic in topics)


def verdict_of(checks: list[Check], numbers: dict[str, Any]) -> str:
    """The verdict the checks' outcomes give (the rule in the module docstring)."""
    outcomes = [c.outcome(numbers) for c in checks]
    if all(o == "holds" for o in outcomes):
        return "supported"
    if all(o == "fails" for o in outcomes):
        return "not supported"
    return "inconclusive" if "fails" not in outcomes else "partly supported"


@dataclass
class Finding:
    """One experiment's outcome; ``verdict`` and ``rule`` are computed, not given."""

    topic: int
    title: str
    claim: str
    method: str
    numbers: dict[str, Any]
    checks: list[Check]
    figures: list[Figure] = field(default_factory=list)
    notes: str = ""              # what the guide gets wrong or what is contested
    budget: str = "quick"
    seconds: float = 0.0
    cpu_seconds: float = 0.0     # CPU time of the process that ran it: its cost, whatever else ran beside it
    # Over several seeds (dlforge.lab.seeds.combine): ``numbers`` holds each number's mean,
    # ``intervals`` the 95% interval of every number that varied, ``per_seed`` its values.
    intervals: dict[str, Interval] = field(default_factory=dict)
    per_seed: dict[str, list[float]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)
    seed_seconds: list[float] = field(default_factory=list)
    seed_cpu_seconds: list[float] = field(default_factory=list)
    verdict: str = field(init=False)
    rule: str = field(init=False)

    def __post_init__(self) -> None:
        if not self.checks:
            raise ValueError(f"topic {self.topic}: a finding needs at least one check")
        missing = [c for c in self.checks for key in (c.number, c.threshold)
                   if isinstance(key, str) and key not in self.numbers]
        if missing:
            raise ValueError(f"topic {self.topic}: checks name numbers that were not measured: {missing}")
        self.verdict = verdict_of(self.checks, self.measured)
        self.rule = ("supported if all of these hold, not supported if all fail, inconclusive if none fails "
                     "but some interval straddles its bound, else partly supported: "
                     + "; ".join(str(c) for c in self.checks))

    @property
    def level(self) -> str:
        return level_of(self.topic)

    @property
    def measured(self) -> dict[str, Any]:
        """The numbers the checks read: each number's interval where it has one, else the number."""
        return {**self.numbers, **self.intervals}

    def check_results(self) -> list[dict[str, Any]]:
        measured = self.measured
        results = []
        for c in self.checks:
            low, high = _span(measured[c.number])
            b_low, b_high = _span(measured[c.threshold]) if isinstance(c.threshold, str) else (c.bound(measured),) * 2
            outcome = c.outcome(measured)
            results.append({"check": str(c), "value": c.value(measured), "low": low, "high": high,
                            "bound": c.bound(measured), "bound_low": b_low, "bound_high": b_high,
                            "outcome": outcome, "holds": outcome == "holds"})
        return results

    def to_dict(self, with_figures: bool = False) -> dict[str, Any]:
        d = asdict(self)
        d["checks"] = self.check_results()
        d["check_specs"] = [[c.number, c.op, c.threshold] for c in self.checks]
        d["level"] = self.level
        if not with_figures:
            d["figures"] = [f.title for f in self.figures]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Finding:
        """The finding :meth:`to_dict` ``(with_figures=True)`` wrote (how a lab worker process
        hands its finding back, as JSON: nothing is pickled); the verdict is computed again.

        Example:
            >>> f = Finding(3, "t", "c", "m", {"x": 1.0}, [Check("x", ">=", 1.0)])
            >>> Finding.from_dict(f.to_dict(with_figures=True)).verdict
            'supported'
        """
        known = {"topic", "title", "claim", "method", "numbers", "notes", "budget", "seconds", "cpu_seconds", "per_seed",
                 "seeds", "seed_seconds", "seed_cpu_seconds"}
        finding = cls(**{k: v for k, v in d.items() if k in known},
                      checks=[Check(n, op, t) for n, op, t in d["check_specs"]],
                      figures=[Figure(**f) for f in d.get("figures", [])],
                      intervals={k: Interval(**v) for k, v in d.get("intervals", {}).items()})
        return finding
