"""Balanced bagging as one model: k members on class-balanced under-samples, averaged.

:func:`dlforge.train.bagging.bagging_members` trains the members; here they become an
:class:`~dlforge.models.ensemble.Ensemble` (averaged probabilities, as imbalanced-learn's
``BalancedBaggingClassifier``), which saves and loads as one artifact, and their fit results
one summary (:func:`bagging_fit`). A config's ``data.imbalance.bagging`` reaches this through
:func:`dlforge.pipeline.fit_options.fit_config`.

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

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn
from torch.utils.data import Dataset, TensorDataset

from dlforge.models import from_models
from dlforge.train.bagging import bagging_members
from dlforge.train.callbacks import Callback
from dlforge.train.state import FitResult


def balanced_bagging(
    build_member: Callable[[], nn.Module],
    train: TensorDataset,
    val: Dataset | None = None,
    *,
    k: int = 5,
    fit_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
    mode: str = "average",
    callbacks: Callable[[int], Sequence[Callback]] | None = None,
) -> nn.Module:
    """Train ``k`` fresh members on balanced resamples of ``train``; return their Ensemble.

    ``build_member()`` returns a new, untrained dlforge model (built with
    :func:`dlforge.models.build`, so the ensemble can be saved); the other arguments are
    :func:`~dlforge.train.bagging.bagging_members`'s. ``mode`` combines the members
    (``average`` probabilities or majority ``vote``).

    Example:
        >>> ens = balanced_bagging(new_model, prepared.train, prepared.val, k=5)  # doctest: +SKIP
        >>> ens(x).exp().sum(dim=1)  # doctest: +SKIP
        tensor([1., 1., ...])
    """
    return bagging_fit(build_member, train, val, k=k, fit_kwargs=fit_kwargs, seed=seed, mode=mode,
                       callbacks=callbacks)[0]


def bagging_fit(
    build_member: Callable[[], nn.Module],
    train: TensorDataset,
    val: Dataset | None = None,
    *,
    k: int = 5,
    fit_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
    mode: str = "average",
    callbacks: Callable[[int], Sequence[Callback]] | None = None,
) -> tuple[nn.Module, FitResult]:
    """:func:`balanced_bagging`, and one fit result for all members: no shared history,
    the longest member's epochs, every member's steps, and the first member's stop reason
    (a diverged member's ``non_finite`` first) and NaN report.

    Example:
        >>> ens, result = bagging_fit(new_model, prepared.train, k=3, fit_kwargs={"epochs": 5})  # doctest: +SKIP
        >>> result.epochs_run, result.steps  # doctest: +SKIP
        (5, 45)
    """
    trained = bagging_members(build_member, train, val, k=k, fit_kwargs=fit_kwargs, seed=seed, callbacks=callbacks)
    results = [result for _, result in trained]
    reasons = sorted({r.stop_reason for r in results} - {None}, key=lambda reason: reason != "non_finite")
    summary = FitResult(history=[], epochs_run=max(r.epochs_run for r in results), steps=sum(r.steps for r in results),
                        stop_reason=reasons[0] if reasons else None,
                        nan_report=next((r.nan_report for r in results if r.nan_report), None))
    return from_models([member for member, _ in trained], mode=mode).eval(), summary


__all__ = ["bagging_fit", "balanced_bagging"]
