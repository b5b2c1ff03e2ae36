"""What one trial of ``dlforge tune`` is: the objective, its sampler, pruner and progress line.

Shared by the in-process study (:mod:`~dlforge.tune.study`) and the worker processes of
``--workers N`` (:mod:`~dlforge.tune.workers`), so a trial is the same wherever it runs.

Example:
    >>> sampler = make_sampler(parse_tune({"metric": "val_loss", "space": {
    ...     "optim.lr": {"type": "float", "low": 1e-4, "high": 0.1}}}), seed=0)
    >>> type(sampler).__name__
    'TrialSeededSampler'
"""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from dlforge.config import validate_config
from dlforge.errors import ConfigError
from dlforge.train import Callback
from dlforge.tune.space import TuneConfig, decode_params, grid_space, parse_tune, suggest, trial_raw  # noqa: F401


class PruningCallback(Callback):
    """Report a trial's metric after every epoch; stop training when the pruner says so.

    The reported value is ``metric`` when it is logged every epoch (``val_loss``,
    ``val_accuracy``); otherwise (``val_f1_macro``, ``test_*``: known only after
    training) it is ``val_loss``, negated for a maximised study so the pruner compares
    trials the right way round. Steps are 0-based epoch indices, as in ``history.jsonl``.

    Example:
        >>> import optuna
        >>> trial = optuna.create_study().ask()
        >>> PruningCallback(trial, "val_accuracy", "maximize").pruned_at is None
        True
    """

    def __init__(self, trial: optuna.Trial, metric: str, direction: str) -> None:
        self.trial, self.metric, self.direction = trial, metric, direction
        self.pruned_at: int | None = None

    def intermediate(self, metrics: dict[str, Any]) -> float | None:
        """The value reported for this epoch's ``metrics`` (None: nothing to report)."""
        if self.metric in metrics:
            return float(metrics[self.metric])
        if "val_loss" in metrics:
            return float(metrics["val_loss"]) * (-1.0 if self.direction == "maximize" else 1.0)
        return None

    def on_validation_end(self, state: Any, metrics: dict[str, Any]) -> None:
        value = self.intermediate(metrics)
        if value is None:
            return
        self.trial.report(value, step=state.epoch)
        if self.trial.should_prune():
            self.pruned_at = state.epoch
            state.should_stop, state.stop_reason = True, "pruned"


class TrialSeededSampler(BaseSampler):
    """Delegates to a sampler rebuilt for every trial with ``seed + trial.number``.

    A sampler seeded once per process would make two workers started with the same
    seed draw the same random start-up trials; keyed by the trial number (unique in the
    storage) each trial's draws are reproducible and distinct.

    Example:
        >>> sampler = TrialSeededSampler(lambda s: optuna.samplers.RandomSampler(seed=s), seed=0)
    """

    def __init__(self, make: Callable[[int], BaseSampler], seed: int) -> None:
        self._make, self._seed = make, seed
        self._inner = make(seed)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._inner = self._make(self._seed + trial.number)
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):  # type: ignore[no-untyped-def]
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):  # type: ignore[no-untyped-def]
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):  # type: ignore[no-untyped-def]
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values):  # type: ignore[no-untyped-def]
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def make_sampler(tune: TuneConfig, seed: int) -> BaseSampler:
    s = tune.sampler
    if s.name == "grid":
        # Not re-seeded per trial: the seed fixes the grid's shuffled order, which every
        # trial (and worker) must share; trial n takes point n of it, so it is reproducible.
        return optuna.samplers.GridSampler(grid_space(tune.space), seed=seed)
    if s.name == "random":
        return TrialSeededSampler(lambda k: optuna.samplers.RandomSampler(seed=k), seed)
    # constant_liar: a running trial counts as a bad result, so parallel workers spread out
    return TrialSeededSampler(lambda k: optuna.samplers.TPESampler(
        seed=k, n_startup_trials=s.n_startup_trials, constant_liar=True), seed)


def make_pruner(tune: TuneConfig, epochs: int) -> optuna.pruners.BasePruner:
    p = tune.pruner
    if tune.k_folds is not None or p.name == "none":  # a k-fold score has no per-epoch curve
        return optuna.pruners.NopPruner()
    if p.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    return optuna.pruners.HyperbandPruner(min_resource=p.min_resource, max_resource=max(epochs, p.min_resource),
                                          reduction_factor=p.reduction_factor)


# ----------------------------------------------------------------------------- the objective

def finite_or_none(value: Any) -> Any:
    return value if not isinstance(value, float) or math.isfinite(value) else None


def make_objective(tune: TuneConfig, base: dict[str, Any], trials_dir: Path) -> Callable[[optuna.Trial], float]:
    direction = tune.resolved_direction()

    def objective(trial: optuna.Trial) -> float:
        values = suggest(trial, tune.space)
        raw = trial_raw(base, values)
        cfg = validate_config(raw)
        trial.set_user_attr("config", raw)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        if tune.k_folds is not None:
            from dlforge.pipeline.crossval import cross_validate

            cv = cross_validate(cfg, k=tune.k_folds)
            trial.set_user_attr("cv_mean", {k: finite_or_none(v) for k, v in cv.mean.items()})
            trial.set_user_attr("cv_std", {k: finite_or_none(v) for k, v in cv.std.items()})
            name = tune.metric.removeprefix("cv_")
            if name not in cv.mean:
                raise ConfigError(f"tune.metric {tune.metric!r} is not a cross-validation metric of this task",
                                  hint=f"use one of: {', '.join('cv_' + k for k in cv.mean if k != 'n')}")
            return float(cv.mean[name])

        from dlforge.pipeline import train_run

        pruning = PruningCallback(trial, tune.metric, direction)
        # The run directory says which trial it is; the stored config keeps the user's name.
        run_cfg = cfg.model_copy(update={"name": f"{cfg.name}-trial{trial.number}"})
        # Bagging trains k members one after another: no single curve to prune (see _check_pruning).
        outcome = train_run(run_cfg, runs_dir=trials_dir, callbacks=[] if cfg.data.imbalance.bagging else [pruning])
        trial.set_user_attr("run_dir", str(outcome.run_dir))
        trial.set_user_attr("epochs_run", outcome.result.epochs_run)
        trial.set_user_attr("stop_reason", outcome.result.stop_reason)
        trial.set_user_attr("metrics", {k: finite_or_none(v) for k, v in outcome.metrics.items()})
        if pruning.pruned_at is not None:
            raise optuna.TrialPruned(f"pruned after epoch {pruning.pruned_at + 1}")
        if outcome.result.stop_reason == "non_finite":
            # The NaN guard stopped a diverging run (a learning rate far too high, say): a bad
            # point of the space, not a broken study. NaN marks the trial failed; others go on.
            trial.set_user_attr("failure", "the run diverged: non-finite loss or gradient")
            return math.nan
        if tune.metric not in outcome.metrics:
            raise ConfigError(f"tune.metric {tune.metric!r} is not a metric this run produces",
                              hint=f"use one of: {', '.join(sorted(outcome.metrics))}")
        return float(outcome.metrics[tune.metric])

    return objective


def trial_line(trial: FrozenTrial, tune: TuneConfig) -> str:
    """The progress line of a finished trial: its number, outcome, duration and values."""
    seconds = trial.duration.total_seconds() if trial.duration else 0.0
    if trial.state == TrialState.COMPLETE:
        outcome = f"{tune.metric} {trial.value:.4g}"
    elif trial.state == TrialState.PRUNED:
        outcome = f"pruned after epoch {len(trial.intermediate_values)}"
    else:
        outcome = trial.state.name.lower() + (f" ({trial.user_attrs['failure']})"
                                              if "failure" in trial.user_attrs else "")
    params = decode_params(tune.space, trial.params)
    shown = "  ".join(f"{k}={short_value(params[k])}" for k in tune.space if k in params)
    return f"trial {trial.number}: {outcome} ({seconds:.1f} s)  {shown}\n"


def progress_callback(emit: Callable[[str], Any], tune: TuneConfig) -> Callable:
    """An Optuna callback handing each finished trial's :func:`trial_line` to ``emit``
    (a stream's write in one process, a queue's put in a worker process)."""

    def report(study: optuna.Study, trial: FrozenTrial) -> None:
        emit(trial_line(trial, tune))

    return report


def short_value(value: Any) -> str:
    """A sampled value as progress lines and summaries show it.

    Example:
        >>> short_value(0.0312345), short_value([16, 16]), short_value("adam")
        ('0.03123', '[16, 16]', '"adam"')
    """
    return f"{value:.4g}" if isinstance(value, float) else json.dumps(value)

