"""Balanced bagging's training: k members, each fit on its own class-balanced resample.

Member ``i`` sees every sample of the smallest class and an equally large random draw
(without replacement, seeded ``seed + i``) from every other class, so each member trains
on balanced data, and together the members still see most of the majority class.
Averaging them into one model (an ensemble, as imbalanced-learn's
``BalancedBaggingClassifier``) is :func:`dlforge.pipeline.bagging.balanced_bagging`'s
work: train builds no models, it trains the ones it is given.

Example:
    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> x = torch.randn(120, 4)
    >>> y = (x[:, 0] > 1.0).long()  # about 1 in 6 is class 1
    >>> trained = bagging_members(lambda: torch.nn.Linear(4, 2), TensorDataset(x, y), k=3,
    ...                           fit_kwargs={"epochs": 2, "device": "cpu"})
    >>> [result.epochs_run for _, result in trained]
    [2, 2, 2]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from dlforge.errors import ConfigError, DataError
from dlforge.train.callbacks import Callback
from dlforge.train.engine import fit
from dlforge.train.state import FitResult

RESERVED = ("seed", "order", "callbacks")  # set per member, never shared through fit_kwargs


def balanced_indices(y: torch.Tensor, seed: int) -> torch.Tensor:
    """Indices of a random under-sample with every class cut to the smallest class's size.

    Example:
        >>> y = torch.tensor([0, 0, 0, 0, 1, 1])
        >>> torch.bincount(y[balanced_indices(y, seed=0)]).tolist()
        [2, 2]
    """
    y = y.reshape(-1).long().cpu()
    counts = torch.bincount(y)
    present = torch.nonzero(counts).flatten().tolist()
    if len(present) < 2:
        raise DataError("balanced bagging needs at least two classes in the training set")
    n_min = int(counts[present].min())
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in present:
        members = torch.nonzero(y == c).flatten()  # (n_c,)
        picks.append(members[torch.randperm(len(members), generator=g)[:n_min]])
    return torch.cat(picks).sort().values


def bagging_members(
    build_member: Callable[[], nn.Module],
    train: TensorDataset,
    val: Dataset | None = None,
    *,
    k: int = 5,
    fit_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
    callbacks: Callable[[int], Sequence[Callback]] | None = None,
) -> list[tuple[nn.Module, FitResult]]:
    """Train ``k`` fresh members on balanced resamples of ``train``; return each (in eval
    mode) with its fit result.

    ``build_member()`` returns a new, untrained model. ``fit_kwargs`` go to
    :func:`dlforge.train.fit` for every member (epochs, batch_size, optim, ...); member
    ``i`` trains with ``seed + i``, which seeds its resample, its initial weights (the
    global RNG is seeded before ``build_member``) and its batch order. ``callbacks(i)``
    gives member ``i`` its own callbacks (early stopping keeps per-training state, so
    members never share them). ``val`` (the real, imbalanced validation split) is passed
    to ``fit`` so each member's history reports it.

    Example:
        >>> balanced_indices(torch.tensor([1, 0, 0, 0]), seed=0).tolist()
        [0, 3]
    """
    if k < 1:
        raise ConfigError(f"balanced bagging k is {k}", hint="use at least 1 member, e.g. 5")
    if not isinstance(train, TensorDataset):
        raise DataError("balanced bagging needs a TensorDataset(x, y) training set",
                        hint="use Prepared.train or TensorDataset(x, y)")
    fit_kwargs = dict(fit_kwargs or {})
    for reserved in RESERVED:
        if reserved in fit_kwargs:
            raise ConfigError(f"fit_kwargs may not set {reserved!r}: bagging sets it per member",
                              hint=f"pass {reserved}= to the bagging function instead")
    x, y = train.tensors[:2]
    trained = []
    for i in range(k):
        idx = balanced_indices(y, seed + i).to(y.device)  # (n_min * K,)
        torch.manual_seed(seed + i)  # distinct initial weights per member, reproducibly
        member = build_member()
        result = fit(member, TensorDataset(x[idx], y[idx]), val, seed=seed + i,
                     callbacks=callbacks(i) if callbacks is not None else (), **fit_kwargs)
        trained.append((member.eval(), result))
    return trained


__all__ = ["bagging_members", "balanced_indices"]
