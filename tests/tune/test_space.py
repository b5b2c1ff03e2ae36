"""The tune: section and its search space: each type becomes the matching Optuna
distribution (Optuna's own distribution objects are the reference), list-valued choices
survive an RDB storage, and every bad section is a ConfigError that names its key.
No training here."""

from __future__ import annotations

import doctest

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

import dlforge.tune.space as space_module
from dlforge.errors import ConfigError
from dlforge.tune.space import (
    CategoricalParam, check_space, decode_params, grid_space, parse_tune, suggest, trial_raw,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

BASE = {"name": "t", "data": {"source": "iris"}, "model": {"arch": "mlp", "hidden": [8]},
        "optim": {"name": "adam", "lr": 0.01}, "train": {"epochs": 2}}
SPACE = {
    "optim.lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    "model.dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1},
    "train.batch_size": {"type": "categorical", "choices": [16, 32, 64]},
    "model.hidden": {"type": "categorical", "choices": [[16], [32, 32]]},
    "train.epochs": {"type": "int", "low": 2, "high": 8, "step": 2},
    "optim.momentum": {"type": "float", "low": 0.5, "high": 0.99},
}


def tune_section(**overrides):
    return {"metric": "val_accuracy", "space": SPACE, **overrides}


def test_each_type_maps_to_its_optuna_distribution() -> None:
    tune = parse_tune(tune_section())
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    values = suggest(trial, tune.space)
    assert trial.distributions == {
        "optim.lr": FloatDistribution(1e-4, 1e-1, log=True),
        "model.dropout": FloatDistribution(0.0, 0.5, step=0.1),
        "train.batch_size": CategoricalDistribution([16, 32, 64]),
        "model.hidden": CategoricalDistribution(["[16]", "[32, 32]"]),
        "train.epochs": IntDistribution(2, 8, step=2),
        "optim.momentum": FloatDistribution(0.5, 0.99),
    }
    assert values["model.hidden"] in ([16], [32, 32])  # the config value, not its JSON text
    assert 1e-4 <= values["optim.lr"] <= 1e-1 and values["train.epochs"] in (2, 4, 6, 8)


def test_fixed_trial_values_come_back_as_config_values() -> None:
    tune = parse_tune(tune_section())
    fixed = {"optim.lr": 0.003, "model.dropout": 0.2, "train.batch_size": 32, "model.hidden": "[32, 32]",
             "train.epochs": 4, "optim.momentum": 0.9}
    values = suggest(optuna.trial.FixedTrial(fixed), tune.space)
    assert values == {**fixed, "model.hidden": [32, 32]}
    raw = trial_raw(BASE, values)
    assert raw["model"] == {"arch": "mlp", "hidden": [32, 32], "dropout": 0.2}
    assert raw["optim"]["lr"] == 0.003 and raw["train"] == {"epochs": 4, "batch_size": 32}
    assert BASE["model"] == {"arch": "mlp", "hidden": [8]}  # the base is copied, not changed


def test_list_choices_survive_an_rdb_storage() -> None:
    tune = parse_tune(tune_section(space={"model.hidden": {"type": "categorical", "choices": [[8], [16, 16], 4]}}))
    study = optuna.create_study(storage="sqlite:///:memory:", sampler=optuna.samplers.GridSampler(
        grid_space(tune.space), seed=0))
    seen = []
    study.optimize(lambda t: seen.append(suggest(t, tune.space)["model.hidden"]) or 0.0, n_trials=3)
    stored = [t.params["model.hidden"] for t in study.trials]
    assert sorted(stored) == sorted(["[8]", "[16, 16]", "4"])  # JSON text in the storage
    assert sorted(map(str, seen)) == sorted(["[8]", "[16, 16]", "4"])
    assert [decode_params(tune.space, t.params)["model.hidden"] for t in study.trials] == seen


def test_scalar_choices_are_stored_as_is() -> None:
    param = CategoricalParam(type="categorical", choices=["relu", "tanh", None, True])
    assert not param.as_json and param.encoded() == ["relu", "tanh", None, True]
    assert param.decode("tanh") == "tanh"


@pytest.mark.parametrize("metric, direction", [
    ("val_loss", "minimize"), ("val_accuracy", "maximize"), ("test_rmse", "minimize"),
    ("val_f1_macro", "maximize"), ("test_r2", "maximize"), ("val_roc_auc", "maximize"),
])
def test_direction_follows_the_metric_name(metric: str, direction: str) -> None:
    assert parse_tune(tune_section(metric=metric)).resolved_direction() == direction


def test_explicit_direction_wins_and_defaults_are_documented_ones() -> None:
    tune = parse_tune({"metric": "val_loss", "direction": "maximize", "space": SPACE})
    assert tune.resolved_direction() == "maximize"
    tune = parse_tune({"space": SPACE, "pruner": "hyperband", "sampler": "random"})
    assert (tune.metric, tune.n_trials, tune.timeout, tune.k_folds, tune.storage) == ("val_loss", 20, None, None, None)
    assert tune.sampler.name == "random" and tune.pruner.name == "hyperband" and tune.pruner.reduction_factor == 3
    assert parse_tune({"space": SPACE}).sampler.name == "tpe" and parse_tune({"space": SPACE}).pruner.name == "median"


@pytest.mark.parametrize("section, named", [
    ({"metric": "val_loss", "space": {"optim.lr": {"type": "uniform", "low": 0, "high": 1}}}, "tune.space.optim.lr.type"),
    ({"metric": "val_loss", "space": {"optim.lr": {"low": 0, "high": 1}}}, "tune.space.optim.lr needs a type"),
    ({"metric": "val_loss", "space": {"optim.lr": {"type": "float", "lo": 0.1, "high": 1}}}, "tune.space.optim.lr.lo"),
    ({"metric": "val_loss", "space": {"optim.lr": {"type": "float", "low": 1, "high": 0.1}}}, "tune.space.optim.lr"),
    ({"metric": "val_loss", "space": {"optim.lr": {"type": "float", "low": 0, "high": 1, "log": True}}}, "low > 0"),
    ({"metric": "val_loss", "space": {"train.epochs": {"type": "int", "low": 1, "high": 9, "step": 2, "log": True}}},
     "tune.space.train.epochs"),
    ({"metric": "val_loss", "space": {"model.hidden": {"type": "categorical", "choices": []}}},
     "tune.space.model.hidden.choices"),
    ({"metric": "val_loss", "space": {"model.hidden": {"type": "categorical", "choices": [[8], [8]]}}}, "distinct"),
    ({"metric": "val_loss", "space": {}}, "tune.space"),
    ({"metric": "val_loss", "trials": 5, "space": SPACE}, "unknown key 'tune.trials'"),
    ({"metric": "val_loss", "sampler": "bayes", "space": SPACE}, "tune.sampler.name"),
    ({"metric": "val_loss", "pruner": {"name": "median", "patience": 2}, "space": SPACE}, "tune.pruner.patience"),
    ({"metric": "cv_accuracy", "space": SPACE}, "tune.metric"),
    ({"metric": "val_accuracy", "k_folds": 3, "space": SPACE}, "cv_<metric>"),
    ({"metric": "accuracy", "space": SPACE}, "tune.metric"),
    ({"metric": "val_widget", "space": SPACE}, "tune.direction"),
    ({"metric": "val_loss", "space": {"tune.n_trials": {"type": "int", "low": 1, "high": 2}}}, "tune.space.tune.n_trials"),
])
def test_bad_sections_name_their_key(section: dict, named: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_tune(section)
    assert named in str(info.value)


def test_unknown_keys_list_the_allowed_ones() -> None:
    with pytest.raises(ConfigError) as info:
        parse_tune({"space": {"optim.lr": {"type": "int", "low": 1, "high": 3, "stepp": 1}}})
    assert "tune.space.optim.lr.stepp" in str(info.value) and "low, high, step, log" in str(info.value)
    with pytest.raises(ConfigError, match="no tune: section"):
        parse_tune(None)


def test_space_values_that_make_an_invalid_config_fail_before_any_trial() -> None:
    good = parse_tune(tune_section()).space
    check_space(BASE, good)  # every end point and choice is a valid config
    for key, param, bad in [
        ("optim.lr", {"type": "float", "low": 0.0, "high": 0.1}, "0.0"),
        ("train.batch_size", {"type": "categorical", "choices": [0, 32]}, "0"),
        ("optim.name", {"type": "categorical", "choices": ["adam", "lion"]}, "'lion'"),
        ("train.epochs_typo", {"type": "int", "low": 1, "high": 3}, "train.epochs_typo"),
    ]:
        with pytest.raises(ConfigError) as info:
            check_space(BASE, parse_tune({"space": {key: param}}).space)
        assert f"tune.space.{key}" in str(info.value) and bad in str(info.value)
    with pytest.raises(ConfigError, match=r"tune.space.optim.lr.x: optim.lr is not a section"):
        check_space(BASE, parse_tune({"space": {"optim.lr.x": {"type": "int", "low": 1, "high": 2}}}).space)


def test_grid_needs_explicit_values() -> None:
    tune = parse_tune(tune_section(space={
        "train.batch_size": {"type": "categorical", "choices": [16, 32]},
        "train.epochs": {"type": "int", "low": 1, "high": 5, "step": 2}}))
    assert grid_space(tune.space) == {"train.batch_size": [16, 32], "train.epochs": [1, 3, 5]}
    for key, param in [("optim.lr", {"type": "float", "low": 1e-3, "high": 1e-1}),
                       ("model.hidden_size", {"type": "int", "low": 8, "high": 64, "log": True})]:
        with pytest.raises(ConfigError, match=f"tune.space.{key}: the grid sampler needs explicit values"):
            grid_space(parse_tune({"space": {key: param}}).space)


def test_doctests() -> None:
    assert doctest.testmod(space_module, optionflags=doctest.ELLIPSIS).failed == 0
