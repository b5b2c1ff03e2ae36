"""Checks shared by the model config dataclasses; every failure names the YAML key path.

Each family's config calls :func:`check_types` and the range helpers from its
``__post_init__``, so a config is valid however it was made: from YAML through
:func:`dlforge.models.build`, or directly in Python.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from dlforge.errors import ConfigError

T = typing.TypeVar("T")

# How an annotation reads to someone editing YAML; others show the annotation itself.
_TYPE_NAMES = {
    "tuple[int, ...]": "a list of integers",
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "str | None": "a string or null",
}


@functools.cache
def _adapters(cls: type) -> dict[str, tuple[TypeAdapter, str]]:
    hints = typing.get_type_hints(cls)
    return {
        f.name: (TypeAdapter(hints[f.name]), str(f.type).replace("typing.", ""))
        for f in dataclasses.fields(cls)
    }


def check_types(config: Any) -> None:
    """Type-check every field of a config dataclass in place; lists become tuples.

    Validation is strict: ``"3"`` is not an integer and ``"abc"`` is not a list of
    integers, so a YAML typo fails here instead of building an odd model.

    Example:
        >>> from dlforge.models.mlp import MLPConfig
        >>> MLPConfig(input_shape=[4], num_outputs=2).input_shape
        (4,)
    """
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    for name, (adapter, type_name) in _adapters(type(config)).items():
        value = getattr(config, name)
        if isinstance(value, list):  # YAML and JSON have no tuples
            value = tuple(value)
        try:
            value = adapter.validate_python(value, strict=True)
        except ValidationError as e:
            # Point into the list when one element is wrong: model.channels[1].
            error = e.errors()[0]
            index = "".join(f"[{i}]" for i in error["loc"] if isinstance(i, int))
            expected = _TYPE_NAMES.get(type_name, type_name)
            default = defaults[name]
            if default is not dataclasses.MISSING:
                expected += f", like the default {_yaml(default)}"
            raise ConfigError(
                f"model.{name}{index} has the wrong type: {error['input']!r}",
                hint=f"expected {expected}",
            ) from None
        setattr(config, name, value)


def check_choice(key: str, value: object, allowed: Iterable[object]) -> None:
    """Raise a ConfigError unless ``value`` is one of ``allowed``.

    Example:
        >>> check_choice("pool", "max", ("max", "avg", None))
    """
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(
            f"model.{key} is {value!r}, which is not an allowed value"
            if isinstance(value, str)
            else f"model.{key} is {_yaml(value)}, which is not an allowed value",
            hint=f"allowed values: {', '.join(_yaml(a) for a in allowed)}",
        )


def check_sizes(key: str, sizes: tuple[int, ...], *, allow_empty: bool = False) -> None:
    """Raise a ConfigError unless every size is at least 1 (and, by default, one exists).

    Example:
        >>> check_sizes("hidden", (64, 32))
    """
    if not sizes and not allow_empty:
        raise ConfigError(f"model.{key} is empty", hint="give at least one size, e.g. [32]")
    for i, size in enumerate(sizes):
        if size < 1:
            raise ConfigError(
                f"model.{key}[{i}] is {size}", hint="sizes must be positive integers"
            )


def check_positive(key: str, value: int) -> None:
    """Raise a ConfigError unless the single size ``value`` is at least 1.

    Example:
        >>> check_positive("num_outputs", 10)
    """
    if value < 1:
        raise ConfigError(f"model.{key} is {value}", hint="use a positive integer")


def check_dropout(dropout: float) -> None:
    """Raise a ConfigError unless ``0 <= dropout < 1`` (1 would drop every unit).

    Example:
        >>> check_dropout(0.1)
    """
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(
            f"model.dropout is {dropout}, outside [0, 1)",
            hint="use a probability in [0, 1), e.g. 0.1",
        )


def make_config(cls: type[T], arch: str, values: Mapping[str, Any]) -> T:
    """Build ``cls`` from ``values``, rejecting unknown keys and reporting missing ones.

    Example:
        >>> from dlforge.models.mlp import MLPConfig
        >>> make_config(MLPConfig, "mlp", {"input_shape": [4], "num_outputs": 2}).hidden
        (64, 64)
    """
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    for key in values:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            guess = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"model.{key} is not a setting of the {arch} model",
                hint=f"{guess}allowed keys: arch, {', '.join(names)}",
            )
    for f in fields:
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and f.name not in values:
            raise ConfigError(
                f"model.{f.name} is missing",
                hint=f"add it to the model spec, or pass {f.name}= to dlforge.models.build",
            )
    return cls(**values)


def _yaml(value: object) -> str:
    """Render a value the way a user writes it in YAML (null, [32, 64], max)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    return str(value)
