"""Post-processing kept only where held-out predictions say it helps, as nnU-Net v2 does.

The operations and the :class:`~dlforge.data.seg_postprocess.PostProcess` spec live in
:mod:`dlforge.data.seg_postprocess` (the artifact applies them at predict time);
:func:`choose_postprocessing` picks the spec.

Example:
    >>> t = np.zeros((12, 12), np.int64); t[2:8, 2:8] = 1
    >>> p = t.copy(); p[10, 10] = 1
    >>> choose_postprocessing([p], [t], num_classes=2).spec.name
    'remove_small(8)'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from dlforge.data.seg_postprocess import PostProcess, check_label_map
from dlforge.errors import DataError
from dlforge.evaluate.segmentation import (
    average_precision,
    dice_per_class,
    label_instances,
)

# remove_small candidates besides the one derived from the truth's object sizes.
SIZE_LADDER = (8, 16, 32, 64)
_TOL = 1e-12  # score differences below this are ties (float noise)


@dataclass
class PostChoice:
    """The chosen spec and every candidate's held-out scores (for the report).

    ``table`` rows: ``{"name", "spec", "dice", "ap50", "kept", "chosen"}``; the first row is
    ``none``, each later row is one step tried on top of the spec kept so far.
    """

    spec: PostProcess
    table: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"chosen": self.spec.name, "spec": self.spec.to_dict(), "candidates": self.table}


def _scores(preds: Sequence[np.ndarray], truths: Sequence[np.ndarray], objects: Sequence[np.ndarray],
            num_classes: int, spec: PostProcess) -> tuple[np.ndarray, float]:
    """Per-class Dice averaged over images (C,) and mean AP@0.5 of ``spec`` applied to ``preds``."""
    dice, ap = [], []
    for p, t, obj in zip(preds, truths, objects, strict=True):
        p = spec.apply(p)
        dice.append(dice_per_class(p[None], t[None], num_classes)[0].numpy())
        ap.append(average_precision(label_instances(p), obj, 0.5))
    return np.mean(dice, axis=0), float(np.mean(ap))


def _better(new: tuple[np.ndarray, float], old: tuple[np.ndarray, float]) -> bool:
    """nnU-Net's rule (mean foreground Dice up, no class down), AP@0.5 breaking exact Dice ties."""
    (new_c, new_ap), (old_c, old_ap) = new, old
    if np.any(new_c[1:] < old_c[1:] - _TOL):
        return False
    gain = new_c[1:].mean() - old_c[1:].mean()
    return bool(gain > _TOL or (abs(gain) <= _TOL and new_ap > old_ap + _TOL))


def size_candidates(truths: Sequence[np.ndarray]) -> list[int]:
    """remove_small sizes to try: :data:`SIZE_LADDER` plus half the 5th percentile of true object sizes.

    Example:
        >>> t = np.zeros((8, 8), np.int64); t[:6, :6] = 1
        >>> size_candidates([t])
        [8, 16, 18, 32, 64]
    """
    sizes = [np.bincount(label_instances(t).ravel())[1:] for t in truths]
    sizes = np.concatenate(sizes) if sizes else np.array([])
    derived = {max(1, int(np.percentile(sizes, 5) // 2))} if sizes.size else set()
    return sorted(set(SIZE_LADDER) | derived)


def choose_postprocessing(preds: Sequence, truths: Sequence, num_classes: int, *,
                          candidates: Sequence[int] | None = None,
                          true_instances: Sequence | None = None) -> PostChoice:
    """Choose post-processing on held-out predictions, as nnU-Net v2 does.

    ``preds``/``truths``: one label map per held-out image (every fold's test part), each
    (H, W) or (D, H, W); shapes may differ between images. Greedy, in nnU-Net v2's manner
    (``nnunetv2/postprocessing/remove_connected_components.py``, ``determine_postprocessing``):
    each step is tried on top of what is kept so far and kept only if the mean foreground
    Dice goes up and no class's Dice goes down; nnU-Net tries keep-largest (all foreground,
    then per class), we try remove_small (the best of ``candidates`` sizes, default
    :func:`size_candidates`), then fill_holes, then keep_largest. An exact Dice tie is
    broken by AP@0.5 (connected components), which removing specks often raises;
    ``true_instances`` (per-object ids, one map per image) replace the truth's connected
    components there, as in :func:`dlforge.evaluate.segmentation.segmentation_scores`.

    Example:
        >>> t = np.zeros((12, 12), np.int64); t[2:8, 2:8] = 1
        >>> p = t.copy(); p[10, 10] = 1                      # a one-pixel false positive
        >>> choose_postprocessing([p], [t], num_classes=2).spec.name
        'remove_small(8)'
    """
    preds, truths = [check_label_map(p) for p in preds], [check_label_map(t) for t in truths]
    if len(preds) != len(truths) or not preds:
        raise DataError(f"got {len(preds)} predictions and {len(truths)} truths",
                        hint="pass one held-out prediction per true mask, at least one")
    if true_instances is not None and len(true_instances) != len(truths):
        raise DataError(f"got {len(true_instances)} instance maps for {len(truths)} truths",
                        hint="pass one instance map per true mask, or none")
    objects = ([label_instances(t) for t in truths] if true_instances is None
               else [np.asarray(i) for i in true_instances])
    spec = PostProcess()
    best = _scores(preds, truths, objects, num_classes, spec)
    table = [{"name": "none", "spec": spec.to_dict(), "dice": float(best[0][1:].mean()),
              "ap50": best[1], "kept": True}]

    def trial(candidate: PostProcess) -> tuple[np.ndarray, float]:
        s = _scores(preds, truths, objects, num_classes, candidate)
        table.append({"name": candidate.name, "spec": candidate.to_dict(),
                      "dice": float(s[0][1:].mean()), "ap50": s[1], "kept": False})
        return s

    sizes = list(candidates) if candidates is not None else size_candidates(truths)
    tried = [(trial(PostProcess(remove_small=int(n))), len(table) - 1, int(n)) for n in sizes]
    winners = [(s, row, n) for s, row, n in tried if _better(s, best)]
    if winners:  # the best size: highest Dice, then AP@0.5, then the smallest size
        s, row, n = max(winners, key=lambda w: (w[0][0][1:].mean(), w[0][1], -w[2]))
        spec, best, table[row]["kept"] = PostProcess(remove_small=n), s, True
    for step in ("fill_holes", "keep_largest"):
        candidate = PostProcess(**{**spec.to_dict(), step: True})
        s = trial(candidate)
        if _better(s, best):
            spec, best, table[-1]["kept"] = candidate, s, True
    for row in table:
        row["chosen"] = row["name"] == spec.name
    return PostChoice(spec, table)
