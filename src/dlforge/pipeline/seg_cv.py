"""Spatial cross-validation of a segmentation config, nnU-Net style.

Folds hold out whole images when there are at least ``k``, else regions of every image: the
quadrants for ``k=4``, else ``k`` bands (:func:`dlforge.data.seg_regions.spatial_folds`),
with ``data.gap`` pixels between a fold's held-out region and any training patch. Each fold
trains a fresh model as ``dlforge train`` would (:func:`dlforge.pipeline.fit_options.fit_config`)
for the configured epochs (no validation part: the held-out region is the test), and predicts
its region whole with sliding windows. Then, as nnU-Net does, post-processing is chosen on the
pooled held-out predictions of all folds and applied to every fold's scores (both numbers are
kept: ``dice_raw`` is before it). The Otsu threshold is scored on the same regions.

Example:
    >>> from dlforge.config import validate_config
    >>> cfg = validate_config({"data": {"source": "synthetic_nuclei", "n_samples": 4, "patches_per_epoch": 4},
    ...                        "model": {"arch": "unet", "widths": [4, 8]},
    ...                        "train": {"epochs": 1, "batch_size": 2, "device": "cpu"}})
    >>> result = cross_validate_segmentation(cfg, k=2)
    >>> len(result.folds), sorted(result.segmentation["interval"])
    (2, ['dice', 'level', 'method'])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TextIO

import numpy as np
from torch import nn

from dlforge.config import RunConfig
from dlforge.data.seg_regions import spatial_folds
from dlforge.evaluate.crossval import CVResult
from dlforge.evaluate.seg_postprocess import choose_postprocessing
from dlforge.train import seed_everything
from dlforge.pipeline.fit_options import fit_config
from dlforge.pipeline.seg_data import SegPrepared, load_seg_bundle, seg_prepared
from dlforge.pipeline.seg_eval import SCORE_KEYS, mean_scores, otsu_scores, overlay, predict_boxes, score_boxes


def t_interval(values: list[float], level: float = 0.95) -> list[float]:
    """Student-t confidence interval of the mean of ``values`` (fold scores).

    Example:
        >>> [round(v, 3) for v in t_interval([0.8, 0.82, 0.84, 0.86])]
        [0.789, 0.871]
    """
    from scipy import stats  # on demand: scipy takes a second to import, and training does not need it

    a = np.asarray(values, dtype=np.float64)
    if len(a) < 2 or not np.isfinite(a).all():
        return [float("nan"), float("nan")]
    half = stats.t.ppf(0.5 + level / 2, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a))
    return [float(a.mean() - half), float(a.mean() + half)]


def cross_validate_segmentation(cfg: RunConfig, k: int = 4, progress: TextIO | None = None, *,
                                model_fn: Callable[[SegPrepared], nn.Module] | None = None) -> CVResult:
    """``k``-fold spatial cross-validation of a segmentation config (see the module doc).

    Returns a :class:`~dlforge.evaluate.crossval.CVResult` whose folds hold ``dice``, ``iou``,
    ``hd95``, ``ap50``, ``dsb`` (post-processed), ``dice_raw`` and the Otsu baseline's
    ``otsu_dice`` and ``otsu_ap50``; ``result.segmentation`` is the report's evaluation
    (per-fold rows, the post-processing choice, a t interval of the mean Dice, overlays).
    ``model_fn(prepared)`` builds each fold's model instead of ``cfg.model`` (a benchmark's
    reference network, trained by the same loop on the same patches).
    """
    bundle = load_seg_bundle(cfg)
    folds = spatial_folds(bundle.y.shape, k, gap=cfg.data.gap, seed=cfg.data_seed)
    raw: list[list[np.ndarray]] = []
    parts, before = [], []  # per fold: its data, and its scores before post-processing
    for i, regions in enumerate(folds):
        prepared = seg_prepared(cfg, bundle, regions)
        model = None
        if model_fn is not None:
            seed_everything(cfg.seed)
            model = model_fn(prepared)
        model, _ = fit_config(cfg, prepared, model=model)  # seeded as a run: every fold starts from the same weights
        raw.append(predict_boxes(model, prepared, regions.test))
        parts.append(prepared)
        before.append(mean_scores(score_boxes(raw[-1], prepared, regions.test)))
        if progress is not None:
            progress.write(f"fold {i + 1}/{k}: dice {before[-1]['dice']:.4f} before post-processing "
                           f"({regions.describe()})\n")
            progress.flush()
    crops = [p.crop(b) for p, f in zip(parts, folds) for b in f.test]
    instances = None if any(c[2] is None for c in crops) else [c[2] for c in crops]
    choice = choose_postprocessing([m for fold in raw for m in fold], [c[1] for c in crops], len(bundle.class_names),
                                   true_instances=instances)
    scores, overlays = [], []
    for i, (prepared, regions, preds) in enumerate(zip(parts, folds, raw)):
        post = [choice.spec.apply(m) for m in preds]
        main = mean_scores(score_boxes(post, prepared, regions.test))
        otsu = otsu_scores(prepared, regions.test)
        scores.append({**{key: main[key] for key in SCORE_KEYS}, "dice_raw": before[i]["dice"],
                       "otsu_dice": otsu["dice"], "otsu_ap50": otsu["ap50"]})
        overlays.append(overlay(f"fold {i + 1}: {regions.describe()}", *prepared.crop(regions.test[0])[:2], post[0]))
    result = CVResult.from_folds(k, False, scores)
    result.segmentation = _evaluation(result, choice.to_dict(), overlays, [f.describe() for f in folds])
    return result


def _evaluation(result: CVResult, postprocessing: dict[str, Any], overlays: list[dict], regions: list[str]) -> dict:
    """The report's view of a segmentation cross-validation."""
    dice = [f["dice"] for f in result.folds]
    return {
        "task": "segmentation", "split": f"{result.k}-fold spatial cross-validation",
        "metrics": {k: result.mean[k] for k in ("dice", "iou", "hd95", "ap50", "dsb")},
        "baselines": {"otsu": {"dice": result.mean["otsu_dice"], "ap50": result.mean["otsu_ap50"],
                               "note": "Otsu threshold of each held-out region, the same folds"}},
        "folds": [{"fold": i + 1, "region": r, **f} for i, (f, r) in enumerate(zip(result.folds, regions))],
        "interval": {"dice": t_interval(dice), "level": 0.95, "method": "Student t over folds"},
        "postprocessing": {**postprocessing, "note": "chosen on the pooled held-out predictions of all folds "
                                                     "(nnU-Net's procedure), so the post-processed scores are "
                                                     "slightly optimistic; dice_raw is before it"},
        "overlays": overlays,
    }


__all__ = ["cross_validate_segmentation", "t_interval"]
