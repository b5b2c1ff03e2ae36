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


# 64 samples: groups of two batches of 16; 48: two groups, then one batch of 16 left, which
# the last step averages alone (it once divided it by 2 and halved that step).
@pytest.mark.parametrize("n", [64, 48])
def test_gradient_accumulation_equals_bigger_batch(n):
    data = make_data(n=n)
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


# ----------------------------------------------------------------------------- odd sizes

def bn_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def training_batch_sizes(model: nn.Module) -> list[int]:
    """A list that fills with the size of every batch ``model`` trains on."""
    sizes: list[int] = []
    model.register_forward_pre_hook(lambda m, args: sizes.append(len(args[0])) if m.training else None)
    return sizes


def test_batch_norm_folds_a_last_batch_of_one_into_the_batch_before():
    model = bn_model()
    sizes = training_batch_sizes(model)
    result = fit(model, make_data(n=33), epochs=2, batch_size=32, device="cpu")
    assert sizes == [33, 33]  # every sample seen every epoch, in one batch
    assert result.steps == 2


def test_batch_norm_fold_through_a_dataloader():
    model = bn_model()
    sizes = training_batch_sizes(model)
    fit(model, ListDataset(make_data(n=17)), epochs=1, batch_size=8, device="cpu")
    assert sizes == [8, 9]


def test_without_batch_norm_a_last_batch_of_one_is_kept():
    model = make_model()
    sizes = training_batch_sizes(model)
    fit(model, make_data(n=33), epochs=1, batch_size=32, device="cpu")
    assert sizes == [32, 1]  # plain PyTorch batching: the parity tests above rely on it


def test_batch_norm_fold_resumes_mid_epoch_bit_identical(tmp_path):
    from dlforge.train import Callback, Checkpoint

    class Crash(Exception):
        pass

    class CrashAt(Callback):
        def on_step_end(self, state):
            if state.step == 5:
                raise Crash

    data = make_data(n=49)  # batches of 8: six of them, the last holding 8 + 1 samples

    def run(callbacks=(), resume=None):
        model = bn_model()
        result = fit(model, data, epochs=3, batch_size=8, accumulate=2, seed=4, optim={"name": "sgd", "lr": 0.1},
                     callbacks=list(callbacks), resume=resume, device="cpu")
        return model, result

    ref, ref_result = run()
    assert ref_result.steps == 9  # 6 batches, 3 steps per epoch
    with pytest.raises(Crash):
        run([Checkpoint(tmp_path, every_n_steps=2, async_write=False), CrashAt()])
    model, result = run(resume=tmp_path)  # from step 4: mid-epoch 1, before the folded batch
    assert result.steps == 9
    for a, b in zip(model.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)


def test_batch_norm_on_one_training_sample_is_a_data_error():
    with pytest.raises(DataError, match="1 sample") as err:
        fit(bn_model(), make_data(n=1), epochs=1, batch_size=32, device="cpu")
    assert "batch norm" in err.value.hint


def test_batch_norm_with_batch_size_one_names_the_key():
    with pytest.raises(ConfigError, match="train.batch_size"):
        fit(bn_model(), make_data(n=10), epochs=1, batch_size=1, device="cpu")


def test_batch_larger_than_the_data_is_one_full_batch_like_gd():
    data = make_data(n=50)
    big, gd, big_accumulated = make_model(), make_model(), make_model()
    result = fit(big, data, epochs=3, batch_size=1000, optim={"name": "sgd", "lr": 0.3}, device="cpu")
    fit(gd, data, epochs=3, optim={"name": "gd", "lr": 0.3}, device="cpu")
    # accumulate has one batch to sum per step here: the gradient must not be divided by 2
    fit(big_accumulated, data, epochs=3, batch_size=1000, accumulate=2, optim={"name": "sgd", "lr": 0.3}, device="cpu")
    assert result.steps == 3
    for p, q, r in zip(big.parameters(), gd.parameters(), big_accumulated.parameters()):
        torch.testing.assert_close(p, q)
        torch.testing.assert_close(p, r)


def test_batch_notes_say_what_batching_does():
    from dlforge.train import batch_notes

    (note,) = batch_notes(make_model(), 50, 1000)
    assert "1000" in note and "50 training samples" in note
    assert batch_notes(make_model(), 50, 32, {"name": "gd"}) == []  # gd asks for the full batch
    assert batch_notes(make_model(), 33, 32) == []
    (folded,) = batch_notes(bn_model(), 33, 32)
    assert "joins the batch before it" in folded


# ----------------------------------------------------------------------------- devices

@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch has CUDA")
def test_cuda_on_a_cpu_only_torch_is_a_config_error():
    from dlforge.train import select_device

    with pytest.raises(ConfigError, match="train.device is 'cuda'") as err:
        select_device("cuda")
    assert "cpu" in err.value.hint and "auto" in err.value.hint
    with pytest.raises(ConfigError, match="train.device"):
        fit(make_model(), make_data(), epochs=1, device="cuda")


@pytest.mark.parametrize("name", ["gpu", "cuda:{n}", "meta"])
def test_a_device_this_machine_lacks_is_a_config_error(name):
    from dlforge.train import available_devices, select_device

    name = name.format(n=torch.cuda.device_count())  # one past the last GPU (or cuda:0 with none)
    with pytest.raises(ConfigError, match="train.device") as err:
        select_device(name)
    assert ", ".join(available_devices()) in err.value.hint


def test_available_devices_are_all_accepted():
    from dlforge.train import available_devices, select_device

    names = available_devices()
    assert names[:2] == ["auto", "cpu"]
    for name in names:
        select_device(name)
