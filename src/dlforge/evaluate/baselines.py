"""Baselines: what simple scikit-learn models score on a run's own split.

A deep model's number means little alone: R² 0.41 is good next to gradient boosting's
0.38 and poor next to its 0.86. :func:`fit_baselines` fits, on the run's train split and
scored on the same held-out split the model is scored on:

* every task: the majority class (``DummyClassifier(strategy="most_frequent")``) or the
  training mean (``DummyRegressor(strategy="mean")``);
* tables only (encoding kind ``"tabular"``): ``HistGradientBoostingClassifier`` /
  ``HistGradientBoostingRegressor`` and ``LogisticRegression`` / ``Ridge``, default
  parameters, ``random_state`` fixed, on the inputs the model saw (standardised).

Each baseline records its headline metrics in the target's own units (accuracy and
balanced accuracy; R² and RMSE), computed by :mod:`dlforge.evaluate.metrics` as the
model's are (so equal predictions give equal numbers: accuracy is float32 there), and its
seconds. The fitted models are time-boxed: one is skipped (and says
why) when the table has more than :data:`MAX_CELLS` rows x features or the run has
spent :data:`BUDGET_S` seconds on baselines already.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(200, 3)).astype(np.float32)
    >>> y = (x[:, :1] * 2.0).astype(np.float32)
    >>> report = fit_baselines((x[:150], y[:150]), (x[150:], y[150:]), task="regression", kind="tabular")
    >>> [b.name for b in report.baselines]
    ['training mean', 'HistGradientBoosting', 'Ridge']
    >>> report.baselines[2].metrics["r2"] > 0.99
    True
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from dlforge.evaluate.metrics import classification_metrics, regression_metrics

BUDGET_S = 30.0  # total seconds the fitted baselines may take; later ones are skipped
# rows x features above which HistGradientBoosting / the linear model are skipped: about
# 100k rows of 50 features, which HGB fits in some seconds on two cores.
MAX_CELLS = 5_000_000
# Below this many cells one thread is faster: OpenMP start-up on busy cores costs more
# (1.2 s against 0.1 s for HGB on 300 rows) than it saves. Results do not depend on it.
ONE_THREAD_CELLS = 1_000_000
SEED = 0
HEADLINE = {"classification": ("accuracy", "balanced_accuracy"), "regression": ("r2", "rmse")}
LABELS = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "r2": "R²", "rmse": "RMSE"}


@dataclass
class Baseline:
    """One baseline: its name, headline metrics (None when skipped), seconds, why skipped."""

    name: str
    metrics: dict[str, float] | None
    seconds: float
    skipped: str | None = None


@dataclass
class BaselineReport:
    """The baselines of one run, and the model's own headline numbers on the same split.

    ``metric`` is the number compared (``accuracy`` or ``r2``; higher is better).
    """

    task: str
    split: str
    metric: str
    model: dict[str, float]
    baselines: list[Baseline] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (``baselines.json``)."""
        return asdict(self)

    def beaten_by(self) -> list[Baseline]:
        """The baselines that score strictly better than the model on ``metric``."""
        mine = self.model.get(self.metric)
        if mine is None or mine != mine:  # NaN: nothing to compare
            return []
        return [b for b in self.baselines
                if b.metrics is not None and b.metrics.get(self.metric, float("nan")) > mine]


def _headline(task: str, y_true: np.ndarray, predicted: np.ndarray, n_classes: int | None) -> dict[str, float]:
    """Headline metrics from targets and predictions (probabilities (N, K) or values)."""
    if task == "classification":
        ev = classification_metrics(torch.as_tensor(y_true), torch.as_tensor(predicted))
    else:
        ev = regression_metrics(torch.as_tensor(y_true), torch.as_tensor(predicted))
    return {k: float(ev.metrics[k]) for k in HEADLINE[task]}


def _full_proba(model: Any, x: np.ndarray, n_classes: int) -> np.ndarray:
    """``predict_proba`` with one column per class of the run, also for classes absent
    from the train split (the sklearn model only knows the classes it saw)."""
    proba = np.zeros((len(x), n_classes))
    proba[:, model.classes_] = model.predict_proba(x)
    return proba


def _candidates(task: str, kind: str, n_outputs: int) -> list[tuple[str, Callable[[], Any], str | None]]:
    """(name, factory, reason it cannot run or None) for the task and data kind."""
    from sklearn.dummy import DummyClassifier, DummyRegressor

    if task == "classification":
        found = [("majority class", lambda: DummyClassifier(strategy="most_frequent"), None)]
    else:
        found = [("training mean", lambda: DummyRegressor(strategy="mean"), None)]
    if kind != "tabular":
        return found  # images, text and series: only the trivial baseline
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.linear_model import LogisticRegression, Ridge

    if task == "classification":
        found += [("HistGradientBoosting", lambda: HistGradientBoostingClassifier(random_state=SEED), None),
                  ("LogisticRegression", lambda: LogisticRegression(random_state=SEED), None)]
    else:
        single = None if n_outputs == 1 else f"skipped: predicts one output, the target has {n_outputs}"
        found += [("HistGradientBoosting", lambda: HistGradientBoostingRegressor(random_state=SEED), single),
                  ("Ridge", lambda: Ridge(random_state=SEED), None)]
    return found


def fit_baselines(
    train: tuple[np.ndarray, np.ndarray],
    held_out: tuple[np.ndarray, np.ndarray],
    *,
    task: str,
    kind: str,
    n_classes: int | None = None,
    split: str = "test",
    model_metrics: dict[str, float] | None = None,
    budget_s: float = BUDGET_S,
    max_cells: int = MAX_CELLS,
) -> BaselineReport:
    """Fit the baselines on ``train`` ``(x, y)`` and score them on ``held_out``.

    ``x`` is what the model saw (flattened to 2-D here); ``y`` holds class indices
    ``(N,)`` or regression targets ``(N, D)`` in the target's own units. ``model_metrics``
    (the model's metrics on ``held_out``) fills :attr:`BaselineReport.model`.

    Example:
        >>> import numpy as np
        >>> x, y = np.zeros((6, 2)), np.array([0, 0, 0, 1, 1, 0])
        >>> report = fit_baselines((x, y), (x, y), task="classification", kind="image", n_classes=2)
        >>> report.baselines[0].name, round(report.baselines[0].metrics["accuracy"], 4)
        ('majority class', 0.6667)
    """
    x_fit, y_fit = _as_2d(train[0]), np.asarray(train[1])
    x_out, y_out = _as_2d(held_out[0]), np.asarray(held_out[1])
    n_outputs = 1 if task == "classification" else y_fit.reshape(len(y_fit), -1).shape[1]
    if task == "regression":
        y_fit = y_fit.reshape(len(y_fit), -1)
        y_fit = y_fit.ravel() if n_outputs == 1 else y_fit  # sklearn wants (N,) for one output
    if task == "classification" and n_classes is None:
        n_classes = int(max(y_fit.max(), y_out.max())) + 1
    metric = HEADLINE[task][0]
    report = BaselineReport(task=task, split=split, metric=metric,
                            model={k: float(v) for k, v in (model_metrics or {}).items() if k in HEADLINE[task]})
    spent = 0.0
    for i, (name, make, cannot) in enumerate(_candidates(task, kind, n_outputs)):
        trivial = i == 0  # the dummy baseline costs nothing and always runs
        if cannot is None and not trivial:
            cells = x_fit.shape[0] * x_fit.shape[1]
            if cells > max_cells:
                cannot = f"skipped: too large ({x_fit.shape[0]} rows x {x_fit.shape[1]} features)"
            elif spent > budget_s:
                cannot = f"skipped: the {budget_s:g} s baseline budget was spent"
        if cannot is not None:
            report.baselines.append(Baseline(name, None, 0.0, cannot))
            continue
        start = time.perf_counter()
        threads = 1 if x_fit.size < ONE_THREAD_CELLS else None
        with warnings.catch_warnings(), threadpool_limits(threads):
            # an unconverged LogisticRegression still is a fair baseline; its warning is noise here
            warnings.simplefilter("ignore")
            # the dummy ignores its inputs: one zero column spares a copy of a large image array
            x_a, x_b = (np.zeros((len(x_fit), 1)), np.zeros((len(x_out), 1))) if trivial else (x_fit, x_out)
            fitted = make().fit(x_a, y_fit)
            predicted = _full_proba(fitted, x_b, n_classes) if task == "classification" else fitted.predict(x_b)
        seconds = time.perf_counter() - start
        spent += seconds
        report.baselines.append(Baseline(name, _headline(task, y_out, predicted, n_classes), seconds))
    return report


def _as_2d(x: np.ndarray | torch.Tensor) -> np.ndarray:
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return x.reshape(len(x), -1)


def summary_lines(report: BaselineReport) -> list[str]:
    """One plain line per baseline, then one sentence per baseline that beats the model.

    Example:
        >>> r = BaselineReport("regression", "test", "r2", {"r2": 0.41, "rmse": 60.0},
        ...                    [Baseline("HistGradientBoosting", {"r2": 0.86, "rmse": 30.0}, 0.2)])
        >>> print("\\n".join(summary_lines(r)))  # doctest: +NORMALIZE_WHITESPACE
        HistGradientBoosting: R² 0.86, RMSE 30 (0.2 s); this model: R² 0.41, RMSE 60
        HistGradientBoosting beats this model on the test split (R² 0.86 vs 0.41): try more train.epochs or a higher optim.lr, keep data.standardize_target: true, and check the features (data.drop for ids); on a small table gradient boosting may simply be the better model.
    """
    keys = HEADLINE[report.task]
    mine = ", ".join(f"{LABELS[k]} {_num(report.model.get(k))}" for k in keys)
    lines = []
    for b in report.baselines:
        if b.metrics is None:
            lines.append(f"{b.name}: {b.skipped}")
            continue
        shown = ", ".join(f"{LABELS[k]} {_num(b.metrics.get(k))}" for k in keys)
        lines.append(f"{b.name}: {shown} ({b.seconds:.2g} s); this model: {mine}")
    label = LABELS[report.metric]
    for b in report.beaten_by():
        lines.append(f"{b.name} beats this model on the {report.split} split ({label} "
                     f"{_num(b.metrics[report.metric])} vs {_num(report.model[report.metric])}): {_advice(report, b)}")
    return lines


def _advice(report: BaselineReport, baseline: Baseline) -> str:
    if baseline.name in ("majority class", "training mean"):
        what = "the majority class" if report.task == "classification" else "the training mean"
        target = "keep data.standardize_target: true, " if report.task == "regression" else ""
        return (f"the model has learned less than always predicting {what}; {target}raise optim.lr or "
                f"train.epochs, and check that the features carry signal.")
    target = "keep data.standardize_target: true, and " if report.task == "regression" else ""
    return (f"try more train.epochs or a higher optim.lr, {target}check the features (data.drop for ids); "
            f"on a small table gradient boosting may simply be the better model.")


def _num(value: float | None) -> str:
    if value is None or value != value:
        return "n/a"
    return f"{value:.4g}" if abs(value) < 1e3 else f"{value:.0f}"  # RMSE 60413, not 6.041e+04
