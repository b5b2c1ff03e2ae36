"""Ensembles of saved models: k artifacts in, ONE artifact out (what ``dlforge ensemble`` does).

The output is an ordinary artifact whose model is a :class:`dlforge.models.Ensemble`
(arch ``"ensemble"``) holding a copy of every member, so :func:`load_artifact`,
``Artifact.predict``, :func:`dlforge.evaluate.evaluate`, the server and compression all
take it unchanged. ``mode="average"`` averages the members' class probabilities (or
regression outputs), ``mode="vote"`` takes their majority vote.

Members must be interchangeable as far as a caller can tell: the same task, the same class
names in the same order, the same input signature and the *identical* preprocessing (the
ensemble keeps one copy of it; a member standardised with other statistics would silently
see wrong inputs). In practice: train every member with the same ``data`` section and data
seed, and vary the model, its initialisation or its training. ``data.seed`` defaults to the
run's ``seed``, so members that vary ``seed`` need ``data.seed`` set (the refusal says so).

``model.json`` lists the members (path, arch, their own metrics, the data they were trained
on) under ``training.ensemble``.

Example:
    >>> import tempfile, torch
    >>> from dlforge.models import build
    >>> root = tempfile.mkdtemp()
    >>> paths = [save_artifact(build({"arch": "mlp", "hidden": [8]}, input_shape=(4,), num_outputs=3),
    ...                        f"{root}/m{i}", task="classification", class_names=["a", "b", "c"])
    ...          for i in range(3)]
    >>> art = load_artifact(ensemble_artifacts(paths, f"{root}/ensemble"))
    >>> art.meta["arch"], len(art.meta["training"]["ensemble"]["members"])
    ('ensemble', 3)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from dlforge.errors import ArtifactError, ConfigError
from dlforge.models import from_models
from dlforge.models.ensemble import MODES
from dlforge.registry.artifact import Artifact, load_artifact, save_artifact
from dlforge.user_files import read_yaml

SAME_DATA_HINT = "train every member with the same data config (data section and seed), then ensemble them"
DATA_SEED_HINT = ("give every member the same data split and vary only the seed: retrain them with "
                  "--set data.seed=0 (e.g. `dlforge train CONFIG --set seed=1 --set data.seed=0`), then ensemble them")


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_difference(a: Any, b: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """``(key path, a's value, b's value)`` of the first place two JSON-like values differ.

    Example:
        >>> first_difference({"x": [1, 2], "y": 0}, {"x": [1, 3], "y": 0}, "pre")
        ('pre.x[1]', 2, 3)
    """
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in a or key not in b:
                return sub, a.get(key, "<missing>"), b.get(key, "<missing>")
            found = first_difference(a[key], b[key], sub)
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path} (length)", len(a), len(b)
        for i, (x, y) in enumerate(zip(a, b)):
            found = first_difference(x, y, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if a == b else (path, a, b)


def _check_members(members: Sequence[Artifact]) -> None:
    """Raise an ArtifactError naming the first way a member differs from member 0."""
    first = members[0]
    if first.task not in ("classification", "regression"):
        raise ArtifactError(f"{first.path} is a {first.task} model; only classifiers and regressors are ensembled",
                            hint="ensemble models fine-tuned for classification or regression")
    getters = {
        "task": lambda a: a.task,
        "class_names": lambda a: a.class_names,
        "input_signature": lambda a: a.meta.get("input_signature"),
        "preprocessing": lambda a: a.preprocessing,
    }
    for i, art in enumerate(members[1:], start=1):
        for key, get in getters.items():
            diff = first_difference(get(art), get(first), key)
            if diff:
                where, theirs, reference = diff
                seeds = _seeds_split_apart(first, art)
                raise ArtifactError(
                    f"member {i} ({art.path}) and member 0 ({first.path}) differ in {where}: "
                    f"{_show(theirs)} vs {_show(reference)}" + (f"; {seeds}" if seeds else ""),
                    hint=DATA_SEED_HINT if seeds else SAME_DATA_HINT,
                )


def _run_config(art: Artifact) -> dict[str, Any]:
    """The run config an artifact was trained with (from model.json, else the run's config.yaml)."""
    config = art.meta.get("training", {}).get("config")
    path = art.path.parent / "config.yaml"
    if not config and art.path.name == "model" and path.is_file():
        config = read_yaml(path, "run config")
    return config if isinstance(config, dict) else {}


def _seeds_split_apart(a: Artifact, b: Artifact) -> str | None:
    """Why two runs whose data config is the same still saw different data, when the reason is
    that ``data.seed`` was left to default to each run's own ``seed`` (None otherwise)."""
    ca, cb = _run_config(a), _run_config(b)
    da, db = ca.get("data"), cb.get("data")
    if not (isinstance(da, dict) and isinstance(db, dict)) or ca.get("seed") == cb.get("seed"):
        return None
    if da.get("seed") is not None or db.get("seed") is not None:
        return None
    if first_difference({**da, "seed": None}, {**db, "seed": None}):
        return None  # the data configs differ in more than the seed: the general hint applies
    return (f"the runs have seeds {ca.get('seed')} and {cb.get('seed')} and no data.seed, which then defaults "
            "to the run's seed, so each run split (and standardised) the data its own way")


def _member_record(art: Artifact) -> dict[str, Any]:
    training = art.meta.get("training", {})
    config = training.get("config") or {}
    return {
        "path": str(art.path.resolve()), "arch": art.meta["arch"], "metrics": art.meta.get("metrics", {}),
        "data": training.get("data"), "seed": config.get("seed"), "created": art.meta.get("created"),
    }


def load_members(paths: Sequence[str | Path]) -> list[Artifact]:
    """Load the artifacts (folders or run directories) at ``paths`` and check they agree.

    Example:
        >>> load_members(["only-one"])
        Traceback (most recent call last):
        ...
        dlforge.errors.ArtifactError: an ensemble needs at least 2 members, got 1 (pass two or more ...)
    """
    paths = list(paths)
    if len(paths) < 2:
        raise ArtifactError(f"an ensemble needs at least 2 members, got {len(paths)}",
                            hint="pass two or more artifact folders or run directories")
    members = [load_artifact(p) for p in paths]
    _check_members(members)
    return members


def ensemble_artifacts(
    paths: Sequence[str | Path], out: str | Path, *, mode: str = "average",
    metrics: dict[str, float] | None = None, overwrite: bool = False,
) -> Path:
    """Combine the artifacts at ``paths`` into one ensemble artifact in ``out``; returns ``out``.

    ``mode`` is ``"average"`` (mean probability / mean output) or ``"vote"`` (majority of
    the members' predicted classes). ``metrics`` are stored as the ensemble's own (e.g.
    its test scores, see :func:`dlforge.pipeline.ensemble.build_ensemble`).

    Example:
        >>> ensemble_artifacts(["run-a", "run-b"], "ens", mode="median")
        Traceback (most recent call last):
        ...
        dlforge.errors.ConfigError: ensemble mode is 'median' (use one of: average, vote)
    """
    check_mode(mode)
    return save_ensemble(load_members(paths), out, mode, metrics, overwrite)


def check_mode(mode: str, task: str | None = None) -> None:
    """Refuse an unknown ``mode``, and voting for regression members."""
    if mode not in MODES:
        raise ConfigError(f"ensemble mode is {mode!r}", hint=f"use one of: {', '.join(MODES)}")
    if task == "regression" and mode == "vote":
        raise ConfigError("regression members cannot vote", hint="use mode average for regression models")


def combine(members: Sequence[Artifact], mode: str):
    """The members' models as one :class:`dlforge.models.Ensemble` (in memory, not saved)."""
    check_mode(mode, members[0].task)
    return from_models([m.model for m in members], mode=mode, task=members[0].task)


def save_ensemble(members: Sequence[Artifact], out: str | Path, mode: str, metrics: dict[str, float] | None,
          overwrite: bool) -> Path:
    """Save the ensemble of ``members`` (already loaded and checked) as an artifact in ``out``."""
    first = members[0]
    ensemble = combine(members, mode)
    training = {
        "data": first.meta.get("training", {}).get("data"),
        "ensemble": {"mode": mode, "members": [_member_record(m) for m in members]},
    }
    return save_artifact(ensemble, out, task=first.task, class_names=first.class_names,
                         preprocessing=first.preprocessing, metrics=metrics, training=training, overwrite=overwrite)
