"""Balanced bagging: k models, each trained on its own class-balanced resample.

Member ``i`` sees every sample of the smallest class and an equally large random draw
(without replacement, seeded ``seed + i``) from every other class, so each member trains
on balanced data, and together the members still see most of the majority class. Their
averaged probabilities (an :class:`~dlforge.models.ensemble.Ensemble`) are the prediction,
as in imbalanced-learn's ``BalancedBaggingClassifier``.

Example:
    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> from dlforge.models import build
    >>> x = torch.randn(120, 4)
    >>> y = (x[:, 0] > 1.0).long()  # about 1 in 6 is class 1
    >>> ens = balanced_bagging(lambda: build({"arch": "mlp", "hidden": [8]}, input_shape=(4,), num_outputs=2),
    ...                        TensorDataset(x, y), k=3, fit_kwargs={"epochs": 2, "device": "cpu"})
    >>> len(ens.members)
    3
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from dlforge.errors import ConfigError, DataError
from dlforge.train.engine import fit


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


def balanced_bagging(
    build_member: Callable[[], nn.Module],
    train: TensorDataset,
    val: Dataset | None = None,
    *,
    k: int = 5,
    fit_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
    mode: str = "average",
) -> nn.Module:
    """Train ``k`` fresh members on balanced resamples of ``train``; return their Ensemble.

    ``build_member()`` returns a new, untrained dlforge model (built with
    :func:`dlforge.models.build`, so the ensemble can be saved). ``fit_kwargs`` go to
    :func:`dlforge.train.fit` for every member (epochs, batch_size, optim, ...); member
    ``i`` trains with ``seed + i``, which seeds its resample, its initial weights (the
    global RNG is seeded before ``build_member``) and its batch order. ``val`` (the real,
    imbalanced validation split) is passed to ``fit`` so each member's history reports it.

    Example:
        >>> balanced_indices(torch.tensor([1, 0, 0, 0]), seed=0).tolist()
        [0, 3]
    """
    from dlforge.models.ensemble import from_models  # the returned type; members come from build_member

    if k < 1:
        raise ConfigError(f"balanced bagging k is {k}", hint="use at least 1 member, e.g. 5")
    if not isinstance(train, TensorDataset):
        raise DataError("balanced bagging needs a TensorDataset(x, y) training set",
                        hint="use Prepared.train or TensorDataset(x, y)")
    fit_kwargs = dict(fit_kwargs or {})
    for reserved in ("seed", "order"):
        if reserved in fit_kwargs:
            raise ConfigError(f"fit_kwargs may not set {reserved!r}: bagging sets it per member",
                              hint="pass seed= to balanced_bagging instead")
    x, y = train.tensors[:2]
    members = []
    for i in range(k):
        idx = balanced_indices(y, seed + i).to(y.device)  # (n_min * K,)
        torch.manual_seed(seed + i)  # distinct initial weights per member, reproducibly
        member = build_member()
        fit(member, TensorDataset(x[idx], y[idx]), val, seed=seed + i, **fit_kwargs)
        members.append(member.eval())
    return from_models(members, mode=mode).eval()


__all__ = ["balanced_bagging", "balanced_indices"]
