"""Iterative prune-retrain: geometric schedule, masks held during retraining, rewinding."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune
from torch.utils.data import TensorDataset

from dlforge.compress.prune_schedule import geometric_keep, iterative_prune
from dlforge.errors import ConfigError
from dlforge.registry import load_artifact, save_artifact
from dlforge.models import build
from dlforge.train import Callback

FIT = {"batch_size": 32, "optim": {"name": "adam", "lr": 0.01}, "device": "cpu", "seed": 0}


def _data(n: int = 128, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return TensorDataset(x, (x[:, 0] + x[:, 1] > 0).long())


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))


def test_geometric_schedule_removes_the_same_share_each_step() -> None:
    assert geometric_keep(1000, 0.875, 3) == [500, 250, 125]
    assert geometric_keep(130, 0.9, 1) == [13]
    keep = geometric_keep(10_000, 0.8, 4)
    ratios = [b / a for a, b in zip([10_000, *keep], keep)]
    assert max(ratios) - min(ratios) < 1e-3  # (1 - 0.8) ** (1 / 4) each time


def test_global_rounds_match_torch_and_end_at_target() -> None:
    model = _net()
    history = iterative_prune(model, _data(), _data(seed=1), target=0.8, steps=3, epochs_per_step=1, **FIT)
    total = 6 * 16 + 16 * 2  # 128 weights
    assert [r["step"] for r in history.rows] == [0, 1, 2, 3]
    assert [r["sparsity"] for r in history.rows] == [0.0] + [1 - k / total for k in geometric_keep(total, 0.8, 3)]
    assert history.final_sparsity == pytest.approx(0.8, abs=1 / total)
    assert {"val_loss", "val_accuracy", "pruned_val_loss", "pruned_val_accuracy"} <= set(history.rows[1])
    zeros = int((model[0].weight == 0).sum() + (model[2].weight == 0).sum())
    assert zeros == total - geometric_keep(total, 0.8, 3)[-1]
    # masks are permanent: plain parameter names, no hooks left
    assert set(model.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert not any(prune.is_pruned(m) for m in model.modules())


def test_one_round_masks_equal_torch_global_unstructured() -> None:
    """After the dense training, the first prune ranks weights exactly as torch does."""
    class Stop(Callback):  # capture the weights the first prune sees (the dense model, trained)
        seen = None

        def on_fit_end(self, state) -> None:
            if Stop.seen is None:
                Stop.seen = copy.deepcopy(state.model)

    model = _net()
    iterative_prune(model, _data(), None, target=0.5, steps=1, epochs_per_step=1, callbacks=[Stop()], **FIT)
    reference = Stop.seen
    prune.global_unstructured([(reference[0], "weight"), (reference[2], "weight")],
                              pruning_method=prune.L1Unstructured, amount=0.5)
    assert torch.equal(model[0].weight == 0, reference[0].weight_mask == 0)
    assert torch.equal(model[2].weight == 0, reference[2].weight_mask == 0)


def test_pruned_weights_stay_zero_while_retraining() -> None:
    class Watch(Callback):
        zeros: list[int] = []

        def on_step_end(self, state) -> None:
            m = state.model[0]
            if prune.is_pruned(m):
                pruned = m.weight_mask == 0
                Watch.zeros.append(int((m.weight[pruned] != 0).sum()))
                assert m.weight_orig.grad is None or torch.all(m.weight_orig.grad[pruned] == 0)

    iterative_prune(_net(), _data(), None, target=0.6, steps=2, epochs_per_step=2, callbacks=[Watch()], **FIT)
    assert Watch.zeros and set(Watch.zeros) == {0}


def test_layer_scope_prunes_each_layer_to_target() -> None:
    model = _net()
    history = iterative_prune(model, _data(), None, target=0.75, steps=2, epochs_per_step=1, scope="layer", **FIT)
    assert int((model[0].weight == 0).sum()) == 96 - geometric_keep(96, 0.75, 2)[-1]
    assert int((model[2].weight == 0).sum()) == 32 - geometric_keep(32, 0.75, 2)[-1]
    assert history.final_sparsity == 0.75


def test_rewind_restores_surviving_weights_to_initialisation() -> None:
    """After pruning, retraining starts from the initial values of the survivors, with the
    pruned weights zero (Frankle and Carbin's ticket)."""
    model = _net()
    init = copy.deepcopy(model.state_dict())

    class Start(Callback):  # the weights each training starts from
        seen: list[dict] = []

        def on_fit_start(self, state) -> None:
            m = state.model[0]  # m.weight is refreshed only by the next forward: read the source
            w = m.weight_orig * m.weight_mask if prune.is_pruned(m) else m.weight
            Start.seen.append({"w": w.detach().clone(), "b": m.bias.detach().clone()})

    iterative_prune(model, _data(), None, target=0.5, steps=1, epochs_per_step=1, rewind=True,
                    callbacks=[Start()], **FIT)
    start = Start.seen[1]
    kept = start["w"] != 0
    assert torch.equal(start["w"][kept], init["0.weight"][kept])
    assert torch.equal(start["b"], init["0.bias"])
    assert torch.equal(kept, model[0].weight != 0)  # the same mask at the end
    assert not torch.equal(model[0].weight[kept], init["0.weight"][kept])  # and retrained


def test_rewind_to_an_early_step_and_beyond_training_is_refused() -> None:
    model = _net()
    history = iterative_prune(model, _data(), _data(seed=1), target=0.5, steps=1, epochs_per_step=1,
                              rewind=True, rewind_step=2, **FIT)
    assert history.final_sparsity == 0.5
    with pytest.raises(ConfigError, match="rewind_step=999"):
        iterative_prune(_net(), _data(), None, target=0.5, steps=1, epochs_per_step=1, rewind=True,
                        rewind_step=999, **FIT)


def test_bad_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="amount"):
        iterative_prune(_net(), _data(), None, target=1.0, steps=2, epochs_per_step=1, **FIT)
    with pytest.raises(ConfigError, match="steps"):
        iterative_prune(_net(), _data(), None, target=0.5, steps=0, epochs_per_step=1, **FIT)
    with pytest.raises(ConfigError, match="scope"):
        iterative_prune(_net(), _data(), None, target=0.5, steps=1, epochs_per_step=1, scope="row", **FIT)
    with pytest.raises(ConfigError, match="epochs_per_step"):
        iterative_prune(_net(), _data(), None, target=0.5, steps=1, epochs_per_step=1, epochs=3, **FIT)


def test_result_saves_as_a_plain_artifact(tmp_path) -> None:
    torch.manual_seed(0)
    model = build({"arch": "mlp", "hidden": [16]}, input_shape=(6,), num_outputs=2)
    iterative_prune(model, _data(), None, target=0.7, steps=2, epochs_per_step=1, **FIT)
    loaded = load_artifact(save_artifact(model, tmp_path / "a", task="classification")).model
    assert torch.equal(loaded.layers[0][0].weight, model.layers[0][0].weight)
    assert (loaded.layers[0][0].weight == 0).float().mean() > 0.5


def test_docstring_examples_run() -> None:
    import doctest

    import dlforge.compress.prune_schedule as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_a_pretrained_model_is_pruned_at_once_with_torchs_mask() -> None:
    # pretrained=True (a run's trained model): no first training; round 1 prunes these very
    # weights with the mask torch's global_unstructured picks, then retrains with it held.
    model, data = _net(), _data()
    reference = copy.deepcopy(model)
    pairs = [(m, "weight") for m in reference if isinstance(m, nn.Linear)]
    prune.global_unstructured(pairs, pruning_method=prune.L1Unstructured, amount=0.5)
    masks = [m.weight_mask.clone() for m, _ in pairs]
    seen = []

    class Spy(Callback):
        def on_fit_start(self, state) -> None:
            seen.append([m.weight_mask.clone() for m in state.model if isinstance(m, nn.Linear)])

    history = iterative_prune(model, data, data, target=0.5, steps=1, epochs_per_step=1, pretrained=True,
                              callbacks=[Spy()], **FIT)
    assert len(seen) == 1  # one training: the retraining after round 1
    for got, want in zip(seen[0], masks):
        assert torch.equal(got, want)
    assert history.rows[0]["step"] == 0 and "val_loss" in history.rows[0]
    assert history.final_sparsity == pytest.approx(0.5, abs=1 / 130)
