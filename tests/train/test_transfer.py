"""Transfer learning: freezing (BatchNorm statistics included), discriminative and
layer-wise learning rates, gradual unfreezing across a resume, pretrained weights."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

from dlforge.errors import ArtifactError, ConfigError
from dlforge.models import build, build_cnn
from dlforge.registry import save_artifact
from dlforge.train import (
    Callback,
    Checkpoint,
    GradualUnfreezing,
    epoch_permutation,
    fit,
    freeze,
    layerwise_lr_groups,
    load_pretrained_weights,
    param_groups,
    seed_everything,
    trainable_summary,
    unfreeze,
)

SEED = 3


def _cnn(seed: int = 0, channels=(4, 8), num_outputs: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return build_cnn((1, 8, 8), num_outputs, channels=channels)


def _images(n: int = 64, classes: int = 3, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x.mean(dim=(1, 2, 3)) * 4 + torch.randn(n, generator=g)).clamp(-1, 1).add(1).long().clamp(max=classes - 1)
    return TensorDataset(x, y)


def _clone(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _under(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith(prefix)}


# ----------------------------------------------------------------------------- freeze

def test_frozen_block_is_bit_identical_and_matches_a_hand_written_loop():
    data = _images()
    model = _cnn()
    ref = copy.deepcopy(model)
    before = _clone(model)
    assert freeze(model, "blocks.0.*") == ["blocks.0.0.weight", "blocks.0.1.weight", "blocks.0.1.bias"]
    fit(model, data, epochs=3, batch_size=16, optim={"name": "adam", "lr": 0.01}, seed=SEED, device="cpu")
    after = _clone(model)
    # weights and BatchNorm running statistics of the frozen block did not move at all
    for k, v in _under("blocks.0.", before).items():
        assert torch.equal(after[k], v), k
    for k in ("blocks.1.0.weight", "blocks.1.1.running_mean", "head.weight", "head.bias"):
        assert not torch.equal(after[k], before[k]), k

    # Reference: PyTorch with the frozen block left out of the optimizer and its BN in eval.
    seed_everything(SEED)
    trainable = [p for n, p in ref.named_parameters() if not n.startswith("blocks.0.")]
    opt = torch.optim.Adam(trainable, lr=0.01)
    x, y = data.tensors
    for epoch in range(3):
        ref.train()
        ref.blocks[0].eval()
        order = epoch_permutation(len(x), SEED, epoch)
        for start in range(0, len(x), 16):
            idx = order[start : start + 16]
            nn.functional.cross_entropy(ref(x[idx]), y[idx]).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    for k, v in ref.state_dict().items():
        assert torch.equal(after[k], v), k


def test_bn_eval_false_lets_frozen_statistics_drift_and_unfreeze_releases_them():
    x = torch.randn(16, 1, 8, 8) * 3 + 1
    model = _cnn()
    freeze(model, "blocks.0.*", bn_eval=False)
    model.train()
    model(x)
    assert not torch.equal(model.blocks[0][1].running_mean, torch.zeros(4))
    assert model.blocks[0][1].weight.requires_grad is False

    model = _cnn()
    freeze(model, "blocks.*")
    model.train()
    model(x)
    assert not model.blocks[0][1].training and not model.blocks[1][1].training
    assert torch.equal(model.blocks[0][1].running_mean, torch.zeros(4))
    assert unfreeze(model, "blocks.1.*") == ["blocks.1.0.weight", "blocks.1.1.weight", "blocks.1.1.bias"]
    model.train()
    model(x)
    assert model.blocks[1][1].training and not model.blocks[0][1].training
    assert model.blocks[1][1].num_batches_tracked.item() == 1
    assert model.blocks[0][1].num_batches_tracked.item() == 0


def test_freeze_returns_changes_and_summary_counts():
    model = _cnn()
    assert freeze(model, ["head.*"]) == ["head.weight", "head.bias"]
    assert freeze(model, "head.bias") == []  # already frozen: nothing changed
    summary = trainable_summary(model)
    expected = {}
    for name, p in model.named_parameters():
        counts = expected.setdefault(name.split(".")[0], {"trainable": 0, "frozen": 0})
        counts["trainable" if p.requires_grad else "frozen"] += p.numel()
    assert summary["modules"] == expected
    assert summary["frozen"] == model.head.weight.numel() + model.head.bias.numel() == 27
    assert summary["total"] == sum(p.numel() for p in model.parameters())
    assert unfreeze(model, "*") == ["head.weight", "head.bias"]
    assert trainable_summary(model)["frozen"] == 0


def test_unmatched_pattern_names_it_and_shows_the_model():
    model = _cnn()
    with pytest.raises(ConfigError) as err:
        freeze(model, ["blocks.0.*", "block.1.*"])
    text = str(err.value)
    assert "train.freeze" in text and "'block.1.*'" in text
    assert "top-level modules: blocks, head" in text and "blocks.0.0.weight" in text
    assert all(p.requires_grad for p in model.parameters())  # checked before changing anything
    with pytest.raises(ConfigError, match="train.unfreeze pattern 'encoder.*'"):
        unfreeze(model, "encoder.*")


# ----------------------------------------------------------------------------- learning rates

def test_param_groups_first_matching_rule_wins():
    model = _cnn()
    freeze(model, "blocks.0.*")  # frozen parameters still get a group
    groups = param_groups(model, 0.01, [{"pattern": "blocks.0.*", "lr": 1e-4},
                                        {"pattern": "blocks.*", "lr_mult": 0.5},
                                        {"pattern": "blocks.1.0.*", "lr": 1.0}])  # shadowed: dropped
    names = {id(p): n for n, p in model.named_parameters()}
    got = [(g["name"], g["lr"], [names[id(p)] for p in g["params"]]) for g in groups]
    assert got == [
        ("default", 0.01, ["head.weight", "head.bias"]),
        ("blocks.0.*", 1e-4, ["blocks.0.0.weight", "blocks.0.1.weight", "blocks.0.1.bias"]),
        ("blocks.*", 0.005, ["blocks.1.0.weight", "blocks.1.1.weight", "blocks.1.1.bias"]),
    ]
    assert sorted(sum((g[2] for g in got), [])) == sorted(names.values())


@pytest.mark.parametrize("rule, message", [
    ({"pattern": "head.*"}, "neither lr nor lr_mult"),
    ({"pattern": "head.*", "lr": 0.1, "lr_mult": 2}, "lr and lr_mult"),
    ({"pattern": "head.*", "lr": 0}, r"optim.param_groups\[0\].lr is 0"),
    ({"pattern": "head.*", "lr_mult": -1.0}, "lr_mult is -1.0"),
    ({"pattern": "heads.*", "lr": 0.1}, "pattern 'heads.*' matches no parameter"),
    ({"pattern": "head.*", "rate": 0.1}, "unknown keys"),
])
def test_param_group_rule_errors(rule, message):
    with pytest.raises(ConfigError, match=message) as err:
        param_groups(_cnn(), 0.01, [rule])
    assert "optim.param_groups" in str(err.value)


class RecordLrs(Callback):
    def __init__(self):
        self.lrs = []

    def on_step_end(self, state):
        self.lrs.append([g["lr"] for g in state.optimizer.param_groups])


def test_fit_with_groups_scales_every_group_by_the_same_cosine_factor():
    model = _cnn()
    groups = param_groups(model, 0.02, [{"pattern": "blocks.0.*", "lr_mult": 0.1}, {"pattern": "blocks.1.*", "lr": 0.004}])
    bases = [g["lr"] for g in groups]
    recorder = RecordLrs()
    fit(model, _images(), epochs=3, batch_size=16, optim={"name": "sgd", "lr": 0.02, "schedule": {"name": "cosine"}},
        param_groups=groups, callbacks=[recorder], seed=SEED, device="cpu")
    # Reference: PyTorch's cosine annealing over the same 12 steps, one base lr per group.
    dummy = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)], "lr": b} for b in bases])
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(dummy, T_max=len(recorder.lrs))
    for lrs in recorder.lrs:
        dummy.step()  # no gradients: only keeps the scheduler's step-order check quiet
        reference.step()
        torch.testing.assert_close(lrs, [g["lr"] for g in dummy.param_groups], rtol=1e-6, atol=1e-12)
    for lrs in recorder.lrs[:-1]:  # the last step anneals every rate to 0
        torch.testing.assert_close([lr / lrs[0] for lr in lrs], [b / bases[0] for b in bases])


def test_layerwise_lr_decays_from_the_top():
    model = _cnn(channels=(4, 8, 8))
    layers = ["blocks.0.*", "blocks.1.*", "blocks.2.*"]
    groups = layerwise_lr_groups(model, 0.01, 0.7, layers)
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs == {"default": 0.01, "blocks.0.*": 0.01 * 0.7**2, "blocks.1.*": 0.01 * 0.7**1, "blocks.2.*": 0.01 * 0.7**0}
    assert [len(g["params"]) for g in groups] == [2, 3, 3, 3]
    with pytest.raises(ConfigError, match="optim.layerwise_decay"):
        layerwise_lr_groups(model, 0.01, 0.0, layers)


# ----------------------------------------------------------------------------- gradual unfreezing

class Watch(Callback):
    """Record which parameters are trainable, and the weights, at each epoch start."""

    def __init__(self):
        self.trainable, self.weights = [], []

    def on_epoch_start(self, state):
        self.trainable.append(sorted({n.split(".")[0] + (f".{n.split('.')[1]}" if n.startswith("blocks") else "")
                                      for n, p in state.model.named_parameters() if p.requires_grad}))
        self.weights.append(_clone(state.model))


@pytest.mark.parametrize("every", [1, 2])
def test_gradual_unfreezing_schedule(every):
    model = _cnn()
    freeze(model, "blocks.*")
    initial = _clone(model)
    watch = Watch()
    epochs = 2 * every + 1
    result = fit(model, _images(), epochs=epochs, batch_size=16, optim={"name": "adam", "lr": 0.01}, seed=SEED,
                 device="cpu", callbacks=[GradualUnfreezing([["blocks.1.*"], ["blocks.0.*"]], every_n_epochs=every), watch])
    expected = [["head"]] * every + [["blocks.1", "head"]] * every + [["blocks.0", "blocks.1", "head"]]
    assert watch.trainable == expected
    events = [(r["epoch"], r["stage"], r["patterns"], r["tensors"]) for r in result.history if r["type"] == "unfreeze"]
    assert events == [(every, 0, ["blocks.1.*"], 3), (2 * every, 1, ["blocks.0.*"], 3)]
    # a stage's weights (and BN statistics) stay put until its epoch, then train
    for epoch, weights in enumerate(watch.weights):
        for block, unfrozen_at in (("blocks.1.", every), ("blocks.0.", 2 * every)):
            same = all(torch.equal(weights[k], v) for k, v in _under(block, initial).items())
            assert same == (epoch <= unfrozen_at), (epoch, block)
    assert not torch.equal(model.blocks[0][0].weight, initial["blocks.0.0.weight"])


def test_gradual_unfreezing_checks_patterns_before_training():
    model = _cnn()
    with pytest.raises(ConfigError, match="train.gradual_unfreezing pattern 'blocks.7.*'"):
        fit(model, _images(), epochs=1, device="cpu", callbacks=[GradualUnfreezing([["blocks.1.*"], ["blocks.7.*"]])])
    freeze(model, "blocks.*")
    trainable_only = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": 0.01}]
    with pytest.raises(ConfigError, match="blocks.1.0.weight, .* which the optimizer does not hold"):
        fit(model, _images(), epochs=1, device="cpu", param_groups=trainable_only,
            callbacks=[GradualUnfreezing([["blocks.1.*"]])])


class Crash(Exception):
    pass


class CrashAt(Callback):
    def __init__(self, epoch=None, step=None):
        self.epoch, self.step = epoch, step

    def on_step_end(self, state):
        if state.step == self.step:
            raise Crash

    def on_epoch_end(self, state):
        if state.epoch == self.epoch:
            raise Crash


@pytest.mark.parametrize("where", ["after_epoch_2", "mid_epoch_3"])
def test_gradual_unfreezing_survives_resume(tmp_path, where):
    data = _images()

    def run(extra, resume=None):
        model = _cnn()
        freeze(model, "blocks.*")
        callbacks = [GradualUnfreezing([["head.*", "blocks.1.*"], ["blocks.0.*"]]), *extra]
        result = fit(model, data, epochs=4, batch_size=16, optim={"name": "adamw", "lr": 0.01, "weight_decay": 0.1},
                     seed=SEED, device="cpu", callbacks=callbacks, resume=resume)
        return model, result

    ref_model, ref_result = run([])
    # 4 steps per epoch: every_n_steps=3 leaves step 9 (epoch 2, one batch in) as the last checkpoint
    ckpt = dict(every_n_epochs=1, every_n_steps=None) if where == "after_epoch_2" else dict(every_n_epochs=None, every_n_steps=3)
    crash = CrashAt(epoch=2) if where == "after_epoch_2" else CrashAt(step=10)
    with pytest.raises(Crash):
        run([Checkpoint(tmp_path / "checkpoints", monitor=None, async_write=False, **ckpt), crash])
    model, result = run([Checkpoint(tmp_path / "checkpoints", monitor=None, async_write=False, **ckpt)], resume=tmp_path)
    assert [p.requires_grad for p in model.parameters()] == [p.requires_grad for p in ref_model.parameters()]
    for (k, a), b in zip(model.state_dict().items(), ref_model.state_dict().values()):
        assert torch.equal(a, b), k
    unfreezes = [r for r in result.history if r["type"] == "unfreeze"]
    assert unfreezes == [r for r in ref_result.history if r["type"] == "unfreeze"] and len(unfreezes) == 2
    assert [r["train_loss"] for r in result.epochs] == [r["train_loss"] for r in ref_result.epochs]


# ----------------------------------------------------------------------------- pretrained weights

@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny CNN trained for one epoch on digits 0-4, saved as <run>/model."""
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    y = torch.tensor(digits.target)
    keep = y < 5
    model = _cnn(seed=1, num_outputs=5)
    fit(model, TensorDataset(x[keep], y[keep]), epochs=1, batch_size=64, optim={"name": "adam", "lr": 0.01}, device="cpu")
    run_dir = tmp_path_factory.mktemp("pretrain")
    save_artifact(model, run_dir / "model", task="classification", class_names=[str(i) for i in range(5)])
    return run_dir, model.eval(), x[~keep][:32]


def test_same_outputs_load_everything(pretrained):
    run_dir, source, x = pretrained
    model = _cnn(seed=2, num_outputs=5)  # e.g. digits 5-9: five other classes, same shapes
    report = load_pretrained_weights(model, run_dir)  # a run directory: its model/ is used
    assert report.skipped == {} and report.loaded == list(model.state_dict())
    assert report.summary() == f"loaded {len(report.loaded)} tensors; skipped none"
    torch.testing.assert_close(model.eval()(x), source(x), rtol=0, atol=0)


def test_other_outputs_skip_the_head(pretrained):
    run_dir, _, _ = pretrained
    weights = load_file(run_dir / "model" / "model.safetensors")
    model = _cnn(seed=2, num_outputs=3)
    head = model.head.weight.detach().clone()
    report = load_pretrained_weights(model, run_dir / "model")
    assert report.skipped == {"head.weight": "shape [5, 8] in the artifact, [3, 8] in the model",
                              "head.bias": "shape [5] in the artifact, [3] in the model"}
    for name, value in model.state_dict().items():
        if name.startswith("blocks."):
            assert torch.equal(value, weights[name]), name
    assert torch.equal(model.head.weight, head)
    assert report.summary().startswith(f"loaded {len(report.loaded)} tensors; skipped 2: head.weight (shape [5, 8]")


def test_pretrained_weight_errors(pretrained, tmp_path):
    run_dir, _, _ = pretrained
    mlp = build({"arch": "mlp", "hidden": [8]}, input_shape=(64,), num_outputs=5)
    with pytest.raises(ArtifactError, match="holds a 'cnn' model, but the model is a 'mlp'"):
        load_pretrained_weights(mlp, run_dir)
    with pytest.raises(ArtifactError, match="model.json is missing"):
        load_pretrained_weights(_cnn(), tmp_path)
    with pytest.raises(ArtifactError, match="no tensor .* matches the model"):
        load_pretrained_weights(_cnn(channels=(3, 6)), run_dir)  # only BN's step counters line up
    with pytest.raises(ArtifactError, match="not a dlforge model"):
        load_pretrained_weights(nn.Linear(64, 5), run_dir)
