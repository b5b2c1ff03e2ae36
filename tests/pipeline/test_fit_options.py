"""One config-to-fit translation: every config feature reaches ``fit`` in every command that
trains from a config (train, cv, learning-curve, tune, balanced bagging), or the command
refuses it with a ConfigError that says why. Nothing is silently dropped.

``fit`` is spied on wherever a dlforge module holds it: the spy records what it was given,
trains one real epoch with it (so the feature truly trains) and then stops the command, so
each case costs one epoch on a tiny set, not a whole run.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

import dlforge.pipeline.crossval
import dlforge.pipeline.learning_curve
import dlforge.pipeline.run
import dlforge.train.bagging
import dlforge.tune.study
from dlforge.config import validate_config
from dlforge.errors import ConfigError
from dlforge.models import Ensemble
import dlforge.pipeline.fit_options as fit_options_module
from dlforge.pipeline.fit_options import class_remedies, config_callbacks, fit_options
from dlforge.pipeline.data import load_data
from dlforge.train import EarlyStopping, GradualUnfreezing
from dlforge.train.engine import fit as real_fit
from dlforge.train.losses import FocalLoss


class Reached(Exception):
    """Raised by the spy once fit has trained: the rest of the command is not under test."""


@dataclass
class Call:
    kwargs: dict[str, Any]
    train: Any
    frozen: list[str]  # parameter names with requires_grad False when fit started


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def calls(monkeypatch) -> list[Call]:
    """Every dlforge module's ``fit`` replaced by a recording one-epoch fit that then stops."""
    seen: list[Call] = []

    def spy(model, train, val=None, **kwargs):
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        seen.append(Call(kwargs, train, frozen))
        real_fit(model, train, val, **kwargs)
        raise Reached

    for name, module in list(sys.modules.items()):
        if name.startswith("dlforge.") and getattr(module, "fit", None) is real_fit:
            monkeypatch.setattr(module, "fit", spy)
    return seen


IRIS = {"source": "iris"}
MLP = {"arch": "mlp", "hidden": [8]}
BASE = {"name": "t", "seed": 0, "data": IRIS, "model": MLP, "optim": {"name": "adam", "lr": 0.01},
        "train": {"epochs": 1, "batch_size": 32, "device": "cpu", "gradient_monitor": False}}


def _callbacks(call: Call, kind: type) -> list:
    return [c for c in call.kwargs.get("callbacks", ()) if isinstance(c, kind)]


@dataclass
class Feature:
    sections: dict[str, dict]  # merged into BASE's sections
    reached: Callable[[Call], bool]  # what fit must have been given


FEATURES = {
    "augment": Feature({"data": {"augment": {"mixup": 0.2}}}, lambda c: c.kwargs.get("augment") is not None),
    "resampling": Feature({"data": {"source": "breast_cancer", "imbalance": {"method": "oversample"}}},
                          lambda c: len(set(torch.bincount(c.train.tensors[1]).tolist())) == 1),
    "sampler": Feature({"data": {"imbalance": {"sampler": "balanced"}}}, lambda c: c.kwargs.get("order") is not None),
    "focal_loss": Feature({"train": {"loss": {"name": "focal", "gamma": 2.0}}},
                          lambda c: isinstance(c.kwargs.get("loss"), FocalLoss)),
    "weighted_loss": Feature({"train": {"loss": {"name": "cross_entropy", "class_weights": "inverse"}}},
                             lambda c: getattr(c.kwargs.get("loss"), "weight", None) is not None),
    "label_smoothing": Feature({"train": {"loss": {"label_smoothing": 0.1}}},
                               lambda c: getattr(c.kwargs.get("loss"), "label_smoothing", 0) == 0.1),
    "freeze": Feature({"train": {"freeze": ["layers.0.*"]}},
                      lambda c: c.frozen == ["layers.0.0.weight", "layers.0.0.bias"]),
    "gradual_unfreezing": Feature({"train": {"freeze": ["layers.0.*"], "unfreeze_stages": [["layers.0.*"]]}},
                                  lambda c: len(_callbacks(c, GradualUnfreezing)) == 1 and len(c.frozen) == 2),
    "param_groups": Feature({"optim": {"param_groups": [{"pattern": "head.*", "lr_mult": 0.1}]}},
                            lambda c: c.kwargs["optim"].param_groups == [{"pattern": "head.*", "lr_mult": 0.1}]),
    "tbptt": Feature({"data": {"source": "sunspots", "window": 22}, "model": {"arch": "rnn", "hidden_size": 8},
                      "train": {"tbptt": [11, 11]}}, lambda c: tuple(c.kwargs.get("tbptt") or ()) == (11, 11)),
    "precision": Feature({"train": {"precision": "bf16"}}, lambda c: c.kwargs.get("precision") == "bf16"),
    "early_stopping": Feature({"train": {"early_stopping": {"patience": 1}}},
                              lambda c: [e.patience for e in _callbacks(c, EarlyStopping)] == [1]),
}

# Where a command cannot do what a feature asks, it says so (a regex of the message).
REFUSED = {
    ("tbptt", "cv"): "series data.*shuffled folds would train a forecaster on windows after",
    ("tbptt", "bagging"): "data.imbalance applies to classification",
    ("sampler", "bagging"): "sampler balanced does nothing with bagging",
    ("weighted_loss", "bagging"): "class_weights with data.imbalance.bagging would correct the imbalance twice",
}


def _raw(feature: Feature, bagging: bool = False) -> dict:
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    for section, values in feature.sections.items():
        raw[section] = values if section == "model" else {**raw[section], **values}
    if bagging:
        raw["data"]["imbalance"] = {**raw["data"].get("imbalance", {}), "bagging": 2}
    return raw


def _tune(raw: dict, tmp_path: Path, pruner: str = "median", metric: str = "val_loss") -> None:
    space = {"optim.lr": {"type": "categorical", "choices": [0.01]}}
    dlforge.tune.study.run_tune({**raw, "tune": {"metric": metric, "n_trials": 1, "pruner": pruner, "space": space}},
                                runs_dir=tmp_path, n_trials=1)


COMMANDS = {
    "train": lambda raw, tmp: dlforge.pipeline.run.train_run(validate_config(raw), runs_dir=tmp),
    "cv": lambda raw, tmp: dlforge.pipeline.crossval.cross_validate(validate_config(raw), k=2),
    "learning-curve": lambda raw, tmp: dlforge.pipeline.learning_curve.learning_curve(validate_config(raw), [60]),
    "tune": lambda raw, tmp: _tune(raw, tmp),
    "bagging": lambda raw, tmp: dlforge.pipeline.run.train_run(validate_config(raw), runs_dir=tmp),
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("feature", list(FEATURES))
def test_every_feature_reaches_fit_or_is_refused(feature: str, command: str, calls: list[Call], tmp_path) -> None:
    raw = _raw(FEATURES[feature], bagging=command == "bagging")
    refused = REFUSED.get((feature, command))
    if refused is not None:
        with pytest.raises(ConfigError, match=refused):
            COMMANDS[command](raw, tmp_path)
        assert calls == []  # refused before any training
        return
    with pytest.raises(Reached):
        COMMANDS[command](raw, tmp_path)
    assert len(calls) == 1 and FEATURES[feature].reached(calls[0]), calls[0].kwargs


@pytest.mark.parametrize("command", ["cv", "learning-curve", "tune"])
def test_bagging_trains_members_in_every_command(command: str, monkeypatch, tmp_path) -> None:
    """data.imbalance.bagging is honoured beyond train: each fold / size is an ensemble of
    members, each with the config's fit options and its own fresh callbacks."""
    members: list[Call] = []

    def spy(model, train, val=None, **kwargs):
        members.append(Call(kwargs, train, []))
        return real_fit(model, train, val, **kwargs)

    ensembles = []
    real_bagging = fit_options_module.bagging_fit
    monkeypatch.setattr(dlforge.train.bagging, "fit", spy)
    monkeypatch.setattr(fit_options_module, "bagging_fit",
                        lambda *a, **kw: ensembles.append(real_bagging(*a, **kw)) or ensembles[-1])
    raw = _raw(FEATURES["early_stopping"], bagging=True)
    if command == "tune":
        _tune(raw, tmp_path, pruner="none", metric="test_accuracy")  # an ensemble keeps no val history
    else:
        COMMANDS[command](raw, tmp_path)
    assert ensembles and all(isinstance(e, Ensemble) and len(e.members) == 2 for e, _ in ensembles)
    assert all(result.steps > 0 and result.history == [] for _, result in ensembles)
    assert len(members) == 2 * len(ensembles)
    stoppers = [_callbacks(m, EarlyStopping) for m in members]
    assert all(len(s) == 1 and s[0].patience == 1 for s in stoppers)
    assert len({id(s[0]) for s in stoppers}) == len(members)  # never shared between members


def test_tune_refuses_a_pruner_with_bagging(tmp_path) -> None:
    with pytest.raises(ConfigError, match="tune.pruner median .* no one curve"):
        _tune(_raw(FEATURES["augment"], bagging=True), tmp_path)
    assert not (tmp_path / "t-tune.db").exists()  # refused before the storage was touched


def test_tune_passes_its_pruning_callback_to_fit(calls: list[Call], tmp_path) -> None:
    with pytest.raises(Reached):
        _tune(_raw(FEATURES["augment"]), tmp_path)
    assert [type(c).__name__ for c in calls[0].kwargs["callbacks"]][-1] == "PruningCallback"


def test_fit_options_hold_every_fit_keyword_the_config_sets() -> None:
    cfg = validate_config({**BASE, "train": {**BASE["train"], "clip_grad_norm": 1.0, "clip_grad_value": 0.5,
                                             "accumulate": 2, "log_every_n_steps": 3}, "seed": 7})
    prepared = load_data(cfg)
    options = fit_options(cfg, prepared, class_remedies(cfg, prepared))
    assert {k: options[k] for k in ("epochs", "batch_size", "clip_grad_norm", "clip_grad_value", "accumulate",
                                    "precision", "device", "seed", "log_every_n_steps", "tbptt")} == {
        "epochs": 1, "batch_size": 32, "clip_grad_norm": 1.0, "clip_grad_value": 0.5, "accumulate": 2,
        "precision": "fp32", "device": "cpu", "seed": 7, "log_every_n_steps": 3, "tbptt": None}
    assert options["optim"] is cfg.optim and fit_options(cfg, prepared, class_remedies(cfg, prepared), seed=3)["seed"] == 3


def test_config_callbacks_record_only_into_a_run_directory(tmp_path) -> None:
    cfg = validate_config({**BASE, "train": {**BASE["train"], "gradient_monitor": True}})
    names = [type(c).__name__ for c in config_callbacks(cfg, has_val=True)]
    assert names == ["NanGuard", "EarlyStopping"]
    names = [type(c).__name__ for c in config_callbacks(cfg, has_val=False, run_dir=tmp_path)]
    assert names == ["NanGuard", "GradientMonitor", "Checkpoint", "HistoryWriter"]


def test_an_unlogged_monitor_is_refused_by_every_command(tmp_path) -> None:
    raw = _raw(Feature({"data": {"split": {"val": 0.0}}, "train": {"early_stopping": {"monitor": "val_loss"}}},
                       lambda c: True))
    for command in ("train", "cv", "learning-curve"):
        with pytest.raises(ConfigError, match="'val_loss', which this run will not log.*data.split.val"):
            COMMANDS[command](raw, tmp_path)


def test_docstring_examples_run() -> None:
    import doctest

    for module in (fit_options_module, dlforge.pipeline.bagging):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0 and result.failed == 0, module.__name__
