"""What a study checks before its first trial, so a bad space fails in seconds, not after hours.

Example:
    >>> from dlforge.config import validate_config
    >>> from dlforge.tune.space import parse_tune
    >>> base = {"data": {"source": "iris", "split": {"test": 0}}, "model": {"arch": "mlp"}}
    >>> tune = parse_tune({"metric": "test_accuracy", "space": {"optim.lr": {"type": "categorical", "choices": [0.1, 0.01]}}})
    >>> check_before_trials(validate_config(base), base, tune)
    Traceback (most recent call last):
    ...
    dlforge.errors.ConfigError: tune.metric is 'test_accuracy', but data.split.test is 0, so no run has a test split (set data.split.test above 0, or tune a metric of another split)
"""

from __future__ import annotations

from typing import Any

from dlforge.config import RunConfig
from dlforge.errors import ConfigError
from dlforge.models import config_from_spec
from dlforge.pipeline.data import load_data
from dlforge.tune.space import TuneConfig, candidate_values, trial_raw


def check_before_trials(cfg: RunConfig, base: dict[str, Any], tune: TuneConfig) -> None:
    """Raise the ConfigError a trial of ``tune`` over the config ``cfg`` (raw: ``base``)
    would hit: invalid ``model.*`` values, a metric of a split the runs do not keep, a
    pruner that cannot follow balanced bagging."""
    _check_model_values(cfg, base, tune)
    _check_metric_split(cfg, tune)
    _check_pruning(cfg, tune)


def _check_model_values(cfg: RunConfig, base: dict[str, Any], tune: TuneConfig) -> None:
    """``model.*`` values checked against the model family, with the data's shapes."""
    keys = [k for k in tune.space if k.startswith("model.")]
    if not keys or "pretrained" in cfg.model:
        return  # pretrained specs are completed from the weights' folder; train_run checks them
    prepared = load_data(cfg)
    sizes = {"input_shape": prepared.input_shape, "num_outputs": prepared.num_outputs}
    try:
        config_from_spec(cfg.model, **sizes)
    except ConfigError:
        return  # the base spec needs more than shapes (e.g. a vocabulary); the first trial will say
    for key in keys:
        for value in candidate_values(tune.space[key]):
            try:
                config_from_spec(trial_raw(base, {key: value})["model"], **sizes)
            except ConfigError as err:
                raise ConfigError(f"tune.space.{key}: the value {value!r} makes an invalid model: {err.message}",
                                  hint=err.hint or "fix the choices of this key") from None


def _check_metric_split(cfg: RunConfig, tune: TuneConfig) -> None:
    """A val_* or test_* objective needs that split: say so before the first trial."""
    split = tune.metric.split("_", 1)[0]
    if split not in ("val", "test") or any(k.startswith("data.split") or k == "data" for k in tune.space):
        return
    if getattr(cfg.data.split, split) == 0:
        raise ConfigError(f"tune.metric is {tune.metric!r}, but data.split.{split} is 0, so no run has a {split} split",
                          hint=f"set data.split.{split} above 0, or tune a metric of another split")


def _check_pruning(cfg: RunConfig, tune: TuneConfig) -> None:
    """A pruner follows one training curve per trial; balanced bagging has k of them."""
    tuned = any(k in ("data", "data.imbalance", "data.imbalance.bagging") for k in tune.space)
    if tune.k_folds is None and tune.pruner.name != "none" and (cfg.data.imbalance.bagging or tuned):
        raise ConfigError(f"tune.pruner {tune.pruner.name} stops a trial by its per-epoch curve, but "
                          "data.imbalance.bagging trains k members one after another, so a trial has no one curve",
                          hint="set tune.pruner: none, or remove data.imbalance.bagging")
