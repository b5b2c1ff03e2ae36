"""The ``tune:`` section of a run config and its search space as Optuna suggest calls.

A search space maps any dotted config key to a distribution::

    space:
      optim.lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}   # trial.suggest_float
      model.hidden_layers: {type: int, low: 1, high: 4}                # trial.suggest_int
      train.batch_size: {type: categorical, choices: [16, 32, 64]}     # trial.suggest_categorical
      model.channels: {type: categorical, choices: [[16, 32], [32, 64]]}

Optuna's storage holds only ``None``, bools, ints, floats and strings as categorical
choices. A categorical parameter whose choices are all such scalars is stored as is; one
with any list or mapping among its choices (``model.channels`` above) is stored as the
JSON text of each choice (``"[16, 32]"``), so the trials table still reads naturally;
:meth:`CategoricalParam.decode` turns a stored value back into the Python object.

A trial's config is the base config (without ``tune``) with the sampled values set at
their keys, validated like any run config (:func:`trial_raw`, :func:`check_space`).

Example:
    >>> import optuna
    >>> tune = parse_tune({"metric": "val_accuracy", "space": {
    ...     "optim.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
    ...     "model.hidden": {"type": "categorical", "choices": [[8], [16, 16]]}}})
    >>> tune.resolved_direction()
    'maximize'
    >>> suggest(optuna.trial.FixedTrial({"optim.lr": 0.01, "model.hidden": "[16, 16]"}), tune.space)
    {'optim.lr': 0.01, 'model.hidden': [16, 16]}
"""

from __future__ import annotations

import copy
import json
import math
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dlforge.config import validate_config
from dlforge.errors import ConfigError

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("none", "median", "hyperband")
# Words in a metric's name that say which way is better (checked in this order).
_MAXIMIZE_WORDS = ("accuracy", "f1", "auc", "precision", "recall", "r2")
_MINIMIZE_WORDS = ("loss", "mse", "rmse", "mae", "ece", "error", "perplexity")
GRID_MAX_POINTS = 10_000  # a grid larger than this is a mistake, not a plan


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FloatParam(_Strict):
    """``trial.suggest_float(key, low, high, step=step, log=log)``."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> FloatParam:
        if not self.low <= self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0 (got {self.low})")
        if self.log and self.step is not None:
            raise ValueError("step and log: true cannot be combined")
        return self


class IntParam(_Strict):
    """``trial.suggest_int(key, low, high, step=step, log=log)``."""

    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> IntParam:
        if not self.low <= self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and self.low < 1:
            raise ValueError(f"log: true needs low >= 1 (got {self.low})")
        if self.log and self.step != 1:
            raise ValueError("step and log: true cannot be combined")
        return self


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


class CategoricalParam(_Strict):
    """``trial.suggest_categorical(key, choices)``; list or mapping choices go through JSON."""

    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> CategoricalParam:
        try:
            texts = [json.dumps(c, sort_keys=True) for c in self.choices]
        except (TypeError, ValueError) as err:
            raise ValueError(f"choices must be plain YAML values ({err})") from None
        if len(set(texts)) != len(texts):
            raise ValueError("choices must be distinct")
        return self

    @property
    def as_json(self) -> bool:
        """Whether the choices are stored as JSON text (some choice is a list or mapping)."""
        return not all(_is_scalar(c) for c in self.choices)

    def encoded(self) -> list[Any]:
        """The choices as Optuna stores them."""
        return [json.dumps(c) for c in self.choices] if self.as_json else list(self.choices)

    def decode(self, stored: Any) -> Any:
        """A stored value back as the config value (``"[16, 32]"`` -> ``[16, 32]``)."""
        return json.loads(stored) if self.as_json else stored


Param = Annotated[Union[FloatParam, IntParam, CategoricalParam], Field(discriminator="type")]
PARAM_TYPES: dict[str, type[BaseModel]] = {"float": FloatParam, "int": IntParam, "categorical": CategoricalParam}


class SamplerConfig(_Strict):
    """``tpe`` (default), ``random`` or ``grid``; YAML may say just ``sampler: random``."""

    name: Literal["tpe", "random", "grid"] = "tpe"
    n_startup_trials: int = Field(10, ge=0, description="tpe: random trials before the model takes over")

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class PrunerConfig(_Strict):
    """``median`` (default), ``hyperband`` or ``none``; YAML may say just ``pruner: hyperband``."""

    name: Literal["none", "median", "hyperband"] = "median"
    n_startup_trials: int = Field(5, ge=0, description="median: finished trials before any pruning")
    n_warmup_steps: int = Field(0, ge=0, description="median: epochs of each trial never pruned")
    min_resource: int = Field(1, ge=1, description="hyperband: epochs every trial gets")
    reduction_factor: int = Field(3, ge=2, description="hyperband: 1/n of the trials go on at each rung")

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class TuneConfig(_Strict):
    """The ``tune:`` section: objective, budget, search strategy, storage and space."""

    metric: str = "val_loss"
    direction: Literal["maximize", "minimize"] | None = None
    n_trials: int = Field(20, ge=1)
    timeout: float | None = Field(None, gt=0, description="seconds; no new trial starts after it")
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)
    k_folds: int | None = Field(None, ge=2, description="objective: mean of k folds' cv_<metric>")
    storage: str | None = None
    study_name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    space: dict[str, Param] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_metric(self) -> TuneConfig:
        if self.k_folds is not None and not self.metric.startswith("cv_"):
            raise ValueError(f"tune.metric is {self.metric!r}, but with k_folds the objective is a fold mean, "
                             "named cv_<metric> (e.g. cv_accuracy)")
        if self.k_folds is None and not self.metric.startswith(("val_", "test_")):
            raise ValueError(f"tune.metric is {self.metric!r}; it must be a val_* or test_* metric of the run "
                             "(e.g. val_loss, val_accuracy), or cv_* with k_folds")
        return self

    def resolved_direction(self) -> str:
        """``direction``, or the one the metric's name implies (``loss`` -> minimize)."""
        if self.direction is not None:
            return self.direction
        name = self.metric.split("_", 1)[1]
        if any(word in name for word in _MAXIMIZE_WORDS):
            return "maximize"
        if any(word in name for word in _MINIMIZE_WORDS):
            return "minimize"
        raise ConfigError(f"tune.direction is not set and the metric {self.metric!r} does not say which way is better",
                          hint="set tune.direction: maximize or minimize")


def _explain(err: ValidationError) -> ConfigError:
    """A pydantic error as a ConfigError whose paths start at ``tune.``."""
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        owner: type[BaseModel] = TuneConfig
        if loc[:1] == ["space"] and len(loc) >= 3 and loc[2] in PARAM_TYPES:
            owner = PARAM_TYPES[loc.pop(2)]  # drop the discriminator Pydantic puts in the path
        elif loc[:1] in (["sampler"], ["pruner"]):
            owner = SamplerConfig if loc[0] == "sampler" else PrunerConfig
        path = ".".join(["tune", *loc])
        kind, got = e["type"], e.get("input")
        if kind == "extra_forbidden":
            lines.append(f"unknown key {path!r}; allowed keys here: {', '.join(owner.model_fields)}")
        elif kind == "missing":
            lines.append(f"{path} is required")
        elif kind == "union_tag_not_found":
            lines.append(f"{path} needs a type: {', '.join(PARAM_TYPES)}")
        elif kind == "union_tag_invalid":
            lines.append(f"{path}.type is {got.get('type')!r}; allowed: {', '.join(PARAM_TYPES)}")
        elif not loc:  # a check across keys: its message names them
            lines.append(e["msg"].removeprefix("Value error, "))
        else:
            msg = e["msg"].removeprefix("Value error, ")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"{path}: {msg}{shown}")
    body = lines[0] if len(lines) == 1 else "".join(f"\n  - {line}" for line in lines)
    return ConfigError(f"invalid tune section: {body}", hint="fix the keys named above in the YAML or with --set")


def parse_tune(raw: Any) -> TuneConfig:
    """Validate the raw ``tune:`` mapping into a :class:`TuneConfig`, or raise a ConfigError.

    Example:
        >>> parse_tune({"space": {"optim.lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": True}}}).n_trials
        20
    """
    if raw is None:
        raise ConfigError("the config has no tune: section",
                          hint="add tune: {metric: val_loss, space: {optim.lr: {type: float, low: 1.0e-4, "
                               "high: 1.0e-1, log: true}}}")
    if not isinstance(raw, dict):
        raise ConfigError(f"tune must be a mapping of keys, got {type(raw).__name__}",
                          hint="write metric, n_trials, space, ... under tune:")
    try:
        tune = TuneConfig.model_validate(raw)
    except ValidationError as err:
        raise _explain(err) from None
    for key in tune.space:
        if not key or key.split(".")[0] == "tune" or "" in key.split("."):
            raise ConfigError(f"tune.space.{key} is not a config key to tune",
                              hint="use dotted keys of the run config, e.g. optim.lr or model.dropout")
    tune.resolved_direction()  # fail now, not after the first trial
    return tune


def suggest(trial: Any, space: dict[str, Any]) -> dict[str, Any]:
    """Sample every key of ``space`` from an Optuna trial; values are config values.

    Example:
        >>> import optuna
        >>> space = {"train.batch_size": IntParam(type="int", low=16, high=64, step=16)}
        >>> suggest(optuna.trial.FixedTrial({"train.batch_size": 32}), space)
        {'train.batch_size': 32}
    """
    values: dict[str, Any] = {}
    for key, p in space.items():
        if isinstance(p, FloatParam):
            values[key] = trial.suggest_float(key, p.low, p.high, step=p.step, log=p.log)
        elif isinstance(p, IntParam):
            values[key] = trial.suggest_int(key, p.low, p.high, step=p.step, log=p.log)
        else:
            values[key] = p.decode(trial.suggest_categorical(key, p.encoded()))
    return values


def decode_params(space: dict[str, Any], stored: dict[str, Any]) -> dict[str, Any]:
    """A trial's stored params (``FrozenTrial.params``) as config values."""
    return {k: space[k].decode(v) if isinstance(space.get(k), CategoricalParam) else v for k, v in stored.items()}


def grid_space(space: dict[str, Any]) -> dict[str, list[Any]]:
    """The ``GridSampler`` search space: categorical choices and (linear) integer ranges.

    Example:
        >>> grid_space({"model.hidden": CategoricalParam(type="categorical", choices=[[8], [16]]),
        ...             "train.epochs": IntParam(type="int", low=2, high=6, step=2)})
        {'model.hidden': ['[8]', '[16]'], 'train.epochs': [2, 4, 6]}
    """
    grid: dict[str, list[Any]] = {}
    for key, p in space.items():
        if isinstance(p, CategoricalParam):
            grid[key] = p.encoded()
        elif isinstance(p, IntParam) and not p.log:
            grid[key] = list(range(p.low, p.high + 1, p.step))
        else:
            raise ConfigError(f"tune.space.{key}: the grid sampler needs explicit values, not a "
                              f"{'log-scaled ' if p.log else ''}{p.type} range",
                              hint="write it as {type: categorical, choices: [...]}, or use sampler: tpe or random")
    size = math.prod(len(v) for v in grid.values())
    if size > GRID_MAX_POINTS:
        raise ConfigError(f"the grid has {size} points (more than {GRID_MAX_POINTS})",
                          hint="use fewer choices, or sampler: tpe, which needs no grid")
    return grid


def trial_raw(base: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of the raw config ``base`` with each dotted key set to its value.

    Example:
        >>> trial_raw({"optim": {"name": "adam"}}, {"optim.lr": 0.01, "model.hidden": [8]})
        {'optim': {'name': 'adam', 'lr': 0.01}, 'model': {'hidden': [8]}}
    """
    raw = copy.deepcopy(base)
    for key, value in values.items():
        parts = key.split(".")
        node = raw
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"tune.space.{key}: {'.'.join(parts[: i + 1])} is not a section of the config",
                                  hint="name a key inside a section, e.g. optim.lr")
            node = child
        node[parts[-1]] = copy.deepcopy(value)
    return raw


def candidate_values(param: Any) -> list[Any]:
    """The values :func:`check_space` tries: both ends of a range, every choice."""
    if isinstance(param, CategoricalParam):
        return list(param.choices)
    return [param.low, param.high]


def check_space(base: dict[str, Any], space: dict[str, Any]) -> None:
    """Fail before any trial when a space value would make an invalid run config.

    Each key is tried alone at each of its :func:`candidate_values`, the other keys left
    at the base config's values. ``model.*`` values are checked against the model family
    later (they need the data's shapes; see :mod:`dlforge.tune.study`).

    Example:
        >>> base = {"data": {"source": "iris"}, "model": {"arch": "mlp"}}
        >>> check_space(base, {"optim.lr": FloatParam(type="float", low=0.0, high=0.1)})
        Traceback (most recent call last):
        ...
        dlforge.errors.ConfigError: tune.space.optim.lr: the value 0.0 makes an invalid config: ...
    """
    for key, param in space.items():
        for value in candidate_values(param):
            try:
                validate_config(trial_raw(base, {key: value}))
            except ConfigError as err:
                raise ConfigError(f"tune.space.{key}: the value {value!r} makes an invalid config: {err.message}",
                                  hint="narrow the range or fix the choices of this key") from None
