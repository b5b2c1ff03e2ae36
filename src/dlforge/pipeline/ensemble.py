"""``dlforge ensemble``: combine runs into one artifact and score it on the split they share.

Combining artifacts is the registry's work (:mod:`dlforge.registry.ensemble`); knowing
which split a run was trained and tested on means reading its config and data, which is
the pipeline's, so the scoring lives here.

Example:
    >>> outcome = build_ensemble(["runs/a", "runs/b", "runs/c"], "ens")  # doctest: +SKIP
    >>> outcome.split  # doctest: +SKIP
    'test'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tokenizers import Tokenizer

from dlforge.config import load_config
from dlforge.data.preprocess import in_target_units
from dlforge.errors import ArtifactError
from dlforge.evaluate import evaluate
from dlforge.pipeline.data import load_data
from dlforge.registry.artifact import Artifact
from dlforge.registry.ensemble import check_mode, combine, load_members, save_ensemble


@dataclass
class EnsembleOutcome:
    """What :func:`build_ensemble` made: the artifact, and, where the members share a run
    split, every member's and the ensemble's scores on it (else ``split`` is None)."""

    path: Path
    mode: str  # average or vote
    n_members: int
    split: str | None
    members: list[dict[str, float]]
    ensemble: dict[str, float]


def _shared_held_out(members: Sequence[Artifact]):
    """The held-out split every member's run kept, or None when the runs differ or are unknown."""
    configs = []
    for art in members:
        config = art.path.parent / "config.yaml"
        if art.path.name != "model" or not config.is_file():
            return None, None  # a bare artifact folder: its split is unknown
        configs.append(load_config(config))
    keys = [(c.data.model_dump(mode="json", exclude={"seed"}), c.data_seed) for c in configs]
    if any(k != keys[0] for k in keys[1:]):
        return None, None
    encoding = members[0].preprocessing.get("encoding", {})
    tokenizer = Tokenizer.from_str(encoding["tokenizer"]) if encoding.get("kind") == "text" else None
    prepared = load_data(configs[0], tokenizer=tokenizer)
    # Regression targets come back in their own units: evaluate() scores artifacts there.
    if prepared.test is not None:
        return "test", in_target_units(prepared.test, prepared)
    return ("val", in_target_units(prepared.val, prepared)) if prepared.val is not None else (None, None)


def build_ensemble(paths: Sequence[str | Path], out: str | Path, mode: str = "average") -> EnsembleOutcome:
    """Combine the runs or artifact folders at ``paths`` into one artifact saved at ``out``.

    When every member is a run directory trained on the same data config and seed, the
    members and the ensemble are scored on that run's test split (validation split if it
    kept none) and the ensemble's scores are stored in its ``model.json``; otherwise
    ``split`` is None and nothing is scored. Nothing is printed (``dlforge ensemble`` does).

    Example:
        >>> outcome = build_ensemble(["runs/a", "runs/b", "runs/c"], "ens")  # doctest: +SKIP
        >>> outcome.ensemble["accuracy"] > sum(m["accuracy"] for m in outcome.members) / 3  # doctest: +SKIP
        True
    """
    check_mode(mode)
    if Path(out).exists():  # fail before scoring anything
        raise ArtifactError(f"{out} already exists", hint="choose another --out folder or delete it")
    members = load_members(paths)
    split, held_out = _shared_held_out(members)
    member_scores: list[dict[str, float]] = []
    ensemble_scores: dict[str, float] = {}
    metrics = None
    if held_out is not None:
        member_scores = [evaluate(m, held_out).metrics for m in members]
        ensemble_scores = evaluate(combine(members, mode), held_out, task=members[0].task,
                                   class_names=members[0].class_names,
                                   target_standardize=members[0].preprocessing.get("target_standardize")).metrics
        metrics = {f"{split}_{k}": v for k, v in ensemble_scores.items() if k != "n"}
    path = save_ensemble(members, out, mode, metrics, overwrite=False)
    return EnsembleOutcome(path=path, mode=mode, n_members=len(members), split=split, members=member_scores,
                           ensemble=ensemble_scores)
