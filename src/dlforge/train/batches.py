"""How an epoch's samples become batches: the seeded visiting order, the batch bounds
(with batch norm, a last batch of one joins the batch before), and the notes a user
should hear about batch sizes.

Example:
    >>> sorted(epoch_permutation(5, seed=0, epoch=1).tolist())
    [0, 1, 2, 3, 4]
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from dlforge.errors import ConfigError, DataError
from dlforge.train.optim import OptimConfig, as_optim_config


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order in which epoch ``epoch`` visits ``n`` samples."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def iterate_batches(
    data: Dataset, order: torch.Tensor, batch_size: int, device: torch.device, *, fold_single: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` batches in ``order``. A TensorDataset is indexed directly (its
    tensors already sit on ``device``); any other Dataset goes through a DataLoader.

    With ``fold_single`` a final batch of one sample joins the batch before it (see
    :func:`fold_single_batch`).

    Example:
        >>> data = TensorDataset(torch.arange(5.0), torch.arange(5))
        >>> [len(y) for _, y in iterate_batches(data, torch.arange(5), 2, torch.device("cpu"), fold_single=True)]
        [2, 3]
    """
    bounds = _batch_bounds(len(order), batch_size, fold_single)
    if isinstance(data, TensorDataset):
        x_all, y_all = data.tensors
        order = order.to(x_all.device)
        for start, end in bounds:
            idx = order[start:end]
            yield x_all[idx], y_all[idx]
        return
    batches = [order[start:end].tolist() for start, end in bounds]
    for xb, yb in DataLoader(data, batch_sampler=batches, num_workers=0):
        yield xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)


def _batch_bounds(n: int, batch_size: int, fold_single: bool) -> list[tuple[int, int]]:
    """``[start, end)`` of each batch of ``n`` visits; a last batch of one may join the one before."""
    starts = list(range(0, n, batch_size))
    if fold_single and len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return list(zip(starts, [*starts[1:], n]))


def has_batch_norm(model: nn.Module) -> bool:
    """True when ``model`` holds a BatchNorm layer (which cannot train on a batch of one)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def fold_single_batch(model: nn.Module, n: int, batch_size: int) -> bool:
    """Whether an epoch of ``n`` samples must fold a final batch of one into the batch before.

    BatchNorm in training mode normalises with the batch's own statistics, and a single
    sample has no variance: PyTorch raises "Expected more than 1 value per channel". So
    with batch norm, a last batch of one sample joins the previous batch (33 samples with
    batch size 32 give one batch of 33): every sample is still seen every epoch, and
    models without batch norm keep the plain PyTorch batching. Raises when no batch of two
    can be formed at all (one training sample, or ``batch_size`` 1 with batch norm).

    Example:
        >>> bn = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        >>> fold_single_batch(bn, 33, 32), fold_single_batch(nn.Linear(3, 4), 33, 32)
        (True, False)
    """
    if not has_batch_norm(model):
        return False
    if n == 1:
        raise DataError("the training set holds 1 sample and the model has batch norm, which needs at least 2 per batch",
                        hint="train on more data (check the data source and data.split), "
                             "or build the model without batch norm")
    if batch_size == 1:
        raise ConfigError("train.batch_size is 1 and the model has batch norm, which needs at least 2 samples per batch",
                          hint="set train.batch_size to 2 or more, or build the model without batch norm")
    return n % batch_size == 1


def epoch_batch_size(optim: str | dict | OptimConfig, n: int, batch_size: int) -> int:
    """The batch size an epoch of ``n`` samples uses: all ``n`` for full-batch ``gd``."""
    return n if as_optim_config(optim).name == "gd" else batch_size


def batch_notes(model: nn.Module, n: int, batch_size: int, optim: str | dict | OptimConfig = "adam") -> list[str]:
    """What a user should hear about how ``n`` training samples are cut into batches;
    raises the errors :func:`fit` would (see :func:`fold_single_batch`).

    Example:
        >>> batch_notes(nn.Linear(3, 2), 50, 1000)
        ['train.batch_size 1000 is larger than the 50 training samples: each epoch is one batch of 50']
    """
    notes = []
    batch_size = epoch_batch_size(optim, n, batch_size)
    if batch_size > n:
        notes.append(f"train.batch_size {batch_size} is larger than the {n} training samples: "
                     f"each epoch is one batch of {n}")
    if fold_single_batch(model, n, batch_size):
        notes.append(f"the last batch would hold 1 sample, which batch norm cannot train on: "
                     f"it joins the batch before it ({batch_size + 1} samples)")
    return notes
