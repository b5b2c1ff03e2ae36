"""Truncated BPTT in the engine: gradients against hand-written references, flat memory."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from dlforge.errors import ConfigError
from dlforge.models import build
from dlforge.train import Callback, fit
from dlforge.train.tbptt import detach_state


def lstm(T: int, task_head: str = "token", outputs: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    return build({"arch": "rnn", "kind": "lstm", "hidden_size": 6, "task_head": task_head},
                 input_shape=(T, 2), num_outputs=outputs)


class GradRecorder(Callback):
    """Records every update's gradients, then zeroes them so the weights never move."""

    def __init__(self) -> None:
        self.grads: list[dict[str, torch.Tensor]] = []

    def on_after_backward(self, state) -> None:
        self.grads.append({n: p.grad.clone() for n, p in state.model.named_parameters()})
        for p in state.model.parameters():
            p.grad.zero_()


def record(model, data, **kwargs) -> list[dict[str, torch.Tensor]]:
    recorder = GradRecorder()
    fit(model, data, epochs=1, batch_size=len(data), optim={"name": "sgd", "lr": 0.1},
        callbacks=[recorder], device="cpu", **kwargs)
    return recorder.grads


def reference_window_grad(model, x, y, start_grad: int, new_from: int, end: int) -> dict[str, torch.Tensor]:
    """Gradient of the loss on outputs [new_from, end), with the graph cut at step start_grad."""
    model.zero_grad()
    state = None
    outs = []
    for t in range(end):
        if t == start_grad:
            state = detach_state(state)
        out, state = model.forward_chunk(x[:, t : t + 1], state)  # one step at a time
        outs.append(out)
    out = torch.cat(outs, dim=1)[:, new_from:end]  # (B, k1, C)
    torch.nn.functional.cross_entropy(out.flatten(0, 1), y[:, new_from:end].flatten()).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("k1,k2", [(5, 5), (4, 7), (3, 12)])
def test_each_window_gradient_equals_a_hand_cut_reference(k1, k2):
    T = 14
    torch.manual_seed(1)
    data = TensorDataset(torch.randn(4, T, 2), torch.randint(0, 3, (4, T)))
    grads = record(lstm(T), data, tbptt=(k1, k2))
    ends = list(range(k1, T, k1)) + [T]
    assert len(grads) == len(ends)
    reference_model = lstm(T)
    new_from = 0
    for got, end in zip(grads, ends):
        want = reference_window_grad(reference_model, *data.tensors, max(0, end - k2), new_from, end)
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)
        new_from = end


def test_k_equal_to_length_is_full_bptt():
    T = 12
    torch.manual_seed(2)
    data = TensorDataset(torch.randn(6, T, 2), torch.randint(0, 3, (6, T)))
    full = record(lstm(T), data)
    truncated = record(lstm(T), data, tbptt=T)
    assert len(full) == len(truncated) == 1
    for name in full[0]:
        torch.testing.assert_close(truncated[0][name], full[0][name], rtol=1e-5, atol=1e-7)


def test_one_target_per_sequence_backpropagates_the_last_k2_steps():
    T, k2 = 20, 6
    torch.manual_seed(3)
    x, y = torch.randn(5, T, 2), torch.randint(0, 3, (5,))
    grads = record(lstm(T, task_head="sequence"), TensorDataset(x, y), tbptt=(4, k2))
    assert len(grads) == 1  # one update per batch
    model = lstm(T, task_head="sequence")
    model.zero_grad()
    with torch.no_grad():
        _, state = model.recurrent(x[:, : T - k2])
    out, _ = model.recurrent(x[:, T - k2 :], state)
    torch.nn.functional.cross_entropy(model.head(out[:, -1]), y).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[0][name], p.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_training_with_tbptt_learns_a_per_step_task():
    # Predict at each step whether the running sum so far is positive: needs the carried state.
    torch.manual_seed(4)
    x = torch.randn(64, 60, 2)
    y = (x[..., 0].cumsum(dim=1) > 0).long()  # (64, 60)
    model = lstm(60, outputs=2)
    result = fit(model, TensorDataset(x, y), epochs=8, batch_size=16, optim={"name": "adam", "lr": 0.01},
                 tbptt=10, device="cpu")
    assert result.steps == 8 * 4 * 6  # epochs x batches x windows
    epochs = [r for r in result.history if r["type"] == "epoch"]
    assert epochs[-1]["train_accuracy"] > 0.75  # chance is about 0.5
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]


def saved_bytes_per_update(T: int, tbptt: int | None) -> int:
    """Largest number of bytes autograd holds for one update (saved-tensor hooks)."""
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(8, T, 2), torch.randint(0, 3, (8, T)))
    live = {"now": 0, "peak": 0}

    def pack(t: torch.Tensor) -> torch.Tensor:
        live["now"] += t.numel() * t.element_size()
        live["peak"] = max(live["peak"], live["now"])
        return t

    class Reset(Callback):
        def on_after_backward(self, state) -> None:
            live["now"] = 0  # the graph of this update is gone after backward

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fit(lstm(T), data, epochs=1, batch_size=8, optim="sgd", callbacks=[Reset()], device="cpu",
            tbptt=tbptt)
    return live["peak"]


def test_truncated_bptt_memory_stays_flat_as_the_sequence_grows():
    short, long = saved_bytes_per_update(64, 16), saved_bytes_per_update(512, 16)
    assert long == short  # exactly the same graph per update
    full_short, full_long = saved_bytes_per_update(64, None), saved_bytes_per_update(512, None)
    assert full_long / full_short > 6  # full BPTT grows with T (8x the steps)


def test_tbptt_errors_are_clear():
    data = TensorDataset(torch.randn(4, 10, 2), torch.randint(0, 3, (4, 10)))
    mlp = build({"arch": "mlp"}, input_shape=(20,), num_outputs=3)
    flat = TensorDataset(torch.randn(4, 20), torch.randint(0, 3, (4,)))
    with pytest.raises(ConfigError, match="chunk by chunk"):
        fit(mlp, flat, epochs=1, tbptt=5, device="cpu")
    with pytest.raises(ConfigError, match="accumulate"):
        fit(lstm(10), data, epochs=1, tbptt=5, accumulate=2, device="cpu")
    with pytest.raises(ConfigError, match="k1 <= k2"):
        fit(lstm(10), data, epochs=1, tbptt=(6, 3), device="cpu")
    with pytest.raises(ConfigError, match="bidirectional"):
        build({"arch": "rnn", "bidirectional": True, "task_head": "token"}, input_shape=(10, 2), num_outputs=3)
