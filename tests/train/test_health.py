"""Training diagnosis: each problem provoked on purpose with real training, named with the
right evidence, and no other problem raised; then every threshold at its exact boundary on
hand-made histories."""

from __future__ import annotations

import doctest
import json
import math
import statistics

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlforge.data import load_source, prepare
from dlforge.models import build
from dlforge.train import GradientMonitor, HistoryWriter, NanGuard, fit
from dlforge.train import health
from dlforge.train.health import (
    KINDS, SEVERITIES, Diagnosis, HealthThresholds, dead_relu_fraction, diagnose, format_diagnoses,
    weight_layer_names,
)

T = HealthThresholds()


def kinds(diagnoses: list[Diagnosis]) -> list[str]:
    return [d.kind for d in diagnoses]


def check_well_formed(diagnoses: list[Diagnosis]) -> None:
    for d in diagnoses:
        assert d.kind in KINDS and d.severity in SEVERITIES
        assert d.message and d.fix
        json.dumps(d.to_dict(), allow_nan=False)  # strict JSON: non-finite values became strings


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def cancer():
    return prepare(load_source("breast_cancer"), val=0.2, test=0.0, seed=0)


def train(data, spec: dict, *, epochs: int, optim: dict, batch_size: int = 32, guard: bool = False,
          log_every: int = 2, model: nn.Module | None = None, extra: tuple = ()):
    torch.manual_seed(0)
    model = model or build(spec, input_shape=data.input_shape, num_outputs=data.num_outputs)
    callbacks = [GradientMonitor(), *extra] + ([NanGuard()] if guard else [])
    result = fit(model, data.train, data.val, epochs=epochs, batch_size=batch_size, optim=optim,
                 callbacks=callbacks, log_every_n_steps=log_every, device="cpu")
    return model, result


# ----------------------------------------------------------------------------- real training

def test_deep_sigmoid_net_vanishes_and_relu_he_batchnorm_does_not(cancer):
    deep = {"arch": "mlp", "hidden": [32] * 20}
    model, result = train(cancer, {**deep, "activation": "sigmoid"}, epochs=2, batch_size=64,
                          optim={"name": "sgd", "lr": 0.1})
    found = diagnose(result.history)
    check_well_formed(found)
    assert kinds(found) == ["vanishing_gradients"]
    ev = found[0].evidence
    assert ev["first_layer"] == "layers.0.0.weight" and ev["last_layer"] == "head.weight"
    assert list(ev["median_grad_norm"]) == weight_layer_names(model)  # 21 weight matrices, no biases
    steps = [r for r in result.history if r["type"] == "step"]
    first = statistics.median(r["grad_norm/layers.0.0.weight"] for r in steps)
    last = statistics.median(r["grad_norm/head.weight"] for r in steps)
    assert ev["ratio"] == first / last and ev["ratio"] < 1e-6 and ev["logged_steps"] == len(steps)

    model, result = train(cancer, {**deep, "activation": "relu", "init": "he", "batch_norm": "before"},
                          epochs=2, batch_size=64, optim={"name": "sgd", "lr": 0.1})
    assert diagnose(result.history) == []
    # Forcing the check to report shows its numbers: the name rule dropped the BatchNorm
    # scales (layers.i.1.weight) exactly as the ndim > 1 rule does, and the ratio is healthy.
    forced = diagnose(result.history, thresholds=HealthThresholds(vanishing_ratio=math.inf))
    ev = forced[0].evidence
    assert list(ev["median_grad_norm"]) == weight_layer_names(model)
    assert all(".1.weight" not in name for name in ev["median_grad_norm"])
    assert ev["ratio"] > 1e-2


def test_huge_lr_with_nan_guard_is_non_finite_and_lr_too_high(cancer):
    _, result = train(cancer, {"arch": "mlp", "hidden": [64, 64]}, epochs=5, guard=True, log_every=1,
                      optim={"name": "sgd", "lr": 1e2})
    report = result.nan_report
    assert result.stop_reason == "non_finite"
    found = diagnose(result.history, nan_report=report)
    check_well_formed(found)
    assert found[0].kind == "non_finite" and found[0].severity == "error"
    assert found[0].evidence["step"] == report["step"]
    assert found[0].evidence["first_bad_layer"] == report["first_bad_layer"]
    assert f"step {report['step']}" in found[0].message and report["first_bad_layer"] in found[0].message
    assert found[0].fix == report["fix"]
    assert kinds(found) == ["non_finite", "exploding_gradients", "lr_too_high"]
    exploding, high = found[1], found[2]
    steps = [r for r in result.history if r["type"] == "step"]
    assert high.evidence["initial_loss"] == steps[0]["loss"] and high.evidence["loss"] > 10 * steps[0]["loss"]
    assert "optim.lr" in high.fix
    assert exploding.evidence["first_quarter_median"] == steps[0]["grad_norm/total"]
    assert exploding.evidence["growth"] > T.exploding_growth and exploding.severity == "error"


def test_without_a_guard_the_first_non_finite_record_is_named(cancer, tmp_path):
    path = tmp_path / "history.jsonl"
    _, result = train(cancer, {"arch": "mlp", "hidden": [64, 64]}, epochs=4, log_every=1,
                      optim={"name": "sgd", "lr": 3.0}, extra=(HistoryWriter(path),))
    first_bad = next(r for r in result.history
                     if any(isinstance(v, float) and not math.isfinite(v) for k, v in r.items()
                            if k == "loss" or k.endswith("_loss") or k.startswith("grad_norm/")))
    found = diagnose(result.history)
    check_well_formed(found)
    assert found[0].kind == "non_finite" and found[0].evidence["step"] == first_bad["step"]
    assert {"lr_too_high", "exploding_gradients"} <= set(kinds(found))
    assert set(kinds(found)) <= {"non_finite", "lr_too_high", "exploding_gradients"}
    # history.jsonl (NaN written as JSON's NaN) gives the same diagnosis
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [d.to_dict() for d in diagnose(lines)] == [d.to_dict() for d in found]


def test_high_lr_spike_without_blow_up_is_lr_too_high_only(cancer):
    _, result = train(cancer, {"arch": "mlp", "hidden": [64, 64]}, epochs=3, log_every=1,
                      optim={"name": "adam", "lr": 0.5})
    assert result.stop_reason is None and all(math.isfinite(e["train_loss"]) for e in result.epochs)
    found = diagnose(result.history)
    assert kinds(found) == ["lr_too_high"] and found[0].severity == "warning"
    ev = found[0].evidence
    step_loss = {r["step"]: r["loss"] for r in result.history if r["type"] == "step"}
    assert ev["unit"] == "step" and ev["loss"] == step_loss[ev["at"]]
    assert ev["loss"] > T.spike_factor * ev["running_median"] and ev["loss"] > step_loss[0]
    assert "0.05" in found[0].fix  # 10x below the lr in use


def test_tiny_lr_is_lr_too_low(cancer):
    _, result = train(cancer, {"arch": "mlp", "hidden": [64, 64]}, epochs=5, optim={"name": "sgd", "lr": 1e-5})
    found = diagnose(result.history)
    check_well_formed(found)
    assert kinds(found) == ["lr_too_low"]
    ev = found[0].evidence
    losses = [e["train_loss"] for e in result.epochs]
    assert ev["relative_decrease"] == (losses[0] - losses[-1]) / losses[0] < T.flat_rel_decrease
    assert ev["largest_median_update_ratio"] < T.tiny_update_ratio
    assert ev["lr"] == 1e-5 and "optim.lr" in found[0].fix


def test_big_net_on_tiny_noisy_set_overfits():
    data = prepare(load_source("circles", n_samples=60, noise=0.3, seed=0), val=0.5, test=0.0, seed=0)
    _, result = train(data, {"arch": "mlp", "hidden": [256, 256]}, epochs=60, batch_size=16,
                      optim={"name": "adam", "lr": 1e-2})
    found = diagnose(result.history)
    check_well_formed(found)
    assert kinds(found) == ["overfitting"]
    ev = found[0].evidence
    val = [e["val_loss"] for e in result.epochs]
    best = val.index(min(val))
    assert ev["best_epoch"] == best and ev["best_val_loss"] == val[best] and ev["final_val_loss"] == val[-1]
    assert ev["epochs_since_best"] == len(val) - 1 - best >= T.overfit_patience
    assert ev["val_rise"] > T.overfit_val_rise and ev["final_train_loss"] < ev["train_loss_at_best"]
    assert "train.early_stopping" in found[0].fix


def hand_dead_fractions(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Count by hand: run the layers one by one and look at each ReLU's output."""
    out, fractions = x, {}
    with torch.no_grad():
        for i, block in enumerate(model.layers):
            out = torch.clamp(out @ block[0].weight.T + block[0].bias, min=0)  # (B, hidden[i])
            never = [not bool((out[:, u] > 0).any()) for u in range(out.shape[1])]
            fractions[f"layers.{i}.1"] = sum(never) / len(never)
    return fractions


def test_negative_bias_kills_relus_and_matches_a_hand_count(cancer):
    torch.manual_seed(0)
    model = build({"arch": "mlp", "hidden": [32, 32]}, input_shape=cancer.input_shape,
                  num_outputs=cancer.num_outputs)
    with torch.no_grad():
        model.layers[1][0].bias[:24] = -1e3  # 24 of 32 units can never fire
    _, result = train(cancer, {}, model=model, epochs=3, optim={"name": "adam", "lr": 1e-3})
    x = cancer.train.tensors[0]
    dead = dead_relu_fraction(model, x)
    assert dead == hand_dead_fractions(model, x)
    assert dead["layers.1.1"] >= 0.75 and dead["layers.0.1"] < 0.5
    found = diagnose(result.history, dead_units=dead)
    check_well_formed(found)
    assert kinds(found) == ["dead_relu"]
    assert found[0].evidence["dead_layers"] == {"layers.1.1": dead["layers.1.1"]}
    assert "leaky_relu" in found[0].fix


@pytest.mark.parametrize("source", ["breast_cancer", "digits"])
def test_healthy_default_run_has_no_findings(source):
    data = prepare(load_source(source), val=0.15, test=0.15, seed=0)
    model, result = train(data, {"arch": "mlp"}, epochs=12, guard=True, log_every=5,
                          optim={"name": "adam", "lr": 1e-3})
    assert result.epochs[-1]["val_accuracy"] > 0.9  # it did learn
    found = diagnose(result.history, nan_report=result.nan_report,
                     dead_units=dead_relu_fraction(model, data.train.tensors[0]))
    assert found == [], format_diagnoses(found)


# ----------------------------------------------------------------------------- dead_relu_fraction

def test_dead_fraction_counts_conv_channels_like_a_hand_count():
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 6, 3, padding=1)
    with torch.no_grad():
        conv.bias[:2] = -1e3
    net = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(6 * 5 * 5, 2))
    x = torch.randn(8, 1, 5, 5)
    with torch.no_grad():
        maps = F.relu(F.conv2d(x, conv.weight, conv.bias, padding=1))  # (B, C, H, W)
    alive = [bool((maps[:, c] > 0).any()) for c in range(6)]
    assert dead_relu_fraction(net, x) == {"1": alive.count(False) / 6}
    assert dead_relu_fraction(net, x)["1"] >= 2 / 6


def test_dead_fraction_shared_relu_counts_each_call_and_restores_mode():
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.act = nn.Linear(3, 4), nn.Linear(4, 4), nn.ReLU()
            self.leaky = nn.LeakyReLU()

        def forward(self, x):
            return self.leaky(self.act(self.b(self.act(self.a(x)))))

    net = Shared()
    with torch.no_grad():
        net.a.bias.copy_(torch.tensor([-1e3, -1e3, 1e3, 1e3]))  # call 1: 2 of 4 dead
        net.b.bias.copy_(torch.tensor([-1e3, 1e3, 1e3, 1e3]))  # call 2: 1 of 4 dead
    net.train()
    assert dead_relu_fraction(net, torch.randn(10, 3)) == {"act": 3 / 8}  # LeakyReLU is not counted
    assert net.training


# ----------------------------------------------------------------------------- hand-made histories

def steps_with(norms: dict[str, list[float]], loss: float = 0.5, extra: dict | None = None,
               lr: float = 0.01) -> list[dict]:
    n = len(next(iter(norms.values())))
    records = []
    for s in range(n):
        r = {"type": "step", "step": s, "epoch": 0, "loss": loss, "lr": lr}
        r.update({f"grad_norm/{k}": v[s] for k, v in norms.items()})
        r["grad_norm/total"] = math.sqrt(sum(v[s] ** 2 for v in norms.values()))
        r.update(extra or {})
        records.append(r)
    return records


def epochs_with(train_loss: list[float], val_loss: list[float] | None = None, lr: float = 0.01) -> list[dict]:
    return [{"type": "epoch", "epoch": e, "train_loss": t, **({"val_loss": val_loss[e]} if val_loss else {}),
             "lr": lr} for e, t in enumerate(train_loss)]


def decreasing(n: int) -> list[float]:
    return [0.7 * 0.8 ** e for e in range(n)]


def test_healthy_hand_made_history_has_no_findings():
    history = steps_with({"layers.0.0.weight": [0.5] * 8, "head.weight": [0.2] * 8}) + epochs_with(
        decreasing(10), [0.8 * 0.85 ** e for e in range(10)])
    assert diagnose(history) == []
    assert format_diagnoses([]) == "No training problems found."


def test_vanishing_ratio_boundary_is_strict():
    edge = T.vanishing_ratio  # first/last = 1e-3 exactly: not below the threshold
    assert diagnose(steps_with({"layers.0.0.weight": [edge] * 4, "head.weight": [1.0] * 4})) == []
    below = math.nextafter(edge, 0)
    found = diagnose(steps_with({"layers.0.0.weight": [below] * 4, "head.weight": [1.0] * 4}))
    assert kinds(found) == ["vanishing_gradients"] and found[0].evidence["ratio"] == below
    # too few logged steps for a median: no verdict
    assert diagnose(steps_with({"layers.0.0.weight": [1e-9] * 3, "head.weight": [1.0] * 3})) == []


def test_biases_and_norm_scales_are_not_weight_layers():
    tiny, one = [1e-9] * 4, [1.0] * 4
    norms = {"layers.0.0.bias": tiny, "layers.0.1.weight": tiny, "bn1.weight": tiny, "encoder.norm.weight": tiny,
             "layers.0.0.weight": one, "head.weight": one, "head.bias": tiny}
    assert diagnose(steps_with(norms)) == []
    # weight_names makes the choice exact, whatever the names look like
    found = diagnose(steps_with(norms), weight_names=["layers.0.1.weight", "head.weight"])
    assert kinds(found) == ["vanishing_gradients"] and found[0].evidence["first_layer"] == "layers.0.1.weight"


def test_exploding_growth_boundary_is_strict():
    def run(late: float) -> list[Diagnosis]:
        return diagnose(steps_with({"layers.0.0.weight": [1.0] * 6 + [late] * 2, "head.weight": [0.0] * 8}))

    assert run(T.exploding_growth) == []  # quarters of 2 steps: medians 1 and 1000, growth exactly 1e3
    found = run(math.nextafter(T.exploding_growth, math.inf))
    assert kinds(found) == ["exploding_gradients"] and found[0].severity == "warning"
    assert found[0].evidence["growth"] > T.exploding_growth and found[0].evidence["first_quarter_median"] == 1.0


def test_non_finite_loss_in_history_is_an_error_naming_the_step():
    history = steps_with({"layers.0.0.weight": [1.0] * 8, "head.weight": [1.0] * 8})
    history[5]["loss"] = float("nan")
    found = diagnose(history)
    check_well_formed(found)
    assert found[0].kind == "non_finite" and found[0].severity == "error"
    assert found[0].evidence == {"type": "step", "step": 5, "epoch": 0, "key": "loss", "value": "nan"}
    assert "step 5" in found[0].message


def test_gradient_overflow_with_finite_loss_is_exploding():
    history = steps_with({"layers.0.0.weight": [1.0] * 8, "head.weight": [1.0] * 8})
    history[6]["grad_norm/layers.0.0.weight"] = history[6]["grad_norm/total"] = math.inf
    found = diagnose(history)
    assert kinds(found) == ["non_finite", "exploding_gradients"]
    assert all(d.severity == "error" for d in found)
    assert found[1].evidence["overflow_step"] == 6 and found[1].evidence["overflow_layer"] == "layers.0.0.weight"


def test_infinite_update_ratio_of_a_zero_weight_is_not_an_alarm():
    history = steps_with({"layers.0.0.weight": [1.0] * 8, "head.weight": [1.0] * 8},
                         extra={"update_ratio/head.weight": math.inf})
    assert diagnose(history) == []


def test_non_finite_epoch_loss_names_the_epoch():
    found = diagnose(epochs_with([0.7, 0.5, math.inf]))
    assert found[0].kind == "non_finite" and "epoch 3" in found[0].message


def test_nan_report_is_quoted():
    report = {"step": 12, "epoch": 1, "where": "gradient", "first_bad_layer": "layers.2.0.weight",
              "bad_layers": ["layers.2.0.weight"], "loss": float("inf"), "lr": 3.0, "recent_grad_norms": [1.0, 50.0],
              "cause": "exploding gradients", "fix": "lower optim.lr (now 3)", "message": "..."}
    found = diagnose([], nan_report=report)
    assert kinds(found) == ["non_finite"] and found[0].fix == report["fix"]
    assert "step 12" in found[0].message and "epoch 2" in found[0].message
    assert "layers.2.0.weight" in found[0].message and "exploding gradients" in found[0].message
    assert found[0].evidence["loss"] == "inf" and found[0].evidence["first_bad_layer"] == "layers.2.0.weight"


def test_dead_relu_boundary_and_severity():
    edge = T.dead_fraction
    assert diagnose([], dead_units={"layers.0.1": edge}) == []
    above = math.nextafter(edge, 1)
    found = diagnose([], dead_units={"layers.0.1": above, "layers.1.1": 0.1})
    assert kinds(found) == ["dead_relu"] and found[0].severity == "warning"
    assert found[0].evidence["dead_layers"] == {"layers.0.1": above}
    assert diagnose([], dead_units={"layers.1.1": 1.0})[0].severity == "error"


def overfit_history(rise_to: float, since: int, train_final: float) -> list[dict]:
    # val best (0.5) at epoch 2, then `since` epochs later it ends at `rise_to`
    val = [0.9, 0.7, 0.5] + [0.6] * (since - 1) + [rise_to]
    train = [0.9, 0.8, 0.64] + [0.62] * (since - 1) + [train_final]
    return epochs_with(train, val)


def test_overfitting_boundaries():
    edge_val = 0.5 * (1 + T.overfit_val_rise)
    edge_train = 0.64 * (1 - T.overfit_train_drop)
    found = diagnose(overfit_history(edge_val, T.overfit_patience, edge_train))
    assert kinds(found) == ["overfitting"]
    ev = found[0].evidence
    assert (ev["best_epoch"], ev["best_val_loss"], ev["final_val_loss"]) == (2, 0.5, edge_val)
    assert ev["epochs_since_best"] == T.overfit_patience and "epoch 3" in found[0].message
    assert diagnose(overfit_history(math.nextafter(edge_val, 0), T.overfit_patience, edge_train)) == []
    assert diagnose(overfit_history(edge_val, T.overfit_patience - 1, edge_train)) == []
    assert diagnose(overfit_history(edge_val, T.overfit_patience, math.nextafter(edge_train, 1))) == []


def test_overfitting_needs_the_rise_to_matter_next_to_the_gain():
    t = HealthThresholds(overfit_val_rise=0.125, overfit_giveback=0.25)  # dyadic: exact boundaries
    # val fell 1.0 -> 0.5 (a gain of 0.5); ending at 0.625 rises 25% and gives back exactly a quarter
    history = epochs_with([1.0, 0.5, 0.25, 0.125, 0.0625], [1.0, 0.5, 0.5625, 0.59375, 0.625])
    found = diagnose(history, thresholds=t)
    assert kinds(found) == ["overfitting"] and found[0].evidence["giveback"] == 0.25
    history[-1]["val_loss"] = math.nextafter(0.625, 0)
    assert diagnose(history, thresholds=t) == []


def test_divergence_boundary():
    first = 0.5
    edge = first * T.divergence_ratio
    assert diagnose(epochs_with([first, 0.45, edge])) == []
    found = diagnose(epochs_with([first, 0.45, math.nextafter(edge, math.inf)]))
    assert kinds(found) == ["lr_too_high"] and found[0].severity == "error"
    assert found[0].evidence["first_train_loss"] == first


def spike_history(spike: float, length: int = 2) -> list[dict]:
    losses = [2.0] + [0.1] * 10 + [spike] * length + [0.1] * 4
    return [{"type": "step", "step": s, "loss": v, "lr": 0.1} for s, v in enumerate(losses)]


def test_spike_boundary_and_its_guards():
    edge = T.spike_factor * 0.1  # 1.0: exactly 10x the running median, but below the start (2.0)
    assert diagnose(spike_history(math.nextafter(edge, math.inf))) == []  # hard batches near zero loss
    assert diagnose(spike_history(2.0)) == []  # not above the first logged loss
    above = math.nextafter(2.0, math.inf)
    assert diagnose(spike_history(above, length=T.spike_length - 1)) == []  # one bad batch, then back
    found = diagnose(spike_history(above))
    assert kinds(found) == ["lr_too_high"]
    assert found[0].evidence["at"] == 11 and found[0].evidence["running_median"] == 0.1
    # with a lower start, exactly spike_factor x the median is still not a spike
    history = spike_history(edge)
    history[0]["loss"] = 0.5
    assert diagnose(history) == []
    history = spike_history(math.nextafter(edge, math.inf))
    history[0]["loss"] = 0.5
    assert kinds(diagnose(history)) == ["lr_too_high"]


def test_oscillation():
    swinging = [1.0, 0.8, 1.0, 0.8, 1.0, 0.8, 1.0]  # every change flips, by 20% of the start
    found = diagnose(epochs_with(swinging))
    assert kinds(found) == ["lr_too_high"] and found[0].evidence["sign_change_fraction"] == 1.0
    assert found[0].evidence["median_swing"] == pytest.approx(0.2)
    wiggle = [1.0, 0.3] + [0.3, 0.29] * 3  # flips as often, but by 1% of the start: noise
    assert diagnose(epochs_with(wiggle)) == []
    bumpy = [1.0, 0.7, 0.8, 0.5, 0.6, 0.3, 0.4, 0.1]  # flips and swings, but keeps reaching new lows
    assert diagnose(epochs_with(bumpy)) == []
    edge = HealthThresholds(oscillation_amplitude=0.25)  # 0.25 of a 1.0 start: dyadic, exact
    exact = [1.0, 0.75, 1.0, 0.75, 1.0, 0.75]
    assert kinds(diagnose(epochs_with(exact), thresholds=edge)) == ["lr_too_high"]
    nudged = [1.0, math.nextafter(0.75, 1), 1.0, math.nextafter(0.75, 1), 1.0, math.nextafter(0.75, 1)]
    assert diagnose(epochs_with(nudged), thresholds=edge) == []


def test_flat_loss_boundaries():
    t = HealthThresholds(flat_rel_decrease=0.125)  # dyadic, so the boundary is exact
    assert diagnose(epochs_with([1.0, 1.0, 1.0, 1.0, 0.875]), thresholds=t) == []  # fell exactly 12.5%
    found = diagnose(epochs_with([1.0, 1.0, 1.0, 1.0, math.nextafter(0.875, 1)], lr=1e-6), thresholds=t)
    assert kinds(found) == ["lr_too_low"] and "largest_median_update_ratio" not in found[0].evidence
    assert found[0].evidence["lr"] == 1e-6
    assert diagnose(epochs_with([1.0] * (T.flat_min_epochs - 1))) == []  # too short to call flat
    assert diagnose(epochs_with([1e-4] * 8)) == []  # already solved


def test_flat_loss_needs_tiny_updates_when_they_are_logged():
    flat = epochs_with([0.7] * 6, lr=1e-4)
    grads = {"layers.0.0.weight": [0.1] * 4, "head.weight": [0.1] * 4}
    moving = steps_with(grads, extra={"update_ratio/layers.0.0.weight": 1e-6,
                                      "update_ratio/head.weight": T.tiny_update_ratio})
    assert diagnose(moving + flat) == []  # the head moves: a flat loss with another cause
    still = steps_with(grads, extra={"update_ratio/layers.0.0.weight": 1e-7,
                                     "update_ratio/head.weight": math.nextafter(T.tiny_update_ratio, 0)}, lr=1e-4)
    found = diagnose(still + flat)
    assert kinds(found) == ["lr_too_low"]
    assert found[0].evidence["largest_median_update_ratio"] == math.nextafter(T.tiny_update_ratio, 0)
    assert "try 0.01" in found[0].fix  # lr 1e-4 scaled by 1e-3 / 1e-5: toward a healthy update ratio


def test_errors_come_first_and_format_has_one_block_each():
    history = epochs_with([0.5, 0.45, 0.6])  # divergence: an error
    found = diagnose(history, dead_units={"layers.0.1": 0.9})  # dead ReLUs: a warning
    assert [d.severity for d in found] == ["error", "warning"]
    text = format_diagnoses(found)
    blocks = text.split("\n\n")
    assert len(blocks) == 2
    for d, block in zip(found, blocks):
        assert block.startswith(f"[{d.severity}] {d.kind}: {d.message}")
        assert f"  fix: {d.fix}" in block and "  evidence: " in block


def test_format_shortens_long_evidence():
    d = Diagnosis("vanishing_gradients", "warning", "m", {"median_grad_norm": {f"l{i}": 0.5 for i in range(20)}}, "f")
    line = format_diagnoses([d]).splitlines()[1]
    assert "l0=0.5" in line and "l19=0.5" in line and "..." in line and "l10=" not in line


def test_docstring_examples_run():
    result = doctest.testmod(health, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_blow_up_between_logged_steps_is_lr_too_high():
    history = [{"type": "step", "step": 0, "loss": 2.0, "lr": 0.05}]  # one logged step, then NanGuard fired
    report = {"step": 4, "epoch": 0, "where": "gradient", "loss": 2.0 * T.spike_factor, "cause": "c", "fix": "f"}
    assert kinds(diagnose(history, nan_report=report)) == ["non_finite"]  # exactly spike_factor x: not yet
    report["loss"] = math.nextafter(2.0 * T.spike_factor, math.inf)
    found = diagnose(history, nan_report=report)
    assert kinds(found) == ["non_finite", "lr_too_high"] and found[1].evidence["step"] == 4
    assert "optim.lr (now 0.05" in found[1].fix


# ----------------------------------------------------------------------------- held-out scores

def test_worse_than_the_training_mean_is_an_error_with_its_numbers():
    scores = health.HeldOutScores("test", r2=-1.2, baselines={"training mean": -0.01, "Ridge": 0.45},
                                  target_standardized=False)
    (found,) = diagnose([], scores=scores)
    check_well_formed([found])
    assert found.kind == "worse_than_baseline" and found.severity == "error"
    assert found.evidence["r2"] == -1.2 and found.evidence["threshold"] == T.min_r2 == 0.0
    assert found.evidence["baselines_r2"] == {"training mean": -0.01, "Ridge": 0.45}
    assert "data.standardize_target: true" in found.fix and "-1.2" in found.message
    # a standardised target is not the cause to name
    (found,) = diagnose([], scores=health.HeldOutScores("test", r2=-0.5, target_standardized=True))
    assert "standardize_target" not in found.fix


@pytest.mark.parametrize("r2, fires", [(-1e-9, True), (0.0, False), (0.41, False), (math.nan, False)])
def test_r2_threshold_boundary(r2, fires):
    assert kinds(diagnose([], scores=health.HeldOutScores("val", r2=r2))) == (["worse_than_baseline"] if fires else [])


@pytest.mark.parametrize("accuracy, fires", [(0.60, True), (0.6000001, False), (0.55, True), (0.9, False)])
def test_accuracy_at_or_below_the_majority_rate_fires(accuracy, fires):
    scores = health.HeldOutScores("test", accuracy=accuracy, majority_accuracy=0.6)
    found = diagnose([], scores=scores)
    assert kinds(found) == (["worse_than_baseline"] if fires else [])
    if fires:
        assert found[0].evidence["majority_accuracy"] == 0.6 and found[0].evidence["accuracy"] == accuracy


def test_majority_margin_is_a_threshold():
    scores = health.HeldOutScores("test", accuracy=0.62, majority_accuracy=0.6)
    assert kinds(diagnose([], scores=scores, thresholds=HealthThresholds(majority_margin=0.05))) == ["worse_than_baseline"]
    assert diagnose([], scores=None) == [] and diagnose([], scores=health.HeldOutScores("test")) == []
