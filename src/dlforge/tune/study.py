"""Run an Optuna study over a run config: what ``dlforge tune CONFIG.yaml`` does.

Each trial samples the ``tune.space`` keys, trains the resulting config with
:func:`dlforge.pipeline.train_run` (or scores it with :func:`cross_validate` when
``tune.k_folds`` is set) and returns ``tune.metric``. :class:`PruningCallback` reports
the metric after every epoch, so a median or Hyperband pruner can stop a trial that is
behind the others at the same epoch.

Storage is any SQLAlchemy URL (default ``sqlite:///<runs_dir>/<name>-tune.db``).
``workers=N`` (``--workers N``) runs the trials in N local processes
(:mod:`~dlforge.tune.workers`); workers on many machines share one study through
PostgreSQL: start the first command plainly (it creates the study), the others, on any
machine, with the same storage URL and ``resume=True`` (``--resume``), which joins the
existing study; ``multi_host=True`` (``--multi-host``) refuses SQLite for such a study. A study remembers its objective and base config; joining or
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
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import optuna
import yaml
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from dlforge.config import flat_config, validate_config
from dlforge.errors import ConfigError
from dlforge.train.state_io import atomic_write
from dlforge.tune.checks import check_before_trials
from dlforge.tune.objective import (  # noqa: F401 (PruningCallback, TrialSeededSampler, short_value: re-exported)
    PruningCallback, TrialSeededSampler, finite_or_none, make_objective, make_pruner, make_sampler,
    progress_callback, short_value,
)
from dlforge.tune.storage import default_storage, display_url, open_storage  # noqa: F401 (re-exported)
from dlforge.tune.space import TuneConfig, check_space, decode_params, grid_space, parse_tune, trial_raw
from dlforge.tune.workers import WorkerSpec, check_workers, run_workers

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
    worker_failures: list[str] = field(default_factory=list)  # --workers N: one message per failed worker


# ----------------------------------------------------------------------------- study set-up

def _objective_record(tune: TuneConfig) -> dict[str, Any]:
    return {"metric": tune.metric, "direction": tune.resolved_direction(), "k_folds": tune.k_folds,
            "space": {k: v.model_dump(mode="json") for k, v in tune.space.items()}}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ (or exist on one side only)."""
    a, b = flat_config(old), flat_config(new)
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


# ----------------------------------------------------------------------------- outputs

def trial_rows(study: optuna.Study, tune: TuneConfig) -> list[dict[str, Any]]:
    """Every trial of the study as a JSON-able dict (what ``trials.json`` holds)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({
            "number": t.number, "state": t.state.name.lower(),
            # Optuna keeps a pruned trial's last reported value as its value: not the objective.
            "value": finite_or_none(t.value) if t.state == TrialState.COMPLETE else None,
            "params": decode_params(tune.space, t.params),
            "duration_s": t.duration.total_seconds() if t.duration else None,
            "start": t.datetime_start.isoformat() if t.datetime_start else None,
            "intermediate": [[step, finite_or_none(v)] for step, v in sorted(t.intermediate_values.items())],
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
    out_dir: str | Path | None = None, workers: int = 1, multi_host: bool = False,
) -> TuneResult:
    """Tune the run config ``cfg_raw`` (a raw dict with a ``tune:`` section).

    ``storage`` (a SQLAlchemy URL) overrides ``tune.storage``; ``n_trials`` and
    ``timeout`` override the section's budget for this call (with ``resume`` they are
    trials *added* to the study); ``n_trials=0`` only creates the study (or, with
    ``resume``, rewrites the outputs from what all workers have stored so far).
    ``progress`` gets one line per finished trial.
    Outputs go to ``out_dir`` (default ``<runs_dir>/<study>-tune``).

    ``workers=N`` runs the trials in N local processes that together run the call's
    ``n_trials`` (see :mod:`~dlforge.tune.workers`; outputs are still written once, here).
    ``multi_host=True`` says workers on other machines join this study (with
    ``resume=True`` and the same ``storage``): a SQLite storage is then refused.

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
    check_workers(workers, url, multi_host=multi_host)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our progress lines replace optuna's
    try:
        rdb = open_storage(url)
        study = _open_study(tune, base, rdb, name, url, resume, make_sampler(tune, cfg.seed),
                            make_pruner(tune, cfg.train.epochs))
        budget = n_trials if n_trials is not None else tune.n_trials
        if tune.sampler.name == "grid":  # without a cap the exhausted grid re-runs a point, then stops
            size = math.prod(len(v) for v in grid_space(tune.space).values())
            taken = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
                        for t in study.get_trials(deepcopy=False))
            budget = max(0, min(budget, size - taken))
        timeout = timeout if timeout is not None else tune.timeout
        failures: list[str] = []
        if budget > 0 and workers > 1:
            spec = WorkerSpec(url=url, study_name=name, tune=tune, base=base, seed=cfg.seed, epochs=cfg.train.epochs,
                              trials_dir=(runs_dir / f"{name}-trials").resolve(), budget=budget,
                              deadline=None if timeout is None else time.time() + timeout,
                              threads=max(1, (os.cpu_count() or 1) // workers))
            failures = run_workers(workers, spec, progress)
        elif budget > 0:
            callbacks = [progress_callback(lambda line: (progress.write(line), progress.flush()), tune)
                         ] if progress is not None else []
            study.optimize(make_objective(tune, base, runs_dir / f"{name}-trials"), n_trials=budget,
                           timeout=timeout, callbacks=callbacks)
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
        worker_failures=failures,
    )


def result_dict(result: TuneResult) -> dict[str, Any]:
    """A JSON-able form of a :class:`TuneResult` (for ``--json`` output)."""
    out = asdict(result)
    out["out_dir"] = str(result.out_dir)
    out["files"] = {k: str(v) for k, v in result.files.items()}
    return out
