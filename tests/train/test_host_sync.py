"""No device-to-host read on the steps the loop does not log (issue 16).

A read is counted two ways: every ``aten._local_scalar_dense`` call (the one op behind
``.item()``, ``float(t)``, ``bool(t)``: a device-to-host scalar read) seen by a
``TorchDispatchMode``, plus ``Tensor.tolist`` / ``numpy`` / ``cpu`` calls, which read
host memory directly on the CPU without dispatching that op. Each read is charged to the
step in progress: reads while a logged step is in progress (``state.step_record`` set),
on an epoch's last batch (epoch totals, validation, the guard's epoch check) or between
epochs are allowed; any other read is a per-step sync. Reads made inside ``torch.optim``
are left out: non-fused optimizers keep their step counter as a CPU tensor on purpose (on
CUDA too), so reading it is no device sync.
"""

from __future__ import annotations

import io
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dlforge.config import validate_config
from dlforge.pipeline.fit_options import config_callbacks
from dlforge.train import Callback, NanGuard, ProgressBar, fit

from .conftest import make_data, make_model

CONFIG = {"name": "t", "seed": 0, "data": {"source": "iris"}, "model": {"arch": "mlp", "hidden": [16]},
          "optim": {"name": "adam", "lr": 0.01}, "train": {"epochs": 2, "batch_size": 8, "device": "cpu"}}


class Where(Callback):
    """Knows the loop's state, so a read can be charged to the step in progress."""

    state = None

    def on_fit_start(self, state):
        self.state = state

    def unlogged_step(self) -> bool:
        s = self.state
        return (s is not None and s.step_record is None and s.totals.get("count", 0) > 0
                and 0 < s.batch_in_epoch < s.steps_per_epoch)


def _in_torch_optim() -> bool:
    return any("torch/optim/" in frame.filename.replace("\\", "/") for frame in traceback.extract_stack())


class CountReads(TorchDispatchMode):
    def __init__(self, where: Where):
        super().__init__()
        self.where, self.bad = where, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and self.where.unlogged_step() and not _in_torch_optim():
            self.bad.append((self.where.state.step, str(func)))
        return func(*args, **(kwargs or {}))


def count_unlogged_reads(monkeypatch, run) -> list:
    where = Where()
    mode = CountReads(where)
    for name in ("tolist", "numpy", "cpu"):
        original = getattr(torch.Tensor, name)

        def spy(self, *a, _original=original, _name=name, **k):
            if where.unlogged_step() and not _in_torch_optim():
                mode.bad.append((where.state.step, _name))
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    with mode:
        run(where)
    return mode.bad


def test_dlforge_train_default_callbacks_read_nothing_on_unlogged_steps(monkeypatch, tmp_path):
    cfg = validate_config(CONFIG)
    assert cfg.train.nan_guard and cfg.train.gradient_monitor  # what `dlforge train` turns on
    data = make_data(n=120, features=4)
    callbacks = config_callbacks(cfg, has_val=True, run_dir=tmp_path, progress=io.StringIO())
    names = [type(c).__name__ for c in callbacks]
    assert {"ProgressBar", "NanGuard", "GradientMonitor", "Checkpoint", "HistoryWriter"} <= set(names)
    bar = next(c for c in callbacks if isinstance(c, ProgressBar))
    bar.every_s = bar.refresh_s = 0.0  # draw a progress line on every step

    def run(where):
        result = fit(make_model(features=4), data, data, epochs=2, batch_size=8, optim="adam", device="cpu",
                     callbacks=[where, *callbacks], log_every_n_steps=5)
        assert result.stop_reason is None and result.steps == 30
        logged = [r for r in result.history if r["type"] == "step"]
        assert [r["step"] for r in logged] == [0, 5, 10, 15, 20, 25] and "grad_norm/total" in logged[0]

    assert count_unlogged_reads(monkeypatch, run) == []
    assert "loss" in bar.stream.getvalue()  # the bar shows the loss read at logged steps


def test_the_counter_sees_a_per_step_read(monkeypatch):
    class ReadsEveryStep(Callback):
        def on_step_end(self, state):
            state.loss.item()  # seen by the dispatch mode
            state.loss.reshape(1).tolist()  # seen by the spy

    def run(where):
        fit(make_model(), make_data(), epochs=1, batch_size=16, device="cpu", callbacks=[where, ReadsEveryStep()])

    assert len(count_unlogged_reads(monkeypatch, run)) == 8  # 2 reads x steps 1..4 of 6 (neither logged nor last)


class NanAt(torch.nn.Module):
    """The gradient into ``first`` turns NaN on forward call ``bad_call`` (1-based)."""

    def __init__(self, bad_call: int):
        super().__init__()
        torch.manual_seed(0)
        self.first, self.second = torch.nn.Linear(6, 8), torch.nn.Linear(8, 3)
        self.calls, self.bad_call = 0, bad_call

    def forward(self, x):  # (B, 6) -> (B, 3)
        self.calls += 1
        h = self.first(x)
        if self.calls == self.bad_call:
            h = h + 0 * torch.tensor(float("nan"), requires_grad=True)  # NaN outputs, loss and gradients
        return self.second(torch.relu(h))


@pytest.mark.parametrize("optim, check_weights, exact", [
    ("sgd", False, True),  # plain SGD: a zeroed gradient moves nothing
    ("adam", False, False),  # Adam's moments still move the weights, by finite amounts
    ("adam", True, True),  # the kept copy puts back the weights from before the bad step
    ({"name": "adam", "fused": True}, False, True),  # found_inf: the fused kernel skips the update
])
def test_nan_guard_stops_later_reports_the_bad_step_and_never_applies_it(monkeypatch, optim, check_weights, exact):
    weights = {}

    class Keep(Callback):
        def on_after_backward(self, state):
            if state.step == 2:  # the weights before the bad step
                weights.update({n: p.detach().clone() for n, p in state.model.named_parameters()})

    guard = NanGuard(check_weights=check_weights)
    model = NanAt(bad_call=3)  # step 2 (0-based) of 6 in the epoch; logged: step 0 only
    results = []

    def run(where):
        results.append(fit(model, make_data(), epochs=2, batch_size=16, optim=optim, device="cpu",
                           callbacks=[where, Keep(), guard]))

    assert count_unlogged_reads(monkeypatch, run) == []
    result = results[0]
    report = result.nan_report
    assert result.stop_reason == "non_finite" and result.epochs_run == 0 and result.history[-1]["type"] == "step"
    assert report["step"] == 2 and report["batch"] == 3 and report["where"] == "loss"
    assert "step 2" in report["message"] and len(report["recent_grad_norms"]) == 2
    assert report["first_bad_layer"] == "first.weight" and report["bad_layers"][0] == "first.weight"
    assert report["message"].endswith("the last finite weights are kept." if check_weights else "stay finite.")
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all()
        assert torch.equal(p, weights[name]) == exact, name


def test_nan_guard_every_n_steps_reads_sooner():
    model = NanAt(bad_call=3)
    result = fit(model, make_data(), epochs=2, batch_size=16, optim="sgd", device="cpu",
                 callbacks=[NanGuard(every_n_steps=2)])
    assert result.nan_report["step"] == 2 and result.steps == 3  # read after step 3 (count 4): steps 2, 3 ran
    assert "Training stopped at step 3" in result.nan_report["message"]


def test_nan_guard_check_weights_puts_back_weights_a_finite_step_overflowed():
    model = make_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = make_data().tensors
    data = torch.utils.data.TensorDataset(x * 100, y)  # gradients of about 100: lr 1e38 overflows float32
    result = fit(model, data, epochs=1, batch_size=16, optim={"name": "sgd", "lr": 1e38}, device="cpu",
                 callbacks=[NanGuard(check_weights=True)], log_every_n_steps=1000)
    report = result.nan_report
    assert report["where"] == "weights" and report["step"] == 0 and report["first_bad_layer"] == "0.weight"
    assert "overflowed the weights" in report["cause"]
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: torch.cuda.set_sync_debug_mode "
                    "only reports syncs of CUDA streams; the CPU tests above count the reads instead")
def test_cuda_unlogged_steps_run_under_sync_debug_mode_error(tmp_path):
    cfg = validate_config({**CONFIG, "train": {**CONFIG["train"], "device": "cuda"}})
    data = make_data(n=120, features=4)
    callbacks = config_callbacks(cfg, has_val=True, run_dir=tmp_path, progress=io.StringIO())

    class Strict(Callback):
        """Errors on any sync outside logged steps and epoch ends."""

        def on_after_backward(self, state):
            self._mode(state)

        def on_step_end(self, state):
            self._mode(state)

        def _mode(self, state):
            unlogged = state.step_record is None and 0 < state.batch_in_epoch < state.steps_per_epoch - 1
            torch.cuda.set_sync_debug_mode("error" if unlogged else "default")

    try:
        result = fit(make_model(features=4), data, data, epochs=2, batch_size=8, device="cuda",
                     callbacks=[Strict(), *callbacks], log_every_n_steps=5)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert result.stop_reason is None and result.steps == 30
