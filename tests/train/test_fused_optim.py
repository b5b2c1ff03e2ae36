"""optim.fused: auto keeps the CPU results bit for bit, picks fused kernels on CUDA, and
true/false force the kernel (with a clear error where torch has none)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from dlforge.errors import ConfigError
from dlforge.train import fit
from dlforge.train.optim import FUSED, OPTIMIZERS, OptimConfig, build_optimizer, kernel_options

from .conftest import make_data, make_model


def _fit(name: str, fused, **optim) -> torch.nn.Module:
    model = make_model(dropout=0.1)
    fit(model, make_data(), epochs=2, batch_size=16, seed=5, device="cpu",
        optim={"name": name, "lr": 0.01, "weight_decay": 1e-3, "fused": fused, **optim})
    return model


@pytest.mark.parametrize("name", [n for n in OPTIMIZERS if n != "gd"])
def test_auto_equals_plain_path_on_cpu_bit_for_bit(name):
    auto, plain = _fit(name, "auto"), _fit(name, False)
    for a, b in zip(auto.state_dict().values(), plain.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["adam", "adamw", "momentum"])
def test_forced_fused_on_cpu_agrees_with_plain(name):
    fused, plain = _fit(name, True), _fit(name, False)
    for a, b in zip(fused.state_dict().values(), plain.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_kernel_choice():
    cpu, cuda = [torch.zeros(2)], [SimpleNamespace(device=torch.device("cuda"))]
    assert kernel_options(OptimConfig(name="adamw"), cpu) == {}  # torch's default on the CPU
    for name in FUSED:
        assert kernel_options(OptimConfig(name=name), cuda) == {"fused": True}
    assert kernel_options(OptimConfig(name="rmsprop"), cuda) == {}  # no fused rmsprop: torch's foreach
    assert kernel_options(OptimConfig(name="adam", fused=False), cuda) == {"foreach": False, "fused": False}
    assert kernel_options(OptimConfig(name="rmsprop", fused=False), cpu) == {"foreach": False}
    assert kernel_options(OptimConfig(name="sgd", fused=True), cpu) == {"fused": True}


def test_forced_fused_without_a_kernel_is_a_config_error():
    with pytest.raises(ConfigError, match="no fused rmsprop kernel") as err:
        build_optimizer(make_model().parameters(), OptimConfig(name="rmsprop", fused=True))
    assert "fused: auto" in err.value.hint
    with pytest.raises(ConfigError, match="no fused kernel for parameters"):
        kernel_options(OptimConfig(name="adam", fused=True), [SimpleNamespace(device=torch.device("meta"))])


def test_param_groups_and_config_values():
    groups = [{"params": list(make_model().parameters()), "lr": 0.1}]
    opt = build_optimizer(groups, OptimConfig(name="adam", fused=True))
    assert opt.defaults["fused"] is True and opt.param_groups[0]["lr"] == 0.1
    assert OptimConfig().fused == "auto"
    with pytest.raises(ValueError):
        OptimConfig(fused="sometimes")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_is_fused_on_cuda():
    model = make_model().cuda()
    assert build_optimizer(model.parameters(), OptimConfig(name="adamw")).defaults["fused"] is True
