"""Serving metrics (Prometheus) and drift detection against the training reference.

:class:`Metrics` holds the server's counters and histograms in its own registry, so
several apps in one process (tests) never collide; :meth:`Metrics.request` counts one
request (status, errors, latency, in flight), the one way requests are counted. :class:`DriftMonitor` keeps a sliding
window of live inputs (as :func:`~dlforge.registry.reference.reference_features`) and
predictions, and compares each feature with the training reference by the population
stability index (:func:`psi`) and the two-sample Kolmogorov-Smirnov statistic
(:func:`ks_statistic`).

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> ref = rng.normal(size=2000)
    >>> round(psi(ref, rng.normal(size=2000)), 2) < 0.1, psi(ref, rng.normal(2, 1, size=2000)) > 0.2
    (True, True)
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from dlforge.registry.reference import prediction_summary, reference_features
from dlforge.serve.errors import error_status

logger = logging.getLogger("dlforge.serve")

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = tuple(float(2**i) for i in range(9))  # 1, 2, 4, ..., 256
QUEUE_BUCKETS = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
EPS = 1e-4  # floor for bin proportions: an empty bin would make PSI infinite
KS_NOISE_C = 1.949  # c(alpha) of the KS critical value at alpha = 0.001: below it, KS is sampling noise


@dataclass
class RequestCount:
    """The labels and status of one request being counted; set them as they become known."""

    model: str
    version: str = ""
    variant: str = ""
    status: int = 200


class Metrics:
    """The server's Prometheus metrics, in their own ``CollectorRegistry``.

    Example:
        >>> m = Metrics()
        >>> m.requests.labels("iris", "1", "production", "200").inc()
        >>> b"dlforge_requests_total" in m.render()[0]
        True
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter("dlforge_requests", "Predict requests answered.",
                                ["model", "version", "variant", "status"], registry=r)
        self.errors = Counter("dlforge_errors", "Requests answered with status >= 400.",
                              ["model", "version", "variant", "status"], registry=r)
        self.latency = Histogram("dlforge_request_latency_seconds", "Time from request to response.",
                                 ["model", "version", "variant"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("dlforge_requests_in_flight", "Requests being answered now.", ["model"], registry=r)
        self.batch_size = Histogram("dlforge_batch_size", "Samples per executed batch.",
                                    ["model", "version"], buckets=BATCH_BUCKETS, registry=r)
        self.queue_time = Histogram("dlforge_queue_time_seconds", "Time a request waited for its batch.",
                                    ["model", "version"], buckets=QUEUE_BUCKETS, registry=r)
        self.loaded = Gauge("dlforge_loaded_model_info", "1 for each loaded model version and its alias.",
                            ["model", "version", "alias"], registry=r)
        self.out_of_range = Counter("dlforge_out_of_range_inputs",
                                    "Inputs answered with a warning: far outside the training range.",
                                    ["model"], registry=r)
        self.drift = Gauge("dlforge_drift", "Drift of a feature (or 'prediction') from the training reference.",
                           ["model", "version", "feature", "statistic"], registry=r)
        # Labelled children of the per-request metrics, looked up once: prometheus' labels() takes a
        # lock and validates the labels on every call: about half of what counting a request cost.
        self._children: dict[tuple, Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            if len(self._children) > 10_000:  # bounded: label values come from the served models only
                self._children.clear()
            child = self._children[key] = metric.labels(*labels)
        return child

    @contextlib.contextmanager
    def request(self, model: str, *, version: int | str = "", variant: str = "",
                in_flight: bool = False) -> Iterator[RequestCount]:
        """Count one predict request, once: ``dlforge_requests`` by status, ``dlforge_errors`` when
        the status is 400 or more, else its latency.

        The block sets ``version``, ``variant`` and ``status`` (200 unless set) on the yielded
        :class:`RequestCount`; an exception leaving the block sets the status with
        :func:`~dlforge.serve.security.error_status` and goes on. ``in_flight``: also held in
        ``dlforge_requests_in_flight`` while the block runs.

        Example:
            >>> m = Metrics()
            >>> with m.request("iris", in_flight=True) as count:
            ...     count.version, count.variant = "1", "production"
            >>> m.requests.labels("iris", "1", "production", "200")._value.get()
            1.0
        """
        count = RequestCount(model, str(version), variant)
        gauge = self._child(self.in_flight, model) if in_flight else None
        if gauge is not None:
            gauge.inc()
        started = time.perf_counter()
        try:
            yield count
        except BaseException as err:
            count.status = error_status(err)
            raise
        finally:
            if gauge is not None:
                gauge.dec()
            labels, status = (count.model, count.version, count.variant), str(count.status)
            self._child(self.requests, *labels, status).inc()
            if count.status >= 400:
                self._child(self.errors, *labels, status).inc()
            else:
                self._child(self.latency, *labels).observe(time.perf_counter() - started)

    def observer(self, model: str, version: int) -> _BatchMetrics:
        """A batch observer (for ``DynamicBatcher``) recording batch sizes and queue times."""
        return _BatchMetrics(self, model, str(version))

    def set_drift(self, model: str, version: int, report: dict) -> None:
        """Set the drift gauges from a :meth:`DriftMonitor.report` (no-op when it is not available).

        Example:
            >>> m = Metrics()
            >>> m.set_drift("iris", 1, {"available": True, "features": {"x0": {"psi": 0.3, "ks": 0.1}},
            ...                        "prediction": {"psi": 0.0, "ks": None}})
            >>> m.drift.labels("iris", "1", "x0", "psi")._value.get()
            0.3
        """
        if not report.get("available"):
            return
        rows = dict(report.get("features", {}))
        if report.get("prediction"):
            rows["prediction"] = report["prediction"]
        for feature, stats in rows.items():
            for statistic in ("psi", "ks"):
                if stats.get(statistic) is not None:
                    self.drift.labels(model, str(version), feature, statistic).set(stats[statistic])

    def forget(self, model: str, version: int) -> None:
        """Drop every series of an unloaded model version (batch, queue, drift and loaded gauges)."""
        for metric in (self.batch_size, self.queue_time, self.drift, self.loaded):
            metric.remove_by_labels({"model": model, "version": str(version)})
        self._children.clear()  # a removed series must be created again, not counted in a detached child

    def render(self) -> tuple[bytes, str]:
        """The metrics in Prometheus' text format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _BatchMetrics:
    def __init__(self, metrics: Metrics, model: str, version: str) -> None:
        self._size = metrics.batch_size.labels(model, version)
        self._queue = metrics.queue_time.labels(model, version)

    def batch(self, size: int, queue_seconds: list[float]) -> None:
        self._size.observe(size)
        for seconds in queue_seconds:
            self._queue.observe(seconds)


# ------------------------------------------------------------------------------ statistics
def _bin_edges(reference: np.ndarray, bins: int) -> np.ndarray:
    """Inner edges at the reference's quantiles; the outer bins are open-ended.

    Ties (discrete features) merge quantiles, so there may be fewer than ``bins`` bins; a
    constant feature keeps one edge, its value, so a shift upwards still lands in a new bin.
    """
    return np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))


def _proportions(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of ``x`` in each bin (-inf, e0], (e0, e1], ..., (e_last, inf), floored at EPS."""
    counts = np.bincount(np.searchsorted(edges, x, side="left"), minlength=len(edges) + 1)
    return np.maximum(counts / len(x), EPS)


def psi_from_proportions(expected: np.ndarray, actual: np.ndarray) -> float:
    """PSI = sum((actual - expected) * ln(actual / expected)) of two proportion vectors (floored at EPS).

    Example:
        >>> round(psi_from_proportions(np.array([0.5, 0.5]), np.array([0.9, 0.1])), 4)
        0.8789
    """
    a = np.maximum(np.asarray(actual, dtype=np.float64), EPS)
    e = np.maximum(np.asarray(expected, dtype=np.float64), EPS)
    return float(np.sum((a - e) * np.log(a / e)))


def psi(reference: np.ndarray, live: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``live`` against ``reference``, over reference-quantile bins.

    Rule of thumb: below 0.1 stable, 0.1 to 0.2 a moderate shift, above 0.2 a major one
    (for large samples; small samples inflate PSI by about (bins - 1) * (1/n_ref + 1/n_live)).

    Example:
        >>> psi(np.arange(100.0), np.arange(100.0))
        0.0
    """
    reference, live = _flat(reference, "reference"), _flat(live, "live")
    edges = _bin_edges(reference, bins)
    return psi_from_proportions(_proportions(reference, edges), _proportions(live, edges))


def _ks_sorted(ref_sorted: np.ndarray, live_sorted: np.ndarray) -> float:
    """KS statistic of two sorted samples, evaluated as scipy's ks_2samp does."""
    n1, n2 = len(ref_sorted), len(live_sorted)
    both = np.concatenate([ref_sorted, live_sorted])
    cdf_ref = np.searchsorted(ref_sorted, both, side="right") / n1
    cdf_live = np.searchsorted(live_sorted, both, side="right") / n2
    d = float(np.max(np.abs(cdf_ref - cdf_live)))
    # Every CDF gap is a multiple of 1/lcm(n1, n2): snapping to it removes rounding error,
    # as ks_2samp does for samples of up to 10,000.
    lcm = math.lcm(n1, n2)
    return round(d * lcm) / lcm if lcm < 2**31 else d


def ks_statistic(reference: np.ndarray, live: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs.

    Equals ``scipy.stats.ks_2samp(reference, live).statistic``.

    Example:
        >>> round(ks_statistic(np.array([1.0, 2.0, 3.0]), np.array([2.5, 3.5])), 4)
        0.6667
    """
    return _ks_sorted(np.sort(_flat(reference, "reference")), np.sort(_flat(live, "live")))


def _flat(x: Any, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).ravel()
    if len(x) == 0:
        raise ValueError(f"the {what} sample is empty")
    return x


class _Feature:
    """One reference feature, prepared once: sorted samples, bin edges and bin proportions."""

    def __init__(self, samples: Any, bins: int) -> None:
        self.sorted = np.sort(_flat(samples, "reference"))
        self.edges = _bin_edges(self.sorted, bins)
        self.proportions = _proportions(self.sorted, self.edges)

    def compare(self, live: np.ndarray) -> tuple[float, float]:
        return (psi_from_proportions(self.proportions, _proportions(live, self.edges)),
                _ks_sorted(self.sorted, np.sort(live)))


# ------------------------------------------------------------------------------- drift
class DriftMonitor:
    """Compare a sliding window of live traffic with a model's training reference.

    A feature has drifted when its PSI exceeds ``psi_threshold`` or its KS statistic
    exceeds ``ks_threshold``, in both cases beyond what sampling noise alone gives at the
    current window size (see :meth:`report`). A WARNING is logged on logger ``dlforge.serve``
    when a feature starts drifting, and again only after it has recovered. Every
    ``report_every`` observed samples (0: never) the monitor reports by itself, so warnings
    and ``on_report`` (the server's drift gauges) keep up without anyone asking. ``unsupported``
    (a reason) turns tracking off: ``observe`` keeps nothing and the report says why (the pool
    passes one for segmentation models, whose images of any size have no stored reference).

    Example:
        >>> ref = {"features": ["x0"], "samples": [np.random.default_rng(0).normal(size=500).tolist()],
        ...        "prediction": {"kind": "values", "samples": [0.0] * 500}, "n": 500}
        >>> monitor = DriftMonitor(ref, min_samples=10)
        >>> monitor.observe(torch.randn(20, 1), {}, {"values": torch.zeros(20, 1)})
        >>> monitor.report()["available"]
        True
    """

    def __init__(self, reference: dict | None, *, window: int = 1000, psi_threshold: float = 0.2,
                 ks_threshold: float = 0.2, min_samples: int = 50, name: str = "",
                 on_report: Callable[[dict], None] | None = None, bins: int = 10,
                 report_every: int = 200, unsupported: str | None = None) -> None:
        self.reference = reference
        self.unsupported = unsupported  # why this model's traffic is not tracked (observe does nothing)
        self.window = window
        self.psi_threshold, self.ks_threshold = psi_threshold, ks_threshold
        self.min_samples = max(1, min_samples)
        self.name = name
        self.on_report = on_report
        self.report_every = report_every
        self._rows: deque[np.ndarray] = deque(maxlen=window)  # one (F,) feature row per sample
        self._predictions: deque = deque(maxlen=window)  # class index or value per sample
        self._names: list[str] | None = None
        self._drifted: set[str] = set()
        self._since_report = 0
        self._lock = threading.Lock()  # observe may run in a worker thread while /drift reports
        self._features: dict[str, _Feature] = {}
        self._prediction: _Feature | np.ndarray | None = None
        self._broken: str | None = None  # why a stored reference cannot be used
        if reference:
            try:
                self._features = {n: _Feature(s, bins) for n, s in zip(reference["features"], reference["samples"],
                                                                          strict=True)}
                pred = reference.get("prediction") or {}
                if pred.get("kind") == "classes":
                    self._prediction = np.asarray(pred["proportions"], dtype=np.float64)
                elif pred.get("kind") == "values" and pred.get("samples"):
                    self._prediction = _Feature(pred["samples"], bins)
            except (KeyError, TypeError, ValueError, AttributeError) as err:  # serve anyway, without drift
                self._broken = "the stored reference statistics are malformed"
                logger.warning("model %s: %s (%r)", name or "?", self._broken, err)

    def observe(self, x: torch.Tensor, preprocessing: dict, outputs: dict) -> None:
        """Add one request's model-ready inputs ``x`` and its ``outputs`` (Artifact.predict's dict)."""
        if self.unsupported:
            return
        feats, names = reference_features(x, preprocessing)
        kind, summary, _ = prediction_summary(outputs)
        if kind == "classes" and len(summary) != len(feats):  # segmentation: one label per pixel
            summary = summary.reshape(len(feats), -1)
        with self._lock:
            self._names = names
            self._rows.extend(feats)
            self._predictions.extend(summary)
            self._since_report += len(feats)
            due = self.report_every > 0 and self._since_report >= self.report_every
        if due:
            self.report()

    def report(self) -> dict:
        """Drift of each feature and of the predictions over the current window.

        ``{"available", "reason"?, "n_live", "window", "features": {name: {"psi", "ks",
        "drifted"}}, "prediction": {...}, "drifted": [names]}``; "prediction" is listed in
        ``drifted`` when the prediction distribution moved. Sampling noise inflates both
        statistics on small windows, so a feature counts as drifted only when PSI exceeds
        ``psi_threshold + (bins - 1) * (1/n_ref + 1/n_live)`` (PSI's expected value with no
        drift) or KS exceeds the larger of ``ks_threshold`` and its 0.1% critical value.
        """
        with self._lock:
            self._since_report = 0
            rows = np.asarray(self._rows, dtype=np.float64)
            predictions = list(self._predictions)
            names = self._names
        out: dict[str, Any] = {"available": False, "n_live": len(rows), "window": self.window,
                               "features": {}, "prediction": None, "drifted": []}
        if self.unsupported:
            out["reason"] = self.unsupported
        elif not self.reference:
            out["reason"] = "the model has no training reference statistics (models trained by dlforge train have them)"
        elif self._broken:
            out["reason"] = self._broken
        elif len(rows) < self.min_samples:
            out["reason"] = f"{len(rows)} live samples so far; drift needs at least {self.min_samples}"
        elif names != list(self._features):
            out["reason"] = "the live inputs' features do not match the reference's"
        else:
            out["available"] = True
            for i, name in enumerate(names):
                out["features"][name] = self._judge(self._features[name], rows[:, i])
            out["prediction"] = self._judge_prediction(predictions)
            drifted = [n for n, s in out["features"].items() if s["drifted"]]
            if out["prediction"] is not None and out["prediction"]["drifted"]:
                drifted.append("prediction")
            out["drifted"] = drifted
            with self._lock:
                self._warn(out)
        if self.on_report is not None:
            try:
                self.on_report(out)
            except Exception:  # the gauges must never break a request
                logger.exception("drift on_report callback failed")
        return out

    def _judge(self, feature: _Feature, live: np.ndarray) -> dict:
        psi_value, ks = feature.compare(live)
        n_ref, n_live = len(feature.sorted), len(live)
        psi_limit = self.psi_threshold + len(feature.edges) * (1 / n_ref + 1 / n_live)  # bins - 1 == len(edges)
        ks_limit = max(self.ks_threshold, KS_NOISE_C * math.sqrt((n_ref + n_live) / (n_ref * n_live)))
        return {"psi": psi_value, "ks": ks, "drifted": bool(psi_value > psi_limit or ks > ks_limit)}

    def _judge_prediction(self, predictions: list) -> dict | None:
        if self._prediction is None or not predictions:
            return None
        if isinstance(self._prediction, _Feature):
            return self._judge(self._prediction, np.asarray(predictions, dtype=np.float64))
        expected = self._prediction
        if np.ndim(predictions[0]) == 0:
            idx = np.asarray(predictions, dtype=np.int64)
        else:  # segmentation: one row of pixel classes per sample
            idx = np.concatenate([np.ravel(p) for p in predictions]).astype(np.int64)
        idx = idx[(idx >= 0) & (idx < len(expected))]
        counts = np.bincount(idx, minlength=len(expected))
        value = psi_from_proportions(expected, counts / max(1, counts.sum()))
        limit = self.psi_threshold + (len(expected) - 1) / max(1, len(predictions))
        return {"psi": value, "ks": None, "drifted": bool(value > limit)}

    def _warn(self, report: dict) -> None:
        """Log each feature that newly drifted; forget those that recovered."""
        for name in [n for n in report["drifted"] if n not in self._drifted]:
            stats = report["prediction"] if name == "prediction" else report["features"][name]
            ks = "n/a" if stats["ks"] is None else f"{stats['ks']:.3f}"
            logger.warning("drift in model %s: %s has PSI %.3f and KS %s against the training reference "
                           "(%d live samples)", self.name or "?", name, stats["psi"], ks, report["n_live"])
        self._drifted = set(report["drifted"])
