"""Model families and the spec -> model builder.

A spec is the ``model`` section of a config: ``{"arch": "cnn", "channels": [32, 64]}``.
``build`` validates it and returns a plain ``nn.Module``; ``spec_of`` gives back a JSON-able
spec from which ``build`` rebuilds the same architecture.

Example:
    >>> from dlforge.models import build, spec_of
    >>> model = build({"arch": "mlp", "hidden": [32]}, input_shape=(4,), num_outputs=3)
    >>> spec_of(model)["hidden"]
    [32]
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from dlforge.errors import ConfigError
from dlforge.models._config import make_config
from dlforge.models.bert import BertClassifier, BertConfig, build_bert
from dlforge.models.cnn import CNN, CNNConfig, build_cnn
from dlforge.models.ensemble import Ensemble, EnsembleConfig
from dlforge.models.mlp import MLP, MLPConfig, build_mlp
from dlforge.models.rnn import RNNClassifier, RNNConfig, build_rnn
from dlforge.models.sliding_window import fit_window, sliding_window_predict, sliding_window_segment
from dlforge.models.transformer import (
    TransformerClassifier,
    TransformerConfig,
    build_transformer,
)
from dlforge.models.unet import UNet, UNetConfig, build_unet

# arch name -> (config dataclass, model class); a new family adds one line here.
ARCHS: dict[str, tuple[type, type]] = {
    "mlp": (MLPConfig, MLP),
    "cnn": (CNNConfig, CNN),
    "rnn": (RNNConfig, RNNClassifier),
    "transformer": (TransformerConfig, TransformerClassifier),
    "bert": (BertConfig, BertClassifier),
    "ensemble": (EnsembleConfig, Ensemble),
    "unet": (UNetConfig, UNet),
}


def config_from_spec(
    spec: Mapping[str, Any],
    *,
    input_shape: Sequence[int] | None = None,
    num_outputs: int | None = None,
) -> Any:
    """Validate a model spec and return its family's config dataclass.

    ``input_shape`` and ``num_outputs`` come from the data: they fill in keys the spec
    leaves out, and a spec ``num_outputs`` that disagrees with the data is an error.

    Example:
        >>> config_from_spec({"arch": "cnn"}, input_shape=(1, 28, 28), num_outputs=10)
        CNNConfig(input_shape=(1, 28, 28), num_outputs=10, channels=(32, 64), ...)
    """
    if not isinstance(spec, Mapping):
        raise ConfigError(
            f"model must be a mapping, got {type(spec).__name__}",
            hint="write it as keys under model:, e.g. {arch: mlp, hidden: [64]}",
        )
    arch = spec.get("arch")
    if not (isinstance(arch, str) and arch in ARCHS):
        raise ConfigError(
            "model.arch is missing" if arch is None else f"model.arch {arch!r} is unknown",
            hint=f"allowed values: {', '.join(ARCHS)}",
        )
    from_data: dict[str, Any] = {}
    if input_shape is not None:
        from_data["input_shape"] = tuple(operator.index(d) for d in input_shape)  # numpy ints
    if num_outputs is not None:
        from_data["num_outputs"] = operator.index(num_outputs)
    values = {k: v for k, v in spec.items() if k != "arch"}
    config_cls, _ = ARCHS[arch]
    config = make_config(config_cls, arch, {**from_data, **values})
    # Compare after validation, so a mistyped spec value reports its type, not a mismatch.
    for key, value in from_data.items():
        if getattr(config, key) != value:
            data_has = (
                f"{value} classes" if key == "num_outputs" else f"samples of shape {_show(value)}"
            )
            raise ConfigError(
                f"model.{key} is {_show(getattr(config, key))} but the data has {data_has}",
                hint=f"remove model.{key} to take it from the data, or use the data the "
                "model was meant for",
            )
    return config


def build(
    spec: Mapping[str, Any],
    *,
    input_shape: Sequence[int] | None = None,
    num_outputs: int | None = None,
) -> nn.Module:
    """Build the model a spec describes; see :func:`config_from_spec` for the rules.

    Example:
        >>> model = build({"arch": "cnn", "channels": [8, 16]}, input_shape=(3, 32, 32),
        ...               num_outputs=10)
        >>> type(model).__name__, len(model.blocks)
        ('CNN', 2)
    """
    config = config_from_spec(spec, input_shape=input_shape, num_outputs=num_outputs)
    if isinstance(config, EnsembleConfig):  # members are models too: built here, so ensemble.py needs no build
        members = [build(m, input_shape=config.input_shape, num_outputs=config.num_outputs) for m in config.members]
        # Store complete member specs, so spec_of(ensemble) rebuilds exactly these members.
        return Ensemble(dataclasses.replace(config, members=tuple(spec_of(m) for m in members)), members)
    _, model_cls = ARCHS[spec["arch"]]
    return model_cls(config)


def spec_of(model: nn.Module) -> dict[str, Any]:
    """Return the JSON-able spec that :func:`build` turns back into this architecture.

    Example:
        >>> model = build({"arch": "mlp", "input_shape": [4], "num_outputs": 2})
        >>> spec_of(model)
        {'arch': 'mlp', 'input_shape': [4], 'num_outputs': 2, 'hidden': [64, 64], ...}
    """
    arch = getattr(type(model), "ARCH", None)
    config = getattr(model, "config", None)
    if arch not in ARCHS or not isinstance(config, ARCHS[arch][0]):
        raise ConfigError(
            f"{type(model).__name__} is not a dlforge model, so it has no spec",
            hint=f"build it with dlforge.models.build; known archs: {', '.join(ARCHS)}",
        )
    fields = {f.name: _jsonable(getattr(config, f.name)) for f in dataclasses.fields(config)}
    return {"arch": arch, **fields}


def build_ensemble(input_shape: Sequence[int], num_outputs: int, members: Sequence[dict], **options: Any) -> Ensemble:
    """Build an Ensemble from explicit arguments; ``options`` are ``mode`` and ``task``.

    Example:
        >>> ens = build_ensemble((4,), 2, [{"arch": "mlp", "hidden": [8]}] * 3, mode="vote")
        >>> len(ens.members), ens.config.mode
        (3, 'vote')
    """
    spec = {"arch": Ensemble.ARCH, "members": list(members), **options}
    return build(spec, input_shape=input_shape, num_outputs=num_outputs)  # type: ignore[return-value]


def from_models(models: Sequence[nn.Module], mode: str = "average", task: str = "classification") -> Ensemble:
    """An Ensemble holding copies of trained dlforge ``models`` (weights included).

    The members must be dlforge models (built with :func:`build`) with the same input shape
    and outputs; the ensemble sits on the first model's device.

    Example:
        >>> models = [build({"arch": "mlp", "hidden": [8]}, input_shape=(4,), num_outputs=2)
        ...           for _ in range(3)]
        >>> ens = from_models(models)
        >>> torch.equal(ens.members[2].head.weight, models[2].head.weight)
        True
    """
    models = list(models)
    if not models:
        raise ConfigError("an ensemble needs at least one model", hint="pass a non-empty list of trained models")
    specs = [spec_of(m) for m in models]  # a ConfigError for anything that is not a dlforge model
    first = specs[0]
    for i, spec in enumerate(specs[1:], start=1):
        if (spec["input_shape"], spec["num_outputs"]) != (first["input_shape"], first["num_outputs"]):
            raise ConfigError(f"model {i} takes {spec['input_shape']} -> {spec['num_outputs']} outputs, model 0 "
                              f"{first['input_shape']} -> {first['num_outputs']}",
                              hint="ensemble models trained on the same data and task")
    ensemble = build_ensemble(first["input_shape"], first["num_outputs"], specs, mode=mode, task=task)
    for member, model in zip(ensemble.members, models):
        member.load_state_dict(model.state_dict())
    device = next(models[0].parameters(), torch.empty(0)).device
    return ensemble.to(device).train(models[0].training)


def _show(value: Any) -> str:
    return str(list(value)) if isinstance(value, tuple | list) else str(value)


def _jsonable(value: Any) -> Any:
    return [_jsonable(v) for v in value] if isinstance(value, tuple | list) else value


__all__ = [
    "ARCHS",
    "BertClassifier",
    "BertConfig",
    "CNN",
    "MLP",
    "CNNConfig",
    "Ensemble",
    "EnsembleConfig",
    "MLPConfig",
    "RNNClassifier",
    "RNNConfig",
    "TransformerClassifier",
    "TransformerConfig",
    "UNet",
    "UNetConfig",
    "build",
    "build_bert",
    "build_cnn",
    "build_ensemble",
    "build_mlp",
    "build_rnn",
    "build_transformer",
    "build_unet",
    "config_from_spec",
    "from_models",
    "fit_window",
    "sliding_window_predict",
    "sliding_window_segment",
    "spec_of",
]
