"""``dlforge ensemble``: combine runs into one artifact and score it on the split they share.

Combining artifacts is the registry's work (:mod:`dlforge.registry.ensemble`); knowing
which split a run was trained and tested on means reading its config and data, which is
the pipeline's, so the scoring lives here.

Example:
    >>> outcome = ensemble_cli(["runs/a", "runs/b", "runs/c"], "ens")  # doctest: +SKIP
    >>> outcome.split  # doctest: +SKIP
    'test'
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, TextIO

from tokenizers import Tokenizer

from dlforge.config import load_config
from dlforge.data.preprocess import in_target_units
from dlforge.errors import ArtifactError
from dlforge.evaluate import evaluate
from dlforge.pipeline.data import load_data
from dlforge.registry.artifact import Artifact
from dlforge.registry.ensemble import check_mode, combine, load_members, save_ensemble

SUMMARY_METRICS = ("accuracy", "log_loss", "rmse", "r2")  # what ensemble_cli prints, when present


@dataclass
class EnsembleOutcome:
    """What :func:`ensemble_cli` made: the artifact, and, where the members share a run
    split, every member's and the ensemble's scores on it (else ``split`` is None)."""

    path: Path
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


def ensemble_cli(paths: Sequence[str | Path], out: str | Path, mode: str = "average",
                 stream: TextIO | None = None) -> EnsembleOutcome:
    """``dlforge ensemble PATH... --out OUT --mode average``: build, save, and print a summary.

    When every member is a run directory trained on the same data config and seed, the
    members and the ensemble are scored on that run's test split (validation split if it
    kept none) and the ensemble's scores are stored in its ``model.json``.

    Example:
        >>> outcome = ensemble_cli(["runs/a", "runs/b", "runs/c"], "ens")  # doctest: +SKIP
        >>> outcome.ensemble["accuracy"] > sum(m["accuracy"] for m in outcome.members) / 3  # doctest: +SKIP
        True
    """
    stream = stream or sys.stdout
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
    stream.write(f"ensemble of {len(members)} members ({mode}) saved to {path}\n")
    if held_out is None:
        stream.write("the members come from different runs or bare artifact folders, so there is no shared "
                     f"split to score them on; run `dlforge evaluate {path} --data ...`\n")
    else:
        shown = [k for k in SUMMARY_METRICS if k in ensemble_scores]
        mean = {k: sum(s[k] for s in member_scores) / len(member_scores) for k in shown}
        rows = [*((f"member {i}", s) for i, s in enumerate(member_scores)), ("mean member", mean),
                ("ensemble", ensemble_scores)]
        stream.write(f"{split} split (n={int(ensemble_scores['n'])})\n")
        stream.write(f"  {'':<12}" + "".join(f"{k:>10}" for k in shown) + "\n")
        for label, scores in rows:
            stream.write(f"  {label:<12}" + "".join(f"{scores[k]:>10.4f}" for k in shown) + "\n")
    stream.flush()
    return EnsembleOutcome(path=path, split=split, members=member_scores, ensemble=ensemble_scores)
