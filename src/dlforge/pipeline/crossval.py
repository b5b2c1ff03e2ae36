"""k-fold cross-validation of a run config: k models, k held-out scores, their spread.

Each fold trains a fresh model on the other k-1 folds exactly as ``dlforge train`` would
(:func:`dlforge.pipeline.fit_options.fit_config`: the same model, freezing, imbalance
remedies, loss, augmentation and callbacks) and scores it on its own fold with
:func:`dlforge.evaluate.evaluate`. Standardisation statistics come from the fold's
training part only, so no held-out sample leaks into preprocessing; with
``data.standardize_target`` a regression model trains on the target standardised with
the fold's training statistics and is scored in the target's units.
``data.split.test`` is ignored (the held-out fold is the test set);
``data.split.val`` carves a validation part out of the training folds for early stopping.
Segmentation data are cross-validated over spatial folds (:mod:`dlforge.pipeline.seg_cv`).
Nothing is written to disk: no run directory, no checkpoints.

Example:
    >>> from dlforge.config import validate_config
    >>> cfg = validate_config({"data": {"source": "iris", "split": {"val": 0}},
    ...                        "model": {"arch": "mlp", "hidden": [8]}, "train": {"epochs": 2}})
    >>> result = cross_validate(cfg, k=3)
    >>> len(result.folds), sum(f["n"] for f in result.folds)
    (3, 150.0)
"""

from __future__ import annotations

from dataclasses import replace
from typing import TextIO

import numpy as np
from torch.utils.data import TensorDataset

from dlforge.config import RunConfig
from dlforge.data import DataBundle, Prepared, Standardizer, prepare
from dlforge.errors import ConfigError
from dlforge.evaluate.crossval import CVResult, class_ratios, fold_indices
from dlforge.evaluate.metrics import evaluate
from dlforge.pipeline.data import load_bundle, source_family
from dlforge.pipeline.fit_options import fit_config
from dlforge.pipeline.seg_cv import cross_validate_segmentation

WHY_NOT = {  # sources k shuffled folds cannot serve
    "series": "shuffled folds would train a forecaster on windows after the ones it is scored on",
    "text": "each fold would need its own vocabulary, fitted on its training part, which is not implemented",
}


def _fold_data(config: RunConfig, bundle: DataBundle, train_idx: np.ndarray) -> Prepared:
    """The fold's training part, prepared as ``dlforge train`` prepares a data set: a
    validation part split off when ``data.split.val`` asks, statistics of the rest only."""
    d = config.data
    return prepare(bundle.subset(train_idx), val=d.split.val, test=0, stratify=d.split.stratify,
                   seed=config.data_seed, standardize=d.standardize, standardize_target=d.standardize_target)


def _held_out(bundle: DataBundle, held_idx: np.ndarray, fold: Prepared) -> TensorDataset:
    """The held-out fold, standardised with the fold's statistics; y stays in the target's
    units, which :func:`evaluate` scores in."""
    part = bundle.subset(held_idx)
    stats = fold.preprocessing.get("standardize")
    if stats is not None:
        part = replace(part, x=Standardizer.from_dict(stats).transform(part.x))
    return part.to_tensor_dataset()


def cross_validate(
    config: RunConfig, k: int = 5, stratified: bool = True, progress: TextIO | None = None
) -> CVResult:
    """Cross-validate the run ``config`` describes over ``k`` folds of its data.

    Folds are shuffled with ``config.data_seed`` (``data.seed``, else ``seed``); they are stratified by class for
    classification when ``stratified`` (regression never is). ``progress`` is a stream
    that gets one line per finished fold (None: silent).

    Example:
        >>> from dlforge.config import load_config
        >>> result = cross_validate(load_config("examples/iris_mlp.yaml"), k=5)  # doctest: +SKIP
        >>> result.mean["accuracy"], result.std["accuracy"]  # doctest: +SKIP
        (0.96, 0.025)
    """
    family = source_family(config.data)
    if family == "segmentation":  # spatial folds: quadrants or bands when there are few images
        return cross_validate_segmentation(config, k=k, progress=progress)
    if family != "table":
        raise ConfigError(f"cross-validation takes tables, images and generated sets, not {family} data "
                          f"({config.data.source!r}): {WHY_NOT[family]}",
                          hint="score this config on its held-out split with dlforge train, or with dlforge learning-curve")
    # One data set for every fold: gaps in a table are filled with statistics of all its rows.
    bundle = load_bundle(config, fill_from_split=False)
    stratified = stratified and bundle.task == "classification"
    folds = fold_indices(bundle, k, stratified=stratified, seed=config.data_seed)
    classify = bundle.task == "classification"
    n_classes = bundle.num_outputs if classify else 0

    scores: list[dict[str, float]] = []
    ratios: list[list[float]] = []
    for i, (train_idx, held_idx) in enumerate(folds):
        fold = _fold_data(config, bundle, train_idx)
        model, _ = fit_config(config, fold)  # seeded as a run: every fold starts from the same weights
        ev = evaluate(model, _held_out(bundle, held_idx, fold), task=bundle.task, class_names=bundle.class_names,
                      target_standardize=fold.preprocessing.get("target_standardize"))
        scores.append(ev.metrics)
        if classify:
            ratios.append(class_ratios(bundle.y[held_idx], n_classes))
        if progress is not None:
            main = "accuracy" if classify else "rmse"
            progress.write(f"fold {i + 1}/{k}: {main} {ev.metrics[main]:.4f} (n={len(held_idx)})\n")
            progress.flush()
    overall = class_ratios(bundle.y, n_classes) if classify else []
    return CVResult.from_folds(k, stratified, scores, ratios, overall)
