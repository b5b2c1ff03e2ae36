"""Run an Optuna study over a run config: what ``dlforge tune CONFIG.yaml`` does.

Each trial samples the ``tune.space`` keys, trains the resulting config with
:func:`dlforge.pipeline.train_run` (or scores it with :func:`cross_validate` when
``tune.k_folds`` is set) and returns ``tune.metric``. :class:`PruningCallback` reports
the metric after every epoch, so a median or Hyperband pruner can stop a trial that is
behind the others at the same epoch.

Storage is any SQLAlchemy URL (default ``sqlite:///<runs_dir>/<name>-tune.db``), so
workers on many machines can share one study through PostgreSQL: start the first worker
plainly (it creates the study), the others with ``resume=True`` (``--resume``), which
joins the existing study. A study remembers its objective and base config; joining or
resuming with a different one is an error rather than a silent mix. Trials of workers
that died are noticed through the storage heartbeat and queued again once.

Reproducibility: every trial trains with the config's ``seed`` (so trials differ only
in their hyperparameters), and the TPE and random samplers are re-seeded for each trial
with ``seed + trial.number``, so a single worker's study is the same on every run and
concurrent workers (which get distinct trial numbers) never draw the same random
start-up points. The grid sampler gives trial ``n`` point ``n`` of a grid order fixed
by ``seed``.

Outputs, in ``<runs_dir>/<study>-tune/``: ``report.html`` (trials table, parameter
importances, optimisation history), ``best_config.yaml`` (the best trial's config,
ready for ``dlforge train``) and ``trials.json``. Each trial's run directory, pruned
ones included (their report shows where they stopped), is kept in
``<runs_dir>/<study>-trials/`` and recorded as the trial's ``run_dir`` user attribute.

Example:
    >>> from dlforge.config import read_yaml
    >>> result = run_tune(read_yaml("circles_tune.yaml"), runs_dir="runs")  # doctest: +SKIP
    >>> result.best_params, result.out_dir  # doctest: +SKIP
    ({'optim.lr': 0.031}, PosixPath('runs/circles-tune'))
"""

from __future__ import annotations

import copy
import json
import math
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

import optuna
import yaml
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from dlforge.config import validate_config
from dlforge.errors import ConfigError
from dlforge.train import Callback
from dlforge.train.state_io import atomic_write
from dlforge.tune.checks import check_before_trials
from dlforge.tune.storage import default_storage, display_url, open_storage  # noqa: F401 (re-exported)
from dlforge.tune.space import TuneConfig, check_space, decode_params, grid_space, parse_tune, suggest, trial_raw

_ATTR_OBJECTIVE = "dlforge.objective"  # study user attrs: what the study optimises ...
_ATTR_BASE = "dlforge.base_config"  # ... and the config every trial starts from
CREATING_WAIT_S = 10  # how long a joining worker waits for a new study's attributes


@dataclass
class TuneResult:
    """What a study produced. ``best_*`` are ``None``/empty while no trial completed."""

    study_name: str
    storage: str  # the URL, password hidden
    best_value: float | None
    best_params: dict[str, Any]
    best_config: dict[str, Any]
    n_complete: int
    n_pruned: int
    n_failed: int
    out_dir: Path
    best_trial: int | None = None
    files: dict[str, Path] = field(default_factory=dict)


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


# ----------------------------------------------------------------------------- study set-up

def _objective_record(tune: TuneConfig) -> dict[str, Any]:
    return {"metric": tune.metric, "direction": tune.resolved_direction(), "k_folds": tune.k_folds,
            "space": {k: v.model_dump(mode="json") for k, v in tune.space.items()}}


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (an empty mapping is a value of its own)."""
    if isinstance(d, dict) and d:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): d}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ (or exist on one side only)."""
    a, b = _flat(old), _flat(new)
    missing = object()
    return sorted(k for k in set(a) | set(b) if a.get(k, missing) != b.get(k, missing))


def _check_same_study(study: optuna.Study, tune: TuneConfig, base: dict[str, Any], name: str) -> None:
    """A resumed or joined study must optimise the same thing from the same config."""
    attrs = study.user_attrs
    deadline = time.time() + CREATING_WAIT_S
    while (_ATTR_OBJECTIVE not in attrs or _ATTR_BASE not in attrs) and time.time() < deadline:
        time.sleep(0.2)  # the worker that created the study may not have recorded what it is yet
        attrs = study.user_attrs
    if _ATTR_OBJECTIVE not in attrs or _ATTR_BASE not in attrs:
        raise ConfigError(f"study {name!r} was not created by dlforge tune (or is still being created)",
                          hint="change tune.study_name, or retry in a moment if another worker is starting it")
    hint = "run the config the study was created with, or start a new study with another tune.study_name"
    changed = _differences(attrs[_ATTR_OBJECTIVE], _objective_record(tune))
    if changed:
        raise ConfigError(f"study {name!r} optimises something else: tune keys differ ({', '.join(changed[:6])})",
                          hint=hint)
    stored = validate_config(attrs[_ATTR_BASE]).model_dump(mode="json")
    changed = _differences(stored, validate_config(base).model_dump(mode="json"))
    if changed:
        raise ConfigError(f"study {name!r} was started from a different config: {', '.join(changed[:6])} differ",
                          hint=hint)


def _open_study(tune: TuneConfig, base: dict[str, Any], storage: optuna.storages.RDBStorage, name: str, url: str,
                resume: bool, sampler: BaseSampler, pruner: optuna.pruners.BasePruner) -> optuna.Study:
    exists = name in optuna.get_all_study_names(storage)
    if resume and not exists:
        raise ConfigError(f"--resume: no study named {name!r} in {display_url(url)}",
                          hint="run without --resume to create it, or check tune.study_name and the storage")
    if exists and not resume:
        raise ConfigError(f"a study named {name!r} already exists in {display_url(url)}",
                          hint="pass --resume to continue it (or join it as another worker), "
                               "or set another tune.study_name")
    if resume:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        _check_same_study(study, tune, base, name)
        return study
    try:
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                    direction=tune.resolved_direction())
    except optuna.exceptions.DuplicatedStudyError:  # another worker created it a moment ago
        raise ConfigError(f"a study named {name!r} already exists in {display_url(url)}",
                          hint="pass --resume to join it") from None
    study.set_user_attr(_ATTR_OBJECTIVE, _objective_record(tune))
    study.set_user_attr(_ATTR_BASE, base)
    return study


def _sampler(tune: TuneConfig, seed: int) -> BaseSampler:
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


def _pruner(tune: TuneConfig, epochs: int) -> optuna.pruners.BasePruner:
    p = tune.pruner
    if tune.k_folds is not None or p.name == "none":  # a k-fold score has no per-epoch curve
        return optuna.pruners.NopPruner()
    if p.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    return optuna.pruners.HyperbandPruner(min_resource=p.min_resource, max_resource=max(epochs, p.min_resource),
                                          reduction_factor=p.reduction_factor)


# ----------------------------------------------------------------------------- the objective

def _finite_or_none(value: Any) -> Any:
    return value if not isinstance(value, float) or math.isfinite(value) else None


def _objective(tune: TuneConfig, base: dict[str, Any], trials_dir: Path) -> Callable[[optuna.Trial], float]:
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
            trial.set_user_attr("cv_mean", {k: _finite_or_none(v) for k, v in cv.mean.items()})
            trial.set_user_attr("cv_std", {k: _finite_or_none(v) for k, v in cv.std.items()})
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
        trial.set_user_attr("metrics", {k: _finite_or_none(v) for k, v in outcome.metrics.items()})
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


def _progress_line(stream: TextIO, tune: TuneConfig, space_keys: list[str]) -> Callable:
    def report(study: optuna.Study, trial: FrozenTrial) -> None:
        seconds = trial.duration.total_seconds() if trial.duration else 0.0
        if trial.state == TrialState.COMPLETE:
            outcome = f"{tune.metric} {trial.value:.4g}"
        elif trial.state == TrialState.PRUNED:
            outcome = f"pruned after epoch {len(trial.intermediate_values)}"
        else:
            outcome = trial.state.name.lower() + (f" ({trial.user_attrs['failure']})"
                                                  if "failure" in trial.user_attrs else "")
        params = decode_params(tune.space, trial.params)
        shown = "  ".join(f"{k}={short_value(params[k])}" for k in space_keys if k in params)
        stream.write(f"trial {trial.number}: {outcome} ({seconds:.1f} s)  {shown}\n")
        stream.flush()

    return report


def short_value(value: Any) -> str:
    """A sampled value as progress lines and summaries show it.

    Example:
        >>> short_value(0.0312345), short_value([16, 16]), short_value("adam")
        ('0.03123', '[16, 16]', '"adam"')
    """
    return f"{value:.4g}" if isinstance(value, float) else json.dumps(value)


# ----------------------------------------------------------------------------- outputs

def trial_rows(study: optuna.Study, tune: TuneConfig) -> list[dict[str, Any]]:
    """Every trial of the study as a JSON-able dict (what ``trials.json`` holds)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({
            "number": t.number, "state": t.state.name.lower(),
            # Optuna keeps a pruned trial's last reported value as its value: not the objective.
            "value": _finite_or_none(t.value) if t.state == TrialState.COMPLETE else None,
            "params": decode_params(tune.space, t.params),
            "duration_s": t.duration.total_seconds() if t.duration else None,
            "start": t.datetime_start.isoformat() if t.datetime_start else None,
            "intermediate": [[step, _finite_or_none(v)] for step, v in sorted(t.intermediate_values.items())],
            **{k: t.user_attrs[k] for k in ("run_dir", "epochs_run", "stop_reason", "failure", "worker", "cv_mean")
               if k in t.user_attrs},
        })
    return rows


def _best(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


def _write_outputs(study: optuna.Study, tune: TuneConfig, url: str,
                   out_dir: Path) -> tuple[dict[str, Path], FrozenTrial | None]:
    """Write trials.json, best_config.yaml (once a trial completed) and report.html."""
    from dlforge.tune.report import write_tune_report

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(study, tune)
    files = {"trials": out_dir / "trials.json", "report": out_dir / "report.html"}
    atomic_write(files["trials"], json.dumps(rows, indent=2).encode())
    best = _best(study)
    best_yaml = None
    if best is not None:
        config = best.user_attrs.get("config") or trial_raw(study.user_attrs[_ATTR_BASE],
                                                             decode_params(tune.space, best.params))
        validate_config(config)
        header = (f"# Best trial {best.number} of study {study.study_name!r}: {tune.metric} = {best.value:.6g}\n"
                  f"# Train it with: dlforge train best_config.yaml\n")
        best_yaml = yaml.safe_dump(json.loads(json.dumps(config)), sort_keys=False)
        files["best_config"] = out_dir / "best_config.yaml"
        atomic_write(files["best_config"], (header + best_yaml).encode())
    write_tune_report(study, tune, rows, files["report"], storage=display_url(url), best_config_yaml=best_yaml)
    return files, best


# ----------------------------------------------------------------------------- entry points

def run_tune(
    cfg_raw: dict[str, Any], *, runs_dir: str | Path = "runs", storage: str | None = None, resume: bool = False,
    n_trials: int | None = None, timeout: float | None = None, progress: TextIO | None = None,
    out_dir: str | Path | None = None,
) -> TuneResult:
    """Tune the run config ``cfg_raw`` (a raw dict with a ``tune:`` section).

    ``storage`` (a SQLAlchemy URL) overrides ``tune.storage``; ``n_trials`` and
    ``timeout`` override the section's budget for this call (with ``resume`` they are
    trials *added* to the study); ``n_trials=0`` only creates the study (or, with
    ``resume``, rewrites the outputs from what all workers have stored so far).
    ``progress`` gets one line per finished trial.
    Outputs go to ``out_dir`` (default ``<runs_dir>/<study>-tune``).

    Example:
        >>> raw = {"name": "circles", "data": {"source": "circles", "n_samples": 200},
        ...        "model": {"arch": "mlp", "hidden": [16]}, "train": {"epochs": 3},
        ...        "tune": {"metric": "val_accuracy", "n_trials": 4,
        ...                 "space": {"optim.lr": {"type": "float", "low": 1e-4, "high": 0.3, "log": True}}}}
        >>> run_tune(raw, runs_dir="runs").best_params  # doctest: +SKIP
        {'optim.lr': 0.054}
    """
    if n_trials is not None and n_trials < 0:
        raise ConfigError(f"n_trials is {n_trials}", hint="pass 0 or more trials to run")
    base = copy.deepcopy(cfg_raw)
    if not isinstance(base, dict):
        raise ConfigError("the config must be a YAML mapping of sections (name, seed, data, model, ..., tune)")
    tune = parse_tune(base.pop("tune", None))
    cfg = validate_config(base)
    check_space(base, tune.space)
    if tune.sampler.name == "grid":
        grid_space(tune.space)  # fail on a non-grid space before touching the storage
    check_before_trials(cfg, base, tune)

    runs_dir = Path(runs_dir)
    name = tune.study_name or cfg.name
    url = storage or tune.storage or default_storage(runs_dir, cfg.name)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our progress lines replace optuna's
    try:
        rdb = open_storage(url)
        study = _open_study(tune, base, rdb, name, url, resume, _sampler(tune, cfg.seed),
                            _pruner(tune, cfg.train.epochs))
        budget = n_trials if n_trials is not None else tune.n_trials
        if tune.sampler.name == "grid":  # without a cap the exhausted grid re-runs a point, then stops
            size = math.prod(len(v) for v in grid_space(tune.space).values())
            taken = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
                        for t in study.get_trials(deepcopy=False))
            budget = max(0, min(budget, size - taken))
        if budget > 0:
            callbacks = [_progress_line(progress, tune, list(tune.space))] if progress is not None else []
            study.optimize(_objective(tune, base, runs_dir / f"{name}-trials"), n_trials=budget,
                           timeout=timeout if timeout is not None else tune.timeout, callbacks=callbacks)
        elif progress is not None:
            why = "the grid is exhausted" if tune.sampler.name == "grid" and n_trials != 0 else "n_trials is 0"
            progress.write(f"study {name!r}: no trial to run ({why}); outputs rewritten\n")
        out = Path(out_dir) if out_dir is not None else runs_dir / f"{name}-tune"
        files, best = _write_outputs(study, tune, url, out)
    finally:
        optuna.logging.set_verbosity(verbosity)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    best_config = best.user_attrs.get("config", {}) if best is not None else {}
    return TuneResult(
        study_name=name, storage=display_url(url), best_value=best.value if best else None,
        best_params=decode_params(tune.space, best.params) if best else {}, best_config=best_config,
        n_complete=states.count(TrialState.COMPLETE), n_pruned=states.count(TrialState.PRUNED),
        n_failed=states.count(TrialState.FAIL), out_dir=out, best_trial=best.number if best else None, files=files,
    )


def result_dict(result: TuneResult) -> dict[str, Any]:
    """A JSON-able form of a :class:`TuneResult` (for ``--json`` output)."""
    out = asdict(result)
    out["out_dir"] = str(result.out_dir)
    out["files"] = {k: str(v) for k, v in result.files.items()}
    return out
