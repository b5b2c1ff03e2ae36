"""Knowledge distillation: a small student learns from a trained teacher's soft outputs.

:func:`teacher_targets` runs the teacher once over a dataset and packs, per sample, the
hard label and the teacher's logits into one float target (B, 1 + K) (see
:class:`dlforge.train.losses.DistillationLoss`); :func:`distill` trains the student on
those targets with :func:`dlforge.train.fit`. The teacher runs once, not every epoch: its
outputs are fixed, so only the student's forward and backward pass cost time per step.

Teacher outputs are taken as logits. A :class:`dlforge.models.ensemble.Ensemble` returns
log-probabilities (B, K), which ARE logits of the combined distribution (softmax of log p
is p), so an ensemble teacher needs no conversion and ``softmax(output / T)`` softens it
exactly as it would any classifier's logits.

Example:
    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> x, y = torch.randn(40, 4), torch.randint(0, 3, (40,))
    >>> teacher, student = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    >>> result = distill(teacher, student, TensorDataset(x, y), epochs=1, batch_size=8, device="cpu")
    >>> result.epochs_run
    1
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from dlforge.errors import ConfigError, DataError
from dlforge.targets import IGNORE_INDEX
from dlforge.train import FitResult, fit
from dlforge.train.losses import DistillationLoss


def _inputs_and_labels(dataset: Dataset, batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """All inputs (N, ...) and integer labels (N,) of ``dataset``; labels are None when its
    samples carry none (a TensorDataset of inputs only)."""
    if isinstance(dataset, TensorDataset):
        if len(dataset.tensors) == 1:
            return dataset.tensors[0], None
        return dataset.tensors[0], dataset.tensors[1]
    xs, ys = [], []
    for xb, yb in DataLoader(dataset, batch_size=batch_size):
        xs.append(xb)
        ys.append(yb)
    return torch.cat(xs), torch.cat(ys)


def teacher_targets(teacher: nn.Module, dataset: Dataset, *, batch_size: int = 256) -> TensorDataset:
    """``TensorDataset(x, packed)``: the inputs of ``dataset`` with targets (N, 1 + K) =
    [hard label, teacher logits...], computed once with the teacher in eval mode, no grad.

    ``dataset`` yields ``(x, label)`` pairs, or is a ``TensorDataset(x)`` of inputs only
    (a transfer set): its hard labels are then ``IGNORE_INDEX`` and only the soft term of
    :class:`~dlforge.train.losses.DistillationLoss` applies to it. The teacher's training
    mode is restored afterwards.

    Example:
        >>> import torch
        >>> data = TensorDataset(torch.randn(5, 4), torch.tensor([0, 2, 1, 0, 2]))
        >>> packed = teacher_targets(torch.nn.Linear(4, 3), data).tensors[1]
        >>> packed.shape, packed[:, 0].tolist()
        (torch.Size([5, 4]), [0.0, 2.0, 1.0, 0.0, 2.0])
    """
    if len(dataset) == 0:
        raise DataError("the distillation dataset is empty", hint="check data.split and the data source")
    x, labels = _inputs_and_labels(dataset, batch_size)
    if labels is not None and (torch.is_floating_point(labels) or labels.ndim != 1):
        raise DataError(f"distillation needs class-index labels (N,), got {labels.dtype} {tuple(labels.shape)}",
                        hint="distil classifiers only: the labels must be integer class indices")
    device = next(teacher.parameters(), torch.empty(0)).device
    was_training = teacher.training
    teacher.eval()
    with torch.no_grad():
        logits = torch.cat([teacher(x[i : i + batch_size].to(device)).float().cpu()
                            for i in range(0, len(x), batch_size)])  # (N, K)
    teacher.train(was_training)
    if logits.ndim != 2:
        raise DataError(f"the teacher's outputs have shape {tuple(logits.shape)}",
                        hint="distillation needs a classifier teacher with (B, K) logits")
    hard = torch.full((len(x),), float(IGNORE_INDEX)) if labels is None else labels.float()  # (N,)
    return TensorDataset(x, torch.cat([hard[:, None], logits], dim=1).to(x.device))  # (N, 1 + K)


def distill(
    teacher: nn.Module, student: nn.Module, train: Dataset, val: Dataset | None = None, *,
    temperature: float = 4.0, alpha: float = 0.1, transfer: Dataset | None = None, **fit_kwargs: Any,
) -> FitResult:
    """Train ``student`` to match ``teacher`` on ``train`` (plus an optional ``transfer``
    set), with :class:`~dlforge.train.losses.DistillationLoss` and :func:`dlforge.train.fit`.

    ``alpha`` weighs the hard labels and ``1 - alpha`` the teacher's outputs softened at
    ``temperature`` (``alpha=1`` is plain training: the same weights as ``fit`` with the
    same seed). ``transfer`` is a dataset of inputs (``TensorDataset(x)``) or labelled
    pairs the teacher labels too; it is appended after ``train``. ``val`` stays a plain
    labelled set: its loss is the student's cross-entropy and its accuracy is logged.
    ``fit_kwargs`` go to :func:`dlforge.train.fit` (epochs, batch_size, optim, seed, ...).

    Example:
        >>> import torch
        >>> x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
        >>> data = TensorDataset(x, y)
        >>> res = distill(torch.nn.Linear(4, 2), torch.nn.Linear(4, 2), data, data, alpha=0.5, epochs=1, device="cpu")
        >>> "val_accuracy" in res.epochs[-1]
        True
    """
    if "loss" in fit_kwargs:
        raise ConfigError("distill sets the loss itself", hint="remove loss=...; tune temperature and alpha instead")
    loss = DistillationLoss(temperature=temperature, alpha=alpha)
    packed = teacher_targets(teacher, train)
    if transfer is not None:
        extra = teacher_targets(teacher, transfer)
        if extra.tensors[1].shape[1] != packed.tensors[1].shape[1]:
            raise DataError("the transfer set's teacher outputs have a different number of classes")
        packed = TensorDataset(*(torch.cat([a, b]) for a, b in zip(packed.tensors, extra.tensors)))
    return fit(student, packed, val, loss=loss, **fit_kwargs)


__all__ = ["distill", "teacher_targets"]
