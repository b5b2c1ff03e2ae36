"""Losses for imbalance: focal loss against Lin et al.'s formula, class weights by hand,
weighted cross-entropy against PyTorch, and build_loss's choices and errors."""

from __future__ import annotations

import doctest
import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch.utils.data import TensorDataset

from dlforge.errors import ConfigError, DataError
from dlforge.train import cross_entropy, fit
from dlforge.train import losses
from dlforge.train.losses import CrossEntropy, FocalLoss, LossConfig, build_loss, class_weights


def _p_true(logits: list[float], target: int) -> float:
    """Softmax probability of the target class, by hand."""
    exps = [math.exp(v) for v in logits]
    return exps[target] / sum(exps)


# ----------------------------------------------------------------------------- focal loss

def test_focal_loss_equals_the_formula_on_hand_computed_values() -> None:
    logits = [[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 3.0]]
    targets = [0, 0, 1, 1]
    gamma, alpha = 2.0, 0.25  # Lin et al.'s defaults; alpha weights class 1, 1 - alpha class 0
    by_hand = []
    for row, t in zip(logits, targets):
        p_t = _p_true(row, t)
        alpha_t = alpha if t == 1 else 1 - alpha
        by_hand.append(-alpha_t * (1 - p_t) ** gamma * math.log(p_t))
    expected = sum(by_hand) / len(by_hand)  # mean over the batch

    got = FocalLoss(gamma=gamma, alpha=alpha)(torch.tensor(logits), torch.tensor(targets))
    torch.testing.assert_close(got, torch.tensor(expected))
    # The first sample: p_t = e^2 / (e^2 + 1) = 0.8808, so FL = 0.75 * 0.1192^2 * 0.1269.
    first = FocalLoss(gamma=gamma, alpha=alpha)(torch.tensor(logits[:1]), torch.tensor(targets[:1]))
    assert first.item() == pytest.approx(0.75 * 0.119203**2 * 0.126928, rel=1e-4)


def test_focal_loss_with_per_class_alpha_on_three_classes() -> None:
    logits = [[1.0, 0.5, -0.5], [0.2, 0.1, 2.0]]
    targets = [1, 2]
    alpha, gamma = [0.2, 0.3, 0.5], 1.5
    expected = sum(-alpha[t] * (1 - _p_true(r, t)) ** gamma * math.log(_p_true(r, t))
                   for r, t in zip(logits, targets)) / 2
    got = FocalLoss(gamma=gamma, alpha=alpha)(torch.tensor(logits), torch.tensor(targets))
    torch.testing.assert_close(got, torch.tensor(expected))


def test_focal_loss_without_focusing_is_cross_entropy_values_and_gradients() -> None:
    torch.manual_seed(0)
    logits = torch.randn(16, 5, requires_grad=True)
    target = torch.randint(0, 5, (16,))
    ours = FocalLoss(gamma=0.0, alpha=None)(logits, target)
    (g_ours,) = torch.autograd.grad(ours, logits)
    ref = F.cross_entropy(logits, target)
    (g_ref,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(g_ours, g_ref)


def test_focal_weight_is_a_plain_mean_of_weighted_terms() -> None:
    torch.manual_seed(1)
    logits, target = torch.randn(12, 3), torch.randint(0, 3, (12,))
    weight = torch.tensor([0.5, 1.0, 4.0])
    got = FocalLoss(gamma=0.0, weight=weight)(logits, target)
    expected = F.cross_entropy(logits, target, weight=weight, reduction="none").mean()
    torch.testing.assert_close(got, expected)


def test_focal_loss_soft_targets_match_hard_ones_and_smoothing_matches_torch() -> None:
    torch.manual_seed(2)
    logits, target = torch.randn(10, 4), torch.randint(0, 4, (10,))
    loss = FocalLoss(gamma=2.0, alpha=[0.1, 0.2, 0.3, 0.4])
    torch.testing.assert_close(loss(logits, F.one_hot(target, 4).float()), loss(logits, target))
    smoothed = FocalLoss(gamma=0.0, label_smoothing=0.1)(logits, target)
    torch.testing.assert_close(smoothed, F.cross_entropy(logits, target, label_smoothing=0.1))


def test_focal_loss_skips_ignored_tokens_in_per_token_outputs() -> None:
    torch.manual_seed(3)
    out, target = torch.randn(2, 5, 3), torch.randint(0, 3, (2, 5))
    target[0, :2] = -100
    loss = FocalLoss(gamma=2.0)
    keep = target.flatten() != -100
    expected = loss(out.flatten(0, 1)[keep], target.flatten()[keep])
    torch.testing.assert_close(loss(out, target), expected)
    all_ignored = loss(out, torch.full((2, 5), -100))
    assert all_ignored.item() == 0.0 and all_ignored.requires_grad is False


def test_focal_loss_gradient_is_finite_for_a_certain_sample_with_small_gamma() -> None:
    logits = torch.tensor([[60.0, 0.0]], requires_grad=True)  # p_t rounds to exactly 1
    FocalLoss(gamma=0.5)(logits, torch.tensor([0])).backward()
    assert torch.isfinite(logits.grad).all()


def test_focal_loss_rejects_bad_alpha_and_gamma() -> None:
    with pytest.raises(ConfigError, match="needs 2 classes"):
        FocalLoss(alpha=0.25)(torch.zeros(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="3 entries for 2 classes"):
        FocalLoss(alpha=[0.2, 0.3, 0.5])(torch.zeros(2, 2), torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="gamma"):
        FocalLoss(gamma=-1.0)
    with pytest.raises(ConfigError, match="alpha"):
        FocalLoss(alpha=1.5)


# ----------------------------------------------------------------------------- class weights

def test_inverse_class_weights_match_hand_computation() -> None:
    # N / (K n_c): 100 / (2 * 90) and 100 / (2 * 10)
    torch.testing.assert_close(class_weights([90, 10], "inverse"), torch.tensor([100 / 180, 100 / 20]))
    # 100 / (3 * 50), 100 / (3 * 30), 100 / (3 * 20)
    torch.testing.assert_close(class_weights([50, 30, 20], "inverse"), torch.tensor([2 / 3, 10 / 9, 5 / 3]))
    torch.testing.assert_close(class_weights([7, 7, 7], "inverse"), torch.ones(3))


def test_effective_number_class_weights_match_hand_computation() -> None:
    beta, counts = 0.9, [90, 10]
    raw = [(1 - beta) / (1 - beta**n) for n in counts]  # 1 / effective number of samples
    expected = [w * 2 / sum(raw) for w in raw]  # scaled to sum to K = 2
    got = class_weights(counts, "effective", beta=beta)
    torch.testing.assert_close(got, torch.tensor(expected))
    assert got.sum().item() == pytest.approx(2.0)
    assert [round(v, 4) for v in got.tolist()] == [0.7889, 1.2111]
    torch.testing.assert_close(class_weights([90, 10], "effective", beta=0.0), torch.ones(2))
    # beta -> 1 approaches inverse frequency (both scaled to sum to K)
    near_inverse = class_weights([90, 10], "effective", beta=0.99999)
    inverse = class_weights([90, 10], "inverse")
    torch.testing.assert_close(near_inverse, inverse * 2 / inverse.sum(), rtol=1e-3, atol=1e-3)


def test_class_weights_errors() -> None:
    with pytest.raises(DataError, match="no training samples"):
        class_weights([10, 0], "inverse")
    with pytest.raises(ConfigError, match="class_weights"):
        class_weights([10, 5], "sqrt")
    torch.testing.assert_close(class_weights([10, 0], "none"), torch.ones(2))


# ----------------------------------------------------------------------------- build_loss

def test_weighted_cross_entropy_matches_torch_reference() -> None:
    torch.manual_seed(4)
    logits, target = torch.randn(20, 3), torch.randint(0, 3, (20,))
    counts = [60, 30, 10]
    loss = build_loss({"name": "cross_entropy", "class_weights": "inverse", "label_smoothing": 0.05}, counts)
    assert isinstance(loss, CrossEntropy)
    reference = torch.nn.CrossEntropyLoss(weight=class_weights(counts, "inverse"), label_smoothing=0.05)
    torch.testing.assert_close(loss(logits, target), reference(logits, target))


def test_build_loss_picks_the_configured_loss() -> None:
    assert build_loss("cross_entropy") is cross_entropy  # unchanged default training
    assert isinstance(build_loss("mse"), torch.nn.MSELoss) and isinstance(build_loss("l1"), torch.nn.L1Loss)
    focal = build_loss(LossConfig(name="focal", gamma=1.0, class_weights="effective", beta=0.9), [90, 10])
    assert isinstance(focal, FocalLoss) and focal.gamma == 1.0
    torch.testing.assert_close(focal.weight, class_weights([90, 10], "effective", 0.9))


@pytest.mark.parametrize(("cfg", "counts", "match"), [
    ({"name": "cross_entropy", "gamma": 1.0}, [5, 5], "belong to the focal loss"),
    ({"name": "mse", "class_weights": "inverse"}, None, "regression loss"),
    ({"name": "focal", "alpha": [0.5, 0.5, 0.5]}, [5, 5], "3 entries for 2 classes"),
    ({"name": "focal", "class_weights": "inverse"}, None, "class counts"),
    ({"name": "hinge"}, None, "not a valid loss"),
    ({"name": "focal", "gama": 2}, None, "not a valid loss"),
])
def test_build_loss_errors(cfg: dict, counts: list[int] | None, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_loss(cfg, counts)


def test_loss_config_forbids_unknown_keys_and_out_of_range_values() -> None:
    with pytest.raises(ValidationError):
        LossConfig(name="focal", gama=2.0)
    with pytest.raises(ValidationError):
        LossConfig(beta=1.0)


def test_fit_trains_with_a_focal_loss_on_an_imbalanced_problem() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 4, generator=g)
    y = (x[:, 0] > 1.2).long()  # about 1 in 9 is class 1
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    loss = build_loss({"name": "focal", "class_weights": "inverse"}, torch.bincount(y).tolist())
    result = fit(model, TensorDataset(x, y), epochs=15, batch_size=50, optim={"name": "adam", "lr": 0.05},
                 loss=loss, device="cpu")
    losses_seen = [e["train_loss"] for e in result.history if e.get("type") == "epoch"]
    assert losses_seen[-1] < 0.5 * losses_seen[0]
    recall = (model(x).argmax(1)[y == 1] == 1).float().mean().item()
    assert recall > 0.8


def test_docstring_examples_run() -> None:
    result = doctest.testmod(losses, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# ----------------------------------------------------------------------------- one home

def test_every_loss_and_the_loss_resolution_live_in_losses_py() -> None:
    from dlforge import train

    for name in ("cross_entropy", "resolve_loss", "build_loss", "FocalLoss", "CrossEntropy"):
        assert getattr(losses, name).__module__ == "dlforge.train.losses", name
    assert train.cross_entropy is losses.cross_entropy and train.resolve_loss is losses.resolve_loss


def test_one_ignore_index_for_data_and_train() -> None:
    """Exactly one module assigns IGNORE_INDEX; the masked-LM labels and the losses read it."""
    import ast
    from pathlib import Path

    import dlforge
    from dlforge.data import mlm
    from dlforge.train import IGNORE_INDEX

    root = Path(dlforge.__file__).parent
    homes = [str(p.relative_to(root)) for p in root.rglob("*.py")
             if any(isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "IGNORE_INDEX" for t in node.targets)
                    for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))))]
    assert homes == ["targets.py"]
    assert mlm.IGNORE_INDEX == IGNORE_INDEX == -100  # PyTorch's own default ignore_index


def test_build_loss_takes_none_names_mappings_configs_and_callables() -> None:
    ints, floats = torch.tensor([0, 1]), torch.tensor([[0.5]])
    assert build_loss(None) is cross_entropy and build_loss(None, targets=ints) is cross_entropy
    assert isinstance(build_loss(None, targets=floats), torch.nn.MSELoss)
    custom = torch.nn.SmoothL1Loss()
    assert build_loss(custom) is custom and losses.resolve_loss(custom, floats) is custom
    assert isinstance(losses.resolve_loss({"name": "focal", "gamma": 1.0}, ints), FocalLoss)
    assert isinstance(losses.resolve_loss(LossConfig(name="l1"), floats), torch.nn.L1Loss)


def test_fit_takes_a_loss_config_or_mapping_as_the_pipeline_does() -> None:
    """Before, fit knew only cross_entropy/mse/l1: a focal mapping ended in `unhashable type`."""
    x, y = torch.randn(64, 4, generator=torch.Generator().manual_seed(1)), torch.arange(64) % 2
    trained = []
    for loss in ({"name": "focal", "gamma": 1.0}, LossConfig(name="focal", gamma=1.0), FocalLoss(gamma=1.0)):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 2)
        fit(model, TensorDataset(x, y), epochs=2, batch_size=16, optim="sgd", loss=loss, device="cpu")
        trained.append(model.weight.detach().clone())
    torch.testing.assert_close(trained[0], trained[2], rtol=0, atol=0)
    torch.testing.assert_close(trained[1], trained[2], rtol=0, atol=0)


def test_cross_entropy_matches_torch_per_token_with_ignored_targets_values_and_gradients() -> None:
    torch.manual_seed(3)
    logits = torch.randn(2, 5, 7, requires_grad=True)  # (B, T, C)
    target = torch.randint(0, 7, (2, 5))
    target[0, 1] = target[1, 4] = -100  # unscored tokens
    ours = cross_entropy(logits, target)
    ours.backward()
    grad, logits.grad = logits.grad.clone(), None
    reference = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100)
    reference.backward()
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(grad, logits.grad)
