"""Learning-rate schedules: the lr the loop used at every step against closed forms and
PyTorch's own schedulers."""

from __future__ import annotations

import math

import pytest
import torch

from dlforge.train import Callback, fit
from dlforge.train.optim import OptimConfig, Scheduler

from .conftest import make_data, make_model


class LrRecorder(Callback):
    """The learning rate each optimizer step used."""

    def __init__(self):
        self.lrs = []

    def on_after_backward(self, state):
        self.lrs.append(state.optimizer.param_groups[0]["lr"])


def run_lrs(schedule, epochs=4, n=64, batch_size=16, lr=0.1, val=False):
    rec = LrRecorder()
    data = make_data(n=n)
    fit(make_model(), data, data if val else None, epochs=epochs, batch_size=batch_size,
        optim={"name": "sgd", "lr": lr, "schedule": schedule}, callbacks=[rec], device="cpu")
    return rec.lrs


def torch_lrs(make_scheduler, steps=16, lr=0.1):
    """The learning rate PyTorch's own scheduler gives at each of ``steps`` steps."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = make_scheduler(opt)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return lrs


def test_constant_schedule():
    assert run_lrs({"name": "constant"}) == [0.1] * 16


def test_warmup_then_cosine_matches_closed_form():
    lrs = run_lrs({"name": "cosine", "warmup_epochs": 1, "min_lr": 0.0})
    warmup, total = 4, 16
    expected = [0.1 * (s + 1) / (warmup + 1) for s in range(warmup)]
    expected += [0.1 * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))) for s in range(warmup, total)]
    assert lrs == pytest.approx(expected, rel=1e-12)


def test_cosine_without_warmup_equals_torch_cosine_annealing():
    expected = torch_lrs(lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=16))
    assert run_lrs({"name": "cosine"}) == pytest.approx(expected, rel=1e-9)


def test_step_schedule_decays_every_step_size_epochs():
    lrs = run_lrs({"name": "step", "step_size": 2, "gamma": 0.5})
    assert lrs == pytest.approx([0.1] * 8 + [0.05] * 8)


def test_onecycle_equals_torch_onecycle():
    expected = torch_lrs(lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=16, pct_start=0.25))
    assert run_lrs({"name": "onecycle", "pct_start": 0.25}) == pytest.approx(expected, rel=1e-12)


def test_plateau_reduces_after_patience_without_improvement():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    cfg = OptimConfig(name="sgd", lr=0.1, schedule={"name": "plateau", "patience": 1, "factor": 0.5})
    sched = Scheduler(opt, cfg, steps_per_epoch=1, epochs=10)
    seen = []
    for val_loss in [1.0, 0.9, 0.9, 0.9, 0.9, 0.8]:
        sched.step_batch()
        sched.step_epoch({"val_loss": val_loss})
        seen.append(sched.lr)
    assert seen == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.05])


def test_plateau_with_warmup_warms_up_then_hands_over():
    lrs = run_lrs({"name": "plateau", "warmup_epochs": 1, "patience": 0, "factor": 0.5}, val=True, epochs=3)
    assert lrs[:4] == pytest.approx([0.02, 0.04, 0.06, 0.08])
    assert lrs[4] == pytest.approx(0.1)


def test_plateau_monitoring_a_missing_metric_is_a_config_error():
    with pytest.raises(ValueError, match="optim.schedule.monitor"):
        run_lrs({"name": "plateau", "monitor": "val_f1"}, val=True)


def test_scheduler_state_round_trip():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    cfg = OptimConfig(name="sgd", lr=0.1, schedule={"name": "cosine", "warmup_epochs": 1})
    a = Scheduler(opt, cfg, steps_per_epoch=5, epochs=4)
    for _ in range(7):
        a.step_batch()
    state = a.state_dict()
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    b = Scheduler(opt2, cfg, steps_per_epoch=5, epochs=4)
    b.load_state_dict(state)
    a.step_batch()
    b.step_batch()
    assert a.lr == b.lr
