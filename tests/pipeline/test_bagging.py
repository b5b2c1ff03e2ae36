"""Balanced bagging: balanced resamples per member, seeding, errors, and the bagged
ensemble against its mean member on a seeded 1:20 problem."""

from __future__ import annotations

import doctest

import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, f1_score
from torch.utils.data import TensorDataset

from dlforge.data import load_builtin, prepare
from dlforge.data.imbalance import make_imbalanced
from dlforge.errors import ConfigError, DataError
from dlforge.models import Ensemble, build, build_mlp
from dlforge.train import bagging
from dlforge.pipeline.bagging import bagging_fit, balanced_bagging
from dlforge.train.bagging import balanced_indices

FAST = {"epochs": 1, "batch_size": 16, "device": "cpu"}


def _imbalanced(n: int = 120, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] > 1.0).long()  # about 1 in 6 is class 1
    return TensorDataset(x, y)


def test_balanced_indices_cut_every_class_to_the_smallest() -> None:
    y = torch.tensor([0] * 50 + [1] * 7 + [2] * 20)
    idx = balanced_indices(y, seed=0)
    assert torch.bincount(y[idx]).tolist() == [7, 7, 7]
    assert len(set(idx.tolist())) == len(idx)  # without replacement
    assert set(torch.nonzero(y == 1).flatten().tolist()) <= set(idx.tolist())  # the smallest class in full
    torch.testing.assert_close(balanced_indices(y, seed=0), idx)
    assert not torch.equal(balanced_indices(y, seed=1), idx)
    with pytest.raises(DataError, match="two classes"):
        balanced_indices(torch.zeros(5, dtype=torch.long), seed=0)


def test_each_member_trains_on_its_own_balanced_resample(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    real_fit = bagging.fit

    def recording_fit(model, train, val=None, **kwargs):
        seen.append((train.tensors[1].clone(), kwargs["seed"]))
        return real_fit(model, train, val, **kwargs)

    monkeypatch.setattr(bagging, "fit", recording_fit)
    data = _imbalanced()
    n_minority = int(data.tensors[1].sum())
    ens = balanced_bagging(lambda: build_mlp((4,), 2, hidden=(8,)), data, k=3, fit_kwargs=FAST, seed=10)
    assert isinstance(ens, Ensemble) and len(ens.members) == 3 and not ens.training
    assert [s for _, s in seen] == [10, 11, 12]
    for y, _ in seen:
        assert torch.bincount(y).tolist() == [n_minority, n_minority]


def test_bagging_is_reproducible_and_members_differ() -> None:
    data = _imbalanced()

    def make():
        return balanced_bagging(lambda: build_mlp((4,), 2, hidden=(8,)), data, k=2, fit_kwargs=FAST, seed=3)

    first, second = make(), make()
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert not torch.equal(first.members[0].head.weight, first.members[1].head.weight)


def test_bagging_fit_sums_up_the_members_fit_results() -> None:
    ens, result = bagging_fit(lambda: build_mlp((4,), 2, hidden=(8,)), _imbalanced(), k=2,
                              fit_kwargs={**FAST, "epochs": 2}, seed=0)
    n_minority = int(_imbalanced().tensors[1].sum())
    per_member = 2 * -(-2 * n_minority // FAST["batch_size"])  # epochs x batches of a balanced resample
    assert isinstance(ens, Ensemble) and len(ens.members) == 2
    assert (result.history, result.epochs_run, result.steps, result.stop_reason) == ([], 2, 2 * per_member, None)


def test_bagging_errors() -> None:
    data = _imbalanced()
    new = lambda: build_mlp((4,), 2)  # noqa: E731
    with pytest.raises(ConfigError, match="k is 0"):
        balanced_bagging(new, data, k=0, fit_kwargs=FAST)
    with pytest.raises(ConfigError, match="'seed'"):
        balanced_bagging(new, data, fit_kwargs={**FAST, "seed": 1})
    with pytest.raises(DataError, match="TensorDataset"):
        balanced_bagging(new, [(torch.zeros(4), 0)], fit_kwargs=FAST)
    with pytest.raises(ConfigError, match="not a dlforge model"):
        balanced_bagging(lambda: torch.nn.Linear(4, 2), data, k=1, fit_kwargs=FAST)


def test_the_bagged_ensemble_beats_its_mean_member_on_a_1_to_20_problem() -> None:
    torch.set_num_threads(1)
    prepared = prepare(make_imbalanced(load_builtin("digits"), 8, ratio=1 / 20, seed=0), val=0.15, test=0.3, seed=0)
    x_test, y_test = prepared.test.tensors

    def new_model() -> torch.nn.Module:
        return build({"arch": "mlp", "hidden": [32]}, input_shape=prepared.input_shape, num_outputs=2)

    ens = balanced_bagging(new_model, prepared.train, prepared.val, k=5, seed=0,
                           fit_kwargs={"epochs": 40, "batch_size": 64, "optim": {"name": "adam", "lr": 3e-3},
                                       "device": "cpu"})

    def scores(model: torch.nn.Module) -> tuple[float, float]:
        with torch.no_grad():
            pred = model(x_test).argmax(dim=1).numpy()
        return f1_score(y_test.numpy(), pred, zero_division=0), balanced_accuracy_score(y_test.numpy(), pred)

    ens_f1, ens_balanced = scores(ens)
    member_scores = [scores(m) for m in ens.members]
    mean_f1 = sum(f for f, _ in member_scores) / len(member_scores)
    mean_balanced = sum(b for _, b in member_scores) / len(member_scores)
    print(f"bagged ensemble minority F1 {ens_f1:.3f}, balanced accuracy {ens_balanced:.3f}; "
          f"mean member {mean_f1:.3f}, {mean_balanced:.3f}")
    assert ens_f1 > mean_f1 + 0.03
    assert ens_balanced >= mean_balanced


def test_docstring_examples_run() -> None:
    result = doctest.testmod(bagging, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
