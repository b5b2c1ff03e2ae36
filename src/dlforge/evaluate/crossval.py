"""k-fold cross-validation of a run config: k models, k held-out scores, their spread.

Each fold trains a fresh model, seeded as a normal run is, on the other k-1 folds and
scores it on its own fold with :func:`dlforge.evaluate.evaluate`. Standardisation
statistics come from the fold's training part only, so no held-out sample leaks into
preprocessing; with ``data.standardize_target`` a regression model trains on the target
standardised with the fold's training statistics and is scored in the target's units.
``data.split.test`` is ignored (the held-out fold is the test set);
``data.split.val`` carves a validation part out of the training folds for early stopping.
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

from dataclasses import asdict, dataclass, replace
from typing import TextIO

import numpy as np
from torch import nn
from torch.utils.data import TensorDataset

from dlforge.config import RunConfig
from dlforge.data import DataBundle, Standardizer, load_source, split_indices
from dlforge.data.augment import build_augment, resolve_augment
from dlforge.data.imbalance import balanced_order, class_counts, resample_dataset
from dlforge.errors import ConfigError, DataError
from dlforge.evaluate.metrics import Evaluation, evaluate
from dlforge.models import build
from dlforge.train import Callback, EarlyStopping, NanGuard, fit, seed_everything
from dlforge.train.losses import LossConfig, build_loss


@dataclass
class CVResult:
    """Per-fold held-out metrics and their mean and population std (ddof=0) over folds.

    A metric that is NaN in any fold is NaN in ``mean`` and ``std``: the spread of the
    defined folds alone would overstate the evidence. ``class_ratios[i]`` are the class
    fractions of held-out fold ``i`` and ``overall_ratio`` those of the whole data set
    (both empty for regression).
    """

    k: int
    stratified: bool
    folds: list[dict[str, float]]
    mean: dict[str, float]
    std: dict[str, float]
    class_ratios: list[list[float]]
    overall_ratio: list[float]

    def to_dict(self) -> dict:
        """A JSON-able dict."""
        return asdict(self)


def fold_indices(
    bundle: DataBundle, k: int = 5, *, stratified: bool = True, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train, held_out)`` sample indices of each of ``k`` shuffled, seeded folds
    (scikit-learn's ``KFold`` / ``StratifiedKFold``, imported here: it takes a second to load).

    Stratified folds (classification only) keep each class's share in every fold; they
    need at least ``k`` samples of every class.

    Example:
        >>> from dlforge.data import load_builtin
        >>> folds = fold_indices(load_builtin("iris"), k=5, seed=0)
        >>> [len(held_out) for _, held_out in folds]
        [30, 30, 30, 30, 30]
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ConfigError(f"cross-validation needs k >= 2 folds, got {k!r}",
                          hint="pass k=5 or k=10, the usual choices")
    n = len(bundle)
    if k > n:
        raise DataError(f"cannot make {k} folds of {n} samples", hint=f"use k <= {n}")
    stratified = stratified and bundle.task == "classification"
    if stratified:
        counts = np.bincount(bundle.y)
        present = np.flatnonzero(counts)
        rarest = present[np.argmin(counts[present])]
        if counts[rarest] < k:
            name = bundle.class_names[rarest] if bundle.class_names else str(rarest)
            raise DataError(
                f"cannot stratify {k} folds: class '{name}' has only {counts[rarest]} samples, "
                "so some held-out folds would have none of it",
                hint=f"use k <= {counts[rarest]}, add samples of the rare class, or pass stratified=False",
            )
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    else:
        splitter = KFold(n_splits=k, shuffle=True, random_state=seed)
    labels = bundle.y if stratified else None
    return list(splitter.split(np.zeros((n, 1)), labels))


def _check_monitors(config: RunConfig) -> None:
    """Fail before the first fold, not after its first epoch, when val_* cannot exist."""
    if config.data.split.val > 0:
        return
    watched = {}
    stopping = config.train.stopping(has_val=False)  # only what the config asks for explicitly
    if stopping:
        watched["train.early_stopping.monitor"] = stopping.monitor
    if config.optim.schedule.name == "plateau":
        watched["optim.schedule.monitor"] = config.optim.schedule.monitor
    for key, metric in watched.items():
        if metric.startswith("val_"):
            raise ConfigError(f"{key} is {metric!r}, but data.split.val is 0, so no fold has a validation part",
                              hint="set data.split.val above 0, or monitor a train_* metric")


def _tensors(part: DataBundle, scaler: Standardizer | None, target: Standardizer | None = None) -> TensorDataset:
    """Model-ready tensors; ``target`` standardises y too (training parts only: held-out
    folds keep y in the target's units, which :func:`evaluate` scores in)."""
    if scaler is not None:
        part = replace(part, x=scaler.transform(part.x))
    if target is not None:
        part = replace(part, y=target.transform(part.y.reshape(len(part), -1)))
    return part.to_tensor_dataset()


def _callbacks(config: RunConfig, has_val: bool) -> list[Callback]:
    t = config.train
    callbacks: list[Callback] = [NanGuard()] if t.nan_guard else []
    es = t.stopping(has_val)
    if es is not None and (has_val or not es.monitor.startswith("val_")):
        callbacks.append(EarlyStopping(es.monitor, es.mode, es.patience, es.min_delta, es.restore_best_weights))
    return callbacks


def _train_fold(
    config: RunConfig, bundle: DataBundle, train_idx: np.ndarray
) -> tuple[nn.Module, Standardizer | None, dict | None]:
    """A fresh model trained on the samples at ``train_idx``, as ``dlforge train`` would,
    the standardiser fitted on its training part (for the held-out fold) and, with
    ``data.standardize_target``, the regression target's statistics (``prepare``'s
    ``target_standardize``)."""
    d, t = config.data, config.train
    fit_idx, val_idx = train_idx, None
    if d.split.val > 0:
        inner_fit, inner_val, _ = split_indices(bundle.subset(train_idx), val=d.split.val, test=0,
                                                stratify=d.split.stratify, seed=config.data_seed)
        fit_idx, val_idx = train_idx[inner_fit], train_idx[inner_val]
    train_part = bundle.subset(fit_idx)
    scaler = Standardizer.fit(train_part.x) if d.standardize else None
    target = (Standardizer.fit(train_part.y.reshape(len(train_part), -1))
              if d.standardize_target and bundle.task == "regression" else None)
    val = _tensors(bundle.subset(val_idx), scaler, target) if val_idx is not None else None
    seed_everything(config.seed)  # every fold starts from the same initial weights
    model = build(config.model, input_shape=bundle.input_shape, num_outputs=bundle.num_outputs)
    augment = build_augment(resolve_augment(d.augment, bundle.name, kind=bundle.kind), bundle.input_shape,
                            bundle.num_outputs if bundle.task == "classification" else None,
                            stats=scaler.to_dict() if scaler is not None else None)
    train, loss, order = _tensors(train_part, scaler, target), t.loss, None
    if bundle.task == "classification":  # data.imbalance and train.loss on this fold's training part only
        imbalance, K = d.imbalance, bundle.num_outputs
        if imbalance.bagging:
            raise ConfigError("data.imbalance.bagging is not supported by cross-validation",
                              hint="remove it for dlforge cv, or compare bagging on a single split")
        if imbalance.method != "none":
            train, _ = resample_dataset(train, imbalance, config.data_seed, n_classes=K)
        order = balanced_order(train.tensors[1]) if imbalance.sampler == "balanced" else None
        loss = build_loss(t.loss or "cross_entropy", class_counts(train.tensors[1], K))
    elif isinstance(t.loss, LossConfig) or t.loss == "focal":
        loss = build_loss(t.loss)
    fit(model, train, val, epochs=t.epochs, batch_size=t.batch_size, augment=augment, order=order,
        optim=config.optim, loss=loss, clip_grad_norm=t.clip_grad_norm, clip_grad_value=t.clip_grad_value,
        accumulate=t.accumulate, precision=t.precision, device=t.device, seed=config.seed,
        callbacks=_callbacks(config, val is not None), log_every_n_steps=t.log_every_n_steps)
    return model, scaler, None if target is None else {"mean": target.mean, "std": target.std}


def _class_ratios(y: np.ndarray, n_classes: int) -> list[float]:
    return (np.bincount(y, minlength=n_classes) / len(y)).tolist()


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
    d = config.data
    bundle = load_source(
        d.source, target=d.target, task=d.task, categorical=d.categorical, image_size=d.image_size,
        color=d.color, n_samples=d.n_samples, noise=d.noise, seed=config.data_seed,
    )
    stratified = stratified and bundle.task == "classification"
    folds = fold_indices(bundle, k, stratified=stratified, seed=config.data_seed)
    _check_monitors(config)
    classify = bundle.task == "classification"
    n_classes = bundle.num_outputs if classify else 0

    scores: list[dict[str, float]] = []
    ratios: list[list[float]] = []
    for i, (train_idx, held_idx) in enumerate(folds):
        model, scaler, target = _train_fold(config, bundle, train_idx)
        held_out = _tensors(bundle.subset(held_idx), scaler)  # y in the target's units
        ev: Evaluation = evaluate(model, held_out, task=bundle.task, class_names=bundle.class_names,
                                  target_standardize=target)
        scores.append(ev.metrics)
        if classify:
            ratios.append(_class_ratios(bundle.y[held_idx], n_classes))
        if progress is not None:
            main = "accuracy" if classify else "rmse"
            progress.write(f"fold {i + 1}/{k}: {main} {ev.metrics[main]:.4f} (n={len(held_idx)})\n")
            progress.flush()

    keys = list(scores[0])
    table = np.array([[fold[key] for key in keys] for fold in scores])  # (k, metrics)
    mean = dict(zip(keys, table.mean(axis=0).tolist()))
    std = dict(zip(keys, table.std(axis=0, ddof=0).tolist()))  # population std over folds
    overall = _class_ratios(bundle.y, n_classes) if classify else []
    return CVResult(k=k, stratified=stratified, folds=scores, mean=mean, std=std,
                    class_ratios=ratios, overall_ratio=overall)
