"""fit() against a hand-written PyTorch loop: same seed, same data order, same weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from dlforge.errors import ConfigError, DataError
from dlforge.train import epoch_permutation, fit, seed_everything

from .conftest import make_data, make_model

SEED = 7


def reference_loop(model, data, *, epochs, batch_size, make_opt, l1=0.0, clip_norm=None, clip_value=None):
    """The plain loop every PyTorch user writes, visiting data in fit's documented order."""
    seed_everything(SEED)
    opt = make_opt(model.parameters())
    x, y = data.tensors
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        model.train()
        order = epoch_permutation(len(x), SEED, epoch)
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            loss = loss_fn(model(x[idx]), y[idx])
            if l1:
                loss = loss + l1 * sum(p.abs().sum() for p in model.parameters() if p.ndim > 1)
            loss.backward()
            if clip_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
            if clip_value is not None:
                nn.utils.clip_grad_value_(model.parameters(), clip_value)
            opt.step()
            opt.zero_grad(set_to_none=True)
    return model


OPTIMIZERS = {
    "sgd": (dict(name="sgd", lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    "momentum": (dict(name="momentum", lr=0.05), lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
    "nesterov": (dict(name="momentum", lr=0.05, nesterov=True), lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True)),
    "adam": (dict(name="adam", lr=0.01, weight_decay=1e-3), lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=1e-3)),
    "adamw": (dict(name="adamw", lr=0.01, weight_decay=0.1), lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1)),
    "rmsprop": (dict(name="rmsprop", lr=0.01), lambda p: torch.optim.RMSprop(p, lr=0.01)),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_fit_equals_hand_written_loop(name):
    cfg, make_opt = OPTIMIZERS[name]
    data = make_data()
    ours = make_model(dropout=0.2)
    fit(ours, data, epochs=3, batch_size=16, optim=cfg, seed=SEED, device="cpu")
    ref = reference_loop(make_model(dropout=0.2), data, epochs=3, batch_size=16, make_opt=make_opt)
    for a, b in zip(ours.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)


def test_gd_is_full_batch_sgd():
    data = make_data()
    ours = make_model()
    result = fit(ours, data, epochs=4, batch_size=8, optim={"name": "gd", "lr": 0.2}, seed=SEED, device="cpu")
    assert result.steps == 4  # one step per epoch, whatever batch_size says
    ref = reference_loop(make_model(), data, epochs=4, batch_size=len(data), make_opt=lambda p: torch.optim.SGD(p, lr=0.2))
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def test_l1_and_clipping_match_reference():
    data = make_data()
    ours = make_model()
    fit(ours, data, epochs=2, batch_size=16, optim={"name": "sgd", "lr": 0.5, "l1": 1e-3},
        clip_grad_norm=0.5, clip_grad_value=0.05, seed=SEED, device="cpu")
    ref = reference_loop(make_model(), data, epochs=2, batch_size=16, make_opt=lambda p: torch.optim.SGD(p, lr=0.5),
                         l1=1e-3, clip_norm=0.5, clip_value=0.05)
    for a, b in zip(ours.parameters(), ref.parameters()):
        assert torch.equal(a, b)


def test_l1_drives_weights_towards_zero():
    data = make_data()
    plain, sparse = make_model(), make_model()
    fit(plain, data, epochs=20, batch_size=32, optim={"name": "adam", "lr": 0.01}, device="cpu")
    fit(sparse, data, epochs=20, batch_size=32, optim={"name": "adam", "lr": 0.01, "l1": 0.01}, device="cpu")
    assert sparse[0].weight.abs().sum() < 0.7 * plain[0].weight.abs().sum()


def test_adamw_decay_is_decoupled_from_adam_l2():
    data = make_data()
    a, b = make_model(), make_model()
    fit(a, data, epochs=2, optim={"name": "adam", "lr": 0.01, "weight_decay": 0.1}, device="cpu")
    fit(b, data, epochs=2, optim={"name": "adamw", "lr": 0.01, "weight_decay": 0.1}, device="cpu")
    assert not torch.equal(a[0].weight, b[0].weight)


def test_gradient_accumulation_equals_bigger_batch():
    data = make_data(n=64)
    small, big = make_model(), make_model()
    # SGD on the mean loss: two half-batches averaged give the full batch's gradient.
    fit(small, data, epochs=2, batch_size=16, accumulate=2, optim={"name": "sgd", "lr": 0.3}, seed=1, device="cpu")
    fit(big, data, epochs=2, batch_size=32, optim={"name": "sgd", "lr": 0.3}, seed=1, device="cpu")
    for p, q in zip(small.parameters(), big.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_same_seed_is_bit_for_bit_repeatable():
    data = make_data()
    runs = []
    for _ in range(2):
        model = make_model(dropout=0.5)
        result = fit(model, data, data, epochs=3, batch_size=16, seed=3, device="cpu")
        runs.append((model.state_dict(), [r["train_loss"] for r in result.epochs]))
    assert runs[0][1] == runs[1][1]
    for a, b in zip(runs[0][0].values(), runs[1][0].values()):
        assert torch.equal(a, b)


def test_bf16_autocast_trains():
    data = make_data()
    model = make_model()
    result = fit(model, data, data, epochs=15, batch_size=16, optim={"name": "adam", "lr": 0.01}, precision="bf16", device="cpu")
    assert result.final["val_loss"] < result.epochs[0]["val_loss"]
    assert model[0].weight.dtype == torch.float32  # autocast leaves the master weights in fp32


def test_fp16_on_cpu_is_a_clear_error():
    with pytest.raises(ConfigError, match="CUDA"):
        fit(make_model(), make_data(), precision="fp16", device="cpu")


def test_regression_targets_use_mse_and_learn():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 3, generator=g)
    y = (x @ torch.tensor([[1.0], [-2.0], [0.5]]))
    model = nn.Linear(3, 1)
    result = fit(model, TensorDataset(x, y), TensorDataset(x, y), epochs=30, batch_size=32,
                 optim={"name": "adam", "lr": 0.05}, device="cpu")
    assert "train_accuracy" not in result.final
    assert result.final["val_loss"] < 0.01


class ListDataset(Dataset):
    def __init__(self, base: TensorDataset):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        return self.base[i]


def test_generic_dataset_goes_through_dataloader_in_same_order():
    data = make_data()
    a, b = make_model(), make_model()
    fit(a, data, epochs=2, batch_size=16, optim="sgd", device="cpu")
    fit(b, ListDataset(data), epochs=2, batch_size=16, optim="sgd", device="cpu")
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(optim={"name": "lbfgs"}), "name"),
        (dict(optim={"name": "adam", "lr": -1}), "lr"),
        (dict(optim={"name": "adam", "learning_rate": 0.1}), "learning_rate"),
        (dict(precision="fp8"), "precision"),
        (dict(epochs=0), "epochs"),
        (dict(loss="hinge"), "train.loss"),
    ],
)
def test_bad_settings_name_the_key(kwargs, error):
    with pytest.raises(ValueError, match=error):
        fit(make_model(), make_data(), device="cpu", **kwargs)


def test_non_finite_inputs_are_rejected_before_training():
    x, y = make_data().tensors
    x = x.clone()
    x[3, 1] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        fit(make_model(), TensorDataset(x, y), device="cpu")


def test_empty_training_set_is_rejected():
    with pytest.raises(DataError, match="empty"):
        fit(make_model(), TensorDataset(torch.zeros(0, 6), torch.zeros(0, dtype=torch.long)), device="cpu")
