"""Pseudo-labelling: semi-supervised training on a small labelled set plus unlabelled inputs.

Self-training in its plainest form (Lee, 2013, "Pseudo-Label"):

1. train a model on the labelled set alone (round 0);
2. predict the unlabelled inputs; keep those whose top-class probability is at least
   ``threshold`` and label them with that class (the argmax);
3. train a **fresh** model, from the same initial weights, on the labelled set plus the
   kept pseudo-labelled samples; repeat from 2 for ``rounds`` rounds.

Choices, and why:

* A fresh model each round rather than fine-tuning the last one: a model that keeps
  training on its own labels reinforces its early mistakes (confirmation bias), and equal
  starting weights make the rounds comparable with round 0 and with each other.
* Every round re-selects from the *whole* unlabelled pool with the newest model: a sample
  added in round 1 is dropped in round 2 if the better model is no longer confident.
* The labelled set is never relabelled or filtered, whatever the model says about it; it
  always comes first in the union (``result.train_set``).

For segmentation a whole image is rarely all confident: :func:`pseudo_labels` keeps the
confident *pixels* and marks the rest ``IGNORE_INDEX``, which the loss and accuracy skip
(:func:`dlforge.pipeline.seg_limited.self_train` trains on them).

Example:
    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> x = torch.randn(200, 4, generator=torch.Generator().manual_seed(0)); y = (x[:, 0] > 0).long()
    >>> result = pseudo_label_fit(lambda: torch.nn.Linear(4, 2), TensorDataset(x[:20], y[:20]), x[20:],
    ...                           threshold=0.8, rounds=1, fit_kwargs={"epochs": 5, "device": "cpu"})
    >>> [r["round"] for r in result.rounds], result.rounds[1]["n_added"] > 0
    ([0, 1], True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from dlforge.errors import ConfigError, DataError
from dlforge.targets import IGNORE_INDEX
from dlforge.train.engine import evaluate_loss, fit, seed_everything
from dlforge.train.losses import cross_entropy

RESERVED_FIT_KEYS = ("seed", "val")  # set by pseudo_label_fit itself


@dataclass
class PseudoLabels:
    """The unlabelled samples one round added: positions in ``unlabelled_x``, the class
    given to each (the teacher model's argmax) and the teacher's top probability."""

    indices: Tensor  # (M,) int64
    labels: Tensor  # (M,) int64
    confidence: Tensor  # (M,) float32, every value >= the threshold


@dataclass
class PseudoLabelResult:
    """The final model, one record per round, and what each round added.

    ``rounds[i]`` holds ``round``, ``n_labelled``, ``n_added``, ``threshold``,
    ``added_per_class`` and, with a validation set, ``val_loss`` / ``val_accuracy``.
    Round 0 is the labelled-only baseline. ``selections[i]`` is what round ``i + 1``
    added; ``train_set`` is the last round's training set (labelled rows first).
    """

    model: nn.Module
    rounds: list[dict[str, Any]]
    selections: list[PseudoLabels] = field(default_factory=list)
    train_set: TensorDataset | None = None


@torch.no_grad()
def select_pseudo_labels(model: nn.Module, x: Tensor, threshold: float, batch_size: int = 512) -> PseudoLabels:
    """The samples of ``x`` whose top-class probability under ``model`` is >= ``threshold``.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(2, 2)
        >>> picked = select_pseudo_labels(model, torch.randn(10, 2), threshold=0.0)
        >>> len(picked.indices)
        10
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()  # dropout off: the selection must not depend on a random mask
    try:
        probs = torch.cat([model(x[i : i + batch_size].to(device)).float().softmax(dim=1).cpu()
                           for i in range(0, len(x), batch_size)])  # (N, K)
    finally:
        model.train(was_training)
    confidence, labels = probs.max(dim=1)  # (N,), (N,)
    keep = torch.nonzero(confidence >= threshold).flatten()  # (M,)
    return PseudoLabels(indices=keep, labels=labels[keep], confidence=confidence[keep])


def _check_inputs(labelled: TensorDataset, unlabelled_x: Tensor, threshold: float, rounds: int,
                  fit_kwargs: dict[str, Any]) -> None:
    if not isinstance(labelled, TensorDataset) or len(labelled.tensors) != 2 or len(labelled) == 0:
        raise DataError("the labelled set must be a non-empty TensorDataset(x, y)",
                        hint="wrap the labelled inputs and class indices: TensorDataset(x, y)")
    x, y = labelled.tensors
    if torch.is_floating_point(y) or y.ndim != 1:
        raise DataError(f"pseudo-labelling needs class indices of shape (N,), got {y.dtype} of shape {tuple(y.shape)}",
                        hint="it is for classification; pass integer labels")
    if tuple(unlabelled_x.shape[1:]) != tuple(x.shape[1:]):
        raise DataError(f"unlabelled inputs have per-sample shape {list(unlabelled_x.shape[1:])}, "
                        f"the labelled ones {list(x.shape[1:])}",
                        hint="encode the unlabelled data with the same preprocessing as the labelled data")
    if not 0.0 < threshold <= 1.0:
        raise ConfigError(f"threshold is {threshold!r}; it is a probability in (0, 1]",
                          hint="0.9 or 0.95 are usual: only confident predictions become labels")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"rounds is {rounds!r}; it must be an integer >= 1", hint="pass rounds=1 or 2")
    clash = [k for k in RESERVED_FIT_KEYS if k in fit_kwargs]
    if clash:
        raise ConfigError(f"fit_kwargs sets {clash[0]!r}, which pseudo_label_fit sets itself",
                          hint=f"pass {clash[0]}= to pseudo_label_fit instead")


def _train(build_model: Callable[[], nn.Module], data: TensorDataset, val: TensorDataset | None,
           fit_kwargs: dict[str, Any], seed: int) -> nn.Module:
    seed_everything(seed)  # every round starts from the same initial weights
    model = build_model()
    fit(model, data, val, seed=seed, **fit_kwargs)
    return model


@torch.no_grad()
def _num_outputs(model: nn.Module, x: Tensor) -> int:
    was_training = model.training
    model.eval()  # batch norm cannot run in train mode on one sample
    try:
        return int(model(x.to(next(model.parameters()).device)).shape[1])
    finally:
        model.train(was_training)


def _record(round_: int, model: nn.Module, n_labelled: int, picked: PseudoLabels | None, threshold: float,
            num_classes: int, val: TensorDataset | None) -> dict[str, Any]:
    added = picked.labels if picked is not None else torch.zeros(0, dtype=torch.long)
    record: dict[str, Any] = {
        "round": round_, "n_labelled": n_labelled, "n_added": len(added), "threshold": threshold,
        "added_per_class": torch.bincount(added, minlength=num_classes).tolist(),
    }
    if val is not None and len(val):
        record.update({f"val_{k}": v for k, v in evaluate_loss(model, val, cross_entropy).items()})
    return record


def pseudo_label_fit(
    build_model: Callable[[], nn.Module],
    labelled: TensorDataset,
    unlabelled_x: Tensor,
    val: TensorDataset | None = None,
    *,
    threshold: float = 0.9,
    rounds: int = 2,
    fit_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
) -> PseudoLabelResult:
    """Train on ``labelled``, then ``rounds`` times on it plus confident pseudo-labels.

    ``build_model()`` returns a fresh, untrained classifier (logits (B, K)); it is called
    once per round after seeding with ``seed``. ``fit_kwargs`` go to
    :func:`dlforge.train.fit` (epochs, batch_size, optim, device, callbacks, ...); ``val``
    is fit's validation set (an early-stopping callback may watch it) and is scored after
    every round, never trained on. The returned model is the last round's.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> x = torch.randn(100, 3, generator=torch.Generator().manual_seed(0)); y = (x.sum(dim=1) > 0).long()
        >>> result = pseudo_label_fit(lambda: torch.nn.Linear(3, 2), TensorDataset(x[:10], y[:10]), x[10:],
        ...                           rounds=1, fit_kwargs={"epochs": 2, "device": "cpu"})
        >>> len(result.rounds), len(result.selections)
        (2, 1)
    """
    fit_kwargs = dict(fit_kwargs or {})
    _check_inputs(labelled, unlabelled_x, threshold, rounds, fit_kwargs)
    x_lab, y_lab = labelled.tensors
    model = _train(build_model, labelled, val, fit_kwargs, seed)
    num_classes = _num_outputs(model, x_lab[:1])
    history = [_record(0, model, len(labelled), None, threshold, num_classes, val)]
    selections: list[PseudoLabels] = []
    train_set = labelled
    for round_ in range(1, rounds + 1):
        picked = select_pseudo_labels(model, unlabelled_x, threshold)
        selections.append(picked)
        # Labelled rows first and untouched; pseudo-labelled rows appended after them.
        x_new = unlabelled_x[picked.indices].to(x_lab.device, x_lab.dtype)
        y_new = picked.labels.to(y_lab.device, y_lab.dtype)
        train_set = TensorDataset(torch.cat([x_lab, x_new]), torch.cat([y_lab, y_new]))
        model = _train(build_model, train_set, val, fit_kwargs, seed)
        history.append(_record(round_, model, len(labelled), picked, threshold, num_classes, val))
    return PseudoLabelResult(model=model, rounds=history, selections=selections, train_set=train_set)


def pseudo_labels(probs: torch.Tensor, threshold: float = 0.9) -> torch.Tensor:
    """Class indices (N, *S) int64 from probabilities ``probs`` (N, K, *S): the argmax where
    the top probability is at least ``threshold``, ``IGNORE_INDEX`` (-100) elsewhere.

    Example:
        >>> p = torch.tensor([[[0.95, 0.5, 0.1]], [[0.05, 0.5, 0.9]]])[None]  # (1, 2, 1, 3)
        >>> pseudo_labels(p, 0.9).tolist()
        [[[0, -100, 1]]]
    """
    if not 0 < threshold <= 1:
        raise ConfigError(f"pseudo-label threshold is {threshold}", hint="use a probability in (0, 1], e.g. 0.9")
    if probs.ndim < 3:
        raise DataError(f"pseudo_labels needs probabilities (N, K, *S), got shape {tuple(probs.shape)}",
                        hint="pass the softmax of segmentation logits")
    top, labels = probs.max(dim=1)  # (N, *S) each
    return torch.where(top >= threshold, labels, torch.full_like(labels, IGNORE_INDEX))
