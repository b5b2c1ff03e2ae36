"""A lab finding: a claim, what was measured, and the verdict the numbers produce.

A verdict is never written by hand. Each experiment states its verdict rule as a list of
:class:`Check` objects over its measured numbers; :class:`Finding` evaluates them:

* every check holds -> ``supported``
* some hold -> ``partly supported``
* none hold -> ``not supported``

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

VERDICTS = ("supported", "partly supported", "not supported")
LEVELS = {"basic": range(1, 11), "intermediate": range(11, 21), "advanced": range(21, 31)}
_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


@dataclass(frozen=True)
class Check:
    """``numbers[number] op threshold``; a string threshold names another number."""

    number: str
    op: str
    threshold: float | str

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"op must be one of {', '.join(_OPS)}, got {self.op!r}")

    def value(self, numbers: dict[str, Any]) -> float:
        return float(numbers[self.number])

    def bound(self, numbers: dict[str, Any]) -> float:
        return float(numbers[self.threshold]) if isinstance(self.threshold, str) else float(self.threshold)

    def holds(self, numbers: dict[str, Any]) -> bool:
        return bool(_OPS[self.op](self.value(numbers), self.bound(numbers)))

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
    held = sum(c.holds(numbers) for c in checks)
    if held == len(checks):
        return "supported"
    return "partly supported" if held else "not supported"


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
    verdict: str = field(init=False)
    rule: str = field(init=False)

    def __post_init__(self) -> None:
        if not self.checks:
            raise ValueError(f"topic {self.topic}: a finding needs at least one check")
        missing = [c for c in self.checks for key in (c.number, c.threshold)
                   if isinstance(key, str) and key not in self.numbers]
        if missing:
            raise ValueError(f"topic {self.topic}: checks name numbers that were not measured: {missing}")
        self.verdict = verdict_of(self.checks, self.numbers)
        self.rule = ("supported if all of these hold, partly supported if some do, not supported if none: "
                     + "; ".join(str(c) for c in self.checks))

    @property
    def level(self) -> str:
        return level_of(self.topic)

    def check_results(self) -> list[dict[str, Any]]:
        return [{"check": str(c), "value": c.value(self.numbers), "bound": c.bound(self.numbers),
                 "holds": c.holds(self.numbers)} for c in self.checks]

    def to_dict(self, with_figures: bool = False) -> dict[str, Any]:
        d = asdict(self)
        d["checks"] = self.check_results()
        d["level"] = self.level
        if not with_figures:
            d["figures"] = [f.title for f in self.figures]
        return d
