"""A/B tests: split a model's traffic between aliases and compare their accuracy.

A :class:`TrafficConfig` names the aliases (``production``, ``candidate``...) and their
weights. :func:`choose_variant` picks one per request: a sticky id (the ``X-User-Id``
header by default) hashes to the same alias every time, so one user sees one model; without
one the pick is random. An :class:`Experiment` records each request's variant, predictions
and latency; feedback (the true label, sent later) turns them into accuracies, and
:meth:`Experiment.stats` runs a two-proportion z-test of each treatment against the control.
Its records live in this process's memory or, in the server, in the registry database that
every replica shares (:mod:`dlforge.registry.experiments`); the maths is the same for both.

Example:
    >>> import random
    >>> config = TrafficConfig(variants=[{"alias": "production", "weight": 0.9},
    ...                                  {"alias": "candidate", "weight": 0.1}])
    >>> choose_variant(config, "iris", "user-42", random.Random(0)) == \\
    ...     choose_variant(config, "iris", "user-42", random.Random(1))
    True
"""

from __future__ import annotations

import hashlib
import math
import random
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dlforge.errors import DlforgeError
from dlforge.registry.experiments import StatsRow
from dlforge.registry.names import validate_name

ALPHA, POWER = 0.05, 0.8  # the test's significance level and the power used to size it
_NORMAL = NormalDist()


class Variant(BaseModel):
    """One arm of an A/B test: a registry alias and its share of the traffic (weights are normalised)."""

    model_config = ConfigDict(extra="forbid")
    alias: str
    weight: float = Field(ge=0, allow_inf_nan=False)

    @field_validator("alias")
    @classmethod
    def _valid_alias(cls, alias: str) -> str:
        return validate_name(alias, kind="alias")


class TrafficConfig(BaseModel):
    """How a model's traffic is split: 1 to 8 variants with unique aliases and a positive total weight.

    ``sticky_header`` names the request header whose value keeps a user on one variant
    (None: every request is drawn at random). ``shadow`` names an alias that also gets a
    copy of every request; its answers are recorded but never returned.

    Example:
        >>> TrafficConfig(variants=[{"alias": "a", "weight": 1}]).sticky_header
        'X-User-Id'
    """

    model_config = ConfigDict(extra="forbid")
    variants: list[Variant] = Field(min_length=1, max_length=8)
    sticky_header: str | None = Field("X-User-Id", pattern=r"^[A-Za-z0-9-]{1,64}$")
    shadow: str | None = None

    @field_validator("shadow")
    @classmethod
    def _valid_shadow(cls, shadow: str | None) -> str | None:
        return None if shadow is None else validate_name(shadow, kind="alias")

    @model_validator(mode="after")
    def _check_variants(self) -> TrafficConfig:
        aliases = [v.alias for v in self.variants]
        duplicates = sorted({a for a in aliases if aliases.count(a) > 1})
        if duplicates:
            raise ValueError(f"each alias may appear once; repeated: {', '.join(duplicates)}")
        if sum(v.weight for v in self.variants) <= 0:
            raise ValueError("the weights sum to 0; give at least one variant a positive weight")
        return self


def choose_variant(config: TrafficConfig, model: str, sticky_id: str | None, rng: random.Random) -> str:
    """The alias that serves this request, drawn with probability proportional to its weight.

    A ``sticky_id`` hashes (with the model name) to a fixed point in [0, 1), so the same
    user gets the same alias as long as the weights do not change.

    Example:
        >>> config = TrafficConfig(variants=[{"alias": "a", "weight": 0}, {"alias": "b", "weight": 2}])
        >>> choose_variant(config, "m", None, random.Random(0))
        'b'
    """
    if sticky_id is not None:
        digest = hashlib.sha256(f"{model}:{sticky_id}".encode()).hexdigest()
        u = int(digest[:16], 16) / 2**64
    else:
        u = rng.random()
    total = sum(v.weight for v in config.variants)
    cumulative = 0.0
    for variant in config.variants:
        cumulative += variant.weight / total
        if u < cumulative:
            return variant.alias
    # Rounding can leave the last cumulative weight a hair below 1: the last positive arm takes u.
    return [v.alias for v in config.variants if v.weight > 0][-1]


def two_proportion_ztest(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """Pooled two-proportion z-test of x1/n1 against x2/n2: (z, two-sided p-value).

    Matches ``statsmodels.stats.proportion.proportions_ztest([x1, x2], [n1, n2])``; equal
    proportions of 0 or 1 (no variance) give (0.0, 1.0).

    Example:
        >>> z, p = two_proportion_ztest(60, 100, 45, 100)
        >>> round(z, 3), round(p, 4)
        (2.124, 0.0337)
    """
    if n1 <= 0 or n2 <= 0 or not (0 <= x1 <= n1 and 0 <= x2 <= n2):
        raise DlforgeError(f"need 0 <= x <= n and n > 0, got x1={x1}, n1={n1}, x2={x2}, n2={n2}")
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (x1 / n1 - x2 / n2) / se
    return z, 2 * _NORMAL.cdf(-abs(z))


def min_sample_size(p1: float, p2: float, alpha: float = ALPHA, power: float = POWER) -> int:
    """Samples per arm for a two-sided two-proportion test to detect p1 vs p2 (no continuity correction).

    n = (z_{1-alpha/2} sqrt(2 pbar qbar) + z_{power} sqrt(p1 q1 + p2 q2))^2 / (p1 - p2)^2, rounded up.

    Example:
        >>> min_sample_size(0.5, 0.75, power=0.9)  # R: power.prop.test(p1=.5, p2=.75, power=.9) gives n = 76.7
        77
    """
    if not (0 <= p1 <= 1 and 0 <= p2 <= 1) or p1 == p2:
        raise DlforgeError(f"need two different proportions in [0, 1], got {p1} and {p2}",
                           hint="equal accuracies cannot be told apart with any sample size")
    if not (0 < alpha < 1 and 0 < power < 1):
        raise DlforgeError(f"alpha and power must lie in (0, 1), got {alpha} and {power}")
    pbar = (p1 + p2) / 2
    z_alpha, z_power = _NORMAL.inv_cdf(1 - alpha / 2), _NORMAL.inv_cdf(power)
    root = z_alpha * math.sqrt(2 * pbar * (1 - pbar)) + z_power * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return math.ceil(root**2 / (p1 - p2) ** 2)


@dataclass
class _Record:
    variant: str
    version: int
    predictions: list
    indices: list[int] | None
    latency_s: float
    correlation_id: str | None = None  # the client's own X-Request-Id, kept only to join logs
    feedback: int = 0  # labelled samples
    correct: int = 0
    label: Any = None  # the last feedback's label(s)


class RecordStore(Protocol):
    """Where an :class:`Experiment` keeps its records: this process's memory (:class:`MemoryRecords`)
    or the registry database shared by every replica (:class:`~dlforge.registry.experiments.SharedRecords`)."""

    def add(self, request_id: str, record: dict[str, Any]) -> None: ...

    def get(self, request_id: str, *, wait: bool = False) -> dict[str, Any] | None: ...

    def set_feedback(self, request_id: str, label: Any, feedback: int, correct: int) -> bool: ...

    def rows(self) -> Iterable[StatsRow]: ...


class MemoryRecords:
    """The last ``max_records`` records, in this process's memory (the oldest go first).

    Example:
        >>> records = MemoryRecords(max_records=1)
        >>> records.add("r1", dict(variant="a", version=1, predictions=["x"], indices=None, latency_s=0.1))
        >>> records.add("r2", dict(variant="b", version=2, predictions=["y"], indices=None, latency_s=0.2))
        >>> records.get("r1"), [row.variant for row in records.rows()]
        (None, ['b'])
    """

    def __init__(self, max_records: int = 10000) -> None:
        if max_records < 1:
            raise ValueError(f"max_records must be at least 1, got {max_records}")
        self.max_records = max_records
        self._records: OrderedDict[str, _Record] = OrderedDict()
        self._lock = threading.Lock()  # the server may record from a worker thread

    def add(self, request_id: str, record: dict[str, Any]) -> None:
        rec = _Record(**record)
        with self._lock:
            self._records[request_id] = rec
            self._records.move_to_end(request_id)
            while len(self._records) > self.max_records:
                self._records.popitem(last=False)  # bounded memory: the oldest request goes

    def get(self, request_id: str, *, wait: bool = False) -> dict[str, Any] | None:
        with self._lock:
            rec = self._records.get(request_id)
            return None if rec is None else asdict(rec)

    def set_feedback(self, request_id: str, label: Any, feedback: int, correct: int) -> bool:
        with self._lock:
            rec = self._records.get(request_id)
            if rec is not None:
                rec.label, rec.feedback, rec.correct = label, feedback, correct
            return rec is not None

    def rows(self) -> list[StatsRow]:
        with self._lock:
            return [StatsRow(r.variant, r.version, r.latency_s, r.feedback, r.correct) for r in self._records.values()]


def _is_correct(label: Any, prediction: Any, index: int | None) -> bool:
    """A label is a class name (compared with the predicted label) or a class index."""
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        raise DlforgeError(f"a label must be a class name or a class index, got {label!r}",
                           hint="send the true class, e.g. \"setosa\" or 0")
    if isinstance(label, int):
        if index is not None:
            return index == label
        return prediction == label or str(prediction) == str(label)  # unnamed classes are "0", "1"...
    return str(prediction) == label


def judge(label: Any, predictions: list, indices: list[int] | None) -> tuple[int, int]:
    """(samples labelled, samples predicted right) of one request's feedback.

    ``label`` is one label, or a list with one label per prediction; a label is a class name
    or a class index (compared with ``indices`` when the request has them).

    Example:
        >>> judge(["cat", 1], ["cat", "dog"], [0, 2])
        (2, 1)
    """
    labels = label if isinstance(label, (list, tuple)) else [label]
    if len(labels) != len(predictions):
        raise DlforgeError(f"got {len(labels)} labels for a request with {len(predictions)} predictions",
                           hint="send one label per input of the request, as a list when there are several")
    indices = indices or [None] * len(labels)
    return len(labels), sum(_is_correct(lab, pred, idx) for lab, pred, idx in zip(labels, predictions, indices))


class Experiment:
    """Requests, feedback and A/B statistics of one model, over its last ``max_records`` requests.

    Records are keyed by the id the server gave the request (never a client-chosen one:
    two clients picking the same id would overwrite each other's record). They live in
    ``records``: this process's memory by default; the server passes the registry
    database's :class:`~dlforge.registry.experiments.SharedRecords`, so every replica
    reports all traffic. The statistics are :func:`experiment_stats` of either store's rows.

    Example:
        >>> exp = Experiment()
        >>> exp.record("r1", "production", 1, ["cat"], 0.004)
        >>> exp.feedback("r1", "cat"), exp.feedback("nope", "cat")
        (True, False)
        >>> exp.stats()["variants"]["production"]["accuracy"]
        1.0
    """

    def __init__(self, max_records: int = 10000, *, records: RecordStore | None = None) -> None:
        self.records: RecordStore = records if records is not None else MemoryRecords(max_records)

    def record(self, request_id: str, variant: str, version: int, predictions: list, latency_s: float, *,
               indices: list[int] | None = None, correlation_id: str | None = None) -> None:
        """Remember a request's variant, predicted labels (one per sample) and latency.

        ``request_id`` is the server's id of the request; ``correlation_id`` (the client's
        ``X-Request-Id``) is stored beside it. ``indices`` (the predicted class indices)
        lets feedback name the class by index.
        """
        self.records.add(request_id, {
            "variant": variant, "version": int(version), "predictions": list(predictions),
            "indices": None if indices is None else list(indices), "latency_s": float(latency_s),
            "correlation_id": correlation_id})

    def record_of(self, request_id: str) -> dict[str, Any] | None:
        """A copy of the record of request ``request_id`` (None if unknown or evicted).

        Example:
            >>> exp = Experiment()
            >>> exp.record("r1", "production", 1, ["cat"], 0.004, correlation_id="client-7")
            >>> exp.record_of("r1")["correlation_id"], exp.record_of("client-7")
            ('client-7', None)
        """
        return self.records.get(request_id)

    def feedback(self, request_id: str, label: Any, *, wait: bool = True) -> bool:
        """Record the true label(s) of an earlier request; False if the request is unknown (or evicted).

        ``label`` is one label, or a list with one label per sample of the request. Sending
        feedback again replaces the earlier feedback. ``wait``: a shared store looks for a
        request it does not find again for a moment (the replica that served it may not have
        written it yet).
        """
        rec = self.records.get(request_id, wait=wait)
        if rec is None:
            return False
        feedback, correct = judge(label, rec["predictions"], rec["indices"])
        return self.records.set_feedback(request_id, label, feedback, correct)

    def stats(self) -> dict:
        """Per-variant requests, latency percentiles (ms) and accuracy, and the A/B test (:func:`experiment_stats`)."""
        return experiment_stats(self.records.rows())


def experiment_stats(rows: Iterable[StatsRow]) -> dict:
    """Per-variant requests, versions, latency percentiles (ms) and accuracy of ``rows``, and the A/B tests.

    ``tests`` compares each variant with feedback against the control (the ``production``
    variant if it has feedback, else the one with most requests); ``test`` is the first of
    them, None when fewer than two variants have feedback.

    Example:
        >>> rows = [StatsRow("production", 1, 0.010, 1, 1), StatsRow("candidate", 2, 0.020, 1, 0)]
        >>> stats = experiment_stats(rows)
        >>> stats["variants"]["candidate"]["accuracy"], stats["test"]["control"]
        (0.0, 'production')
    """
    by_variant: dict[str, list[StatsRow]] = {}
    for row in rows:
        by_variant.setdefault(row.variant, []).append(row)
    variants: dict[str, dict] = {}
    for alias in sorted(by_variant):
        mine = by_variant[alias]
        latency = np.asarray([r.latency_s for r in mine]) * 1000
        p50, p95, p99 = np.percentile(latency, [50, 95, 99]).tolist()
        feedback, correct = sum(r.feedback for r in mine), sum(r.correct for r in mine)
        variants[alias] = {
            "requests": len(mine),
            "versions": sorted({r.version for r in mine}),
            "latency_ms": {"p50": p50, "p95": p95, "p99": p99},
            "feedback": feedback,
            "correct": correct,
            "accuracy": correct / feedback if feedback else None,
        }
    tests = _ab_tests(variants)
    return {"variants": variants, "test": tests[0] if tests else None, "tests": tests}


def _ab_tests(variants: dict[str, dict]) -> list[dict]:
    """One z-test per treatment against the control, over variants that have feedback."""
    labelled = {a: v for a, v in variants.items() if v["feedback"] > 0}
    if len(labelled) < 2:
        return []
    # max keeps the first of equals: ties go to the alphabetically first alias
    control = "production" if "production" in labelled else max(sorted(labelled), key=lambda a: labelled[a]["requests"])
    c = labelled[control]
    tests = []
    for treatment, t in labelled.items():
        if treatment == control:
            continue
        z, p = two_proportion_ztest(t["correct"], t["feedback"], c["correct"], c["feedback"])
        equal = t["accuracy"] == c["accuracy"]
        needed = None if equal else min_sample_size(t["accuracy"], c["accuracy"])
        tests.append({
            "control": control,
            "treatment": treatment,
            "z": z,  # > 0: the treatment is more accurate
            "p_value": p,
            "alpha": ALPHA,
            "significant": p < ALPHA,
            "min_sample_size": needed,
            "samples_still_needed": None if needed is None else max(0, needed - min(t["feedback"], c["feedback"])),
        })
    return tests
