"""fit(..., compile=...): compiled forward equals eager within tolerance, checkpoints and
artifacts see the plain module, and an unavailable backend falls back to eager with a warning."""

from __future__ import annotations

import time

import pytest
import torch
import torch._dynamo
from torch import nn

from dlforge.errors import ConfigError
from dlforge.train import fit
from dlforge.train.callbacks import Checkpoint, find_last_checkpoint
from dlforge.train.compiling import CompiledForward, CompileFallbackWarning, backend_name, compiled_forward
from dlforge.train.state_io import load_state

from .conftest import make_data, make_model

SEED = 3
# inductor fuses and reorders float ops; aot_eager runs the same ATen ops as eager
TOLERANCE = {"aot_eager": 1e-6, "inductor": 1e-5}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _fit(compile, **kw):
    model = make_model()
    result = fit(model, make_data(), make_data(32, seed=1), epochs=2, batch_size=16, optim="adam",
                 seed=SEED, device="cpu", compile=compile, **kw)
    return model, result


def _assert_close(a: nn.Module, b: nn.Module, tol: float) -> None:
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=tol, atol=tol, msg=name)


def test_compiled_fit_equals_eager_aot_eager():
    eager, r_eager = _fit(False)
    compiled, r_compiled = _fit("aot_eager")
    _assert_close(compiled, eager, TOLERANCE["aot_eager"])
    assert r_compiled.steps == r_eager.steps
    assert abs(r_compiled.history[-1]["train_loss"] - r_eager.history[-1]["train_loss"]) < 1e-5


@pytest.mark.slow
def test_compiled_fit_equals_eager_inductor():
    eager, _ = _fit(False)
    start = time.perf_counter()
    with torch.no_grad():  # inductor needs a C++ compiler here; skip rather than fall back
        fwd = compiled_forward(make_model(), True)
        fwd(torch.randn(4, 6))
        if fwd.fallback is not None:
            pytest.skip(f"inductor unavailable: {fwd.fallback}")
    compiled, _ = _fit(True)
    _assert_close(compiled, eager, TOLERANCE["inductor"])
    assert time.perf_counter() - start < 300


def test_compiled_checkpoint_and_artifact_load_into_plain_model(tmp_path):
    from dlforge.models import build
    from dlforge.registry import load_artifact, save_artifact

    model = build({"arch": "mlp", "hidden": [8]}, input_shape=(6,), num_outputs=3)
    fit(model, make_data(), epochs=1, batch_size=16, device="cpu", compile="aot_eager",
        callbacks=[Checkpoint(tmp_path / "ckpt", monitor=None, async_write=False)])
    state = load_state(find_last_checkpoint(tmp_path / "ckpt"))["model"]
    assert not any("_orig_mod" in k for k in state)
    assert list(state) == list(model.state_dict())
    plain = build({"arch": "mlp", "hidden": [8]}, input_shape=(6,), num_outputs=3)
    plain.load_state_dict(state)  # strict: same keys
    _assert_close(plain, model, 0.0)
    art = load_artifact(save_artifact(model, tmp_path / "art", task="classification"))
    x = make_data().tensors[0][:5]
    torch.testing.assert_close(art.model(x), model.eval()(x), rtol=0, atol=0)


def test_compiled_resume_continues_like_uninterrupted(tmp_path):
    full, _ = _fit("aot_eager")
    first = make_model()
    fit(first, make_data(), epochs=1, batch_size=16, optim="adam", seed=SEED, device="cpu",
        compile="aot_eager", callbacks=[Checkpoint(tmp_path, monitor=None, async_write=False)])
    resumed = make_model(seed=99)
    fit(resumed, make_data(), make_data(32, seed=1), epochs=2, batch_size=16, optim="adam", seed=SEED,
        device="cpu", compile="aot_eager", resume=tmp_path)
    _assert_close(resumed, full, TOLERANCE["aot_eager"])


def _broken_backend(gm, example_inputs):
    raise RuntimeError("no C++ compiler found (forced by the test)")


def test_unavailable_backend_falls_back_to_eager_with_warning():
    torch._dynamo.register_backend(name="dlforge_test_broken")(_broken_backend)
    eager, _ = _fit(False)
    with pytest.warns(CompileFallbackWarning, match="dlforge_test_broken.*runs eagerly"):
        fallen, _ = _fit("dlforge_test_broken")
    _assert_close(fallen, eager, 0.0)  # eager after the fallback: bit for bit


def test_unsupported_platform_falls_back(monkeypatch):
    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    model = nn.Linear(2, 1)
    with pytest.warns(CompileFallbackWarning, match="not supported on this Python or platform"):
        fwd = compiled_forward(model, True)
    assert isinstance(fwd, CompiledForward) and fwd.compiled is None and fwd.fallback
    x = torch.randn(3, 2)
    assert torch.equal(fwd(x), model(x))


def test_model_errors_are_not_swallowed():
    fwd = compiled_forward(nn.Linear(2, 1), "aot_eager")
    with pytest.raises(RuntimeError, match="reduction dim|shapes cannot be multiplied"):
        fwd(torch.randn(3, 5))
    assert fwd.fallback is None


def test_backend_names():
    assert backend_name(False) is None and backend_name(True) == "inductor"
    assert compiled_forward(model := nn.Linear(1, 1), False) is model
    with pytest.raises(ConfigError, match="torch does not know"):
        backend_name("not_a_backend")
    with pytest.raises(ConfigError):
        fit(make_model(), make_data(), epochs=1, device="cpu", compile="not_a_backend")


def test_train_config_compile_values():
    from dlforge.config import TrainConfig

    assert TrainConfig().compile is False
    assert TrainConfig(compile=True).compile is True
    assert TrainConfig(compile="aot_eager").compile == "aot_eager"


def test_docstring_examples_run():
    import doctest

    import dlforge.train.compiling as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_compiled_bert_with_padding_trains_like_eager():
    """BERT's compile path masks padding instead of unpadding: the same training, to float error."""
    from torch.utils.data import TensorDataset

    from dlforge.models import build

    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 30, (24, 10), generator=g)
    x[::2, 6:] = 0  # half the rows padded
    data = TensorDataset(x, torch.randint(0, 2, (24,), generator=g))
    spec = {"arch": "bert", "dim": 16, "num_layers": 1, "num_heads": 2, "ffn_dim": 32, "vocab_size": 30,
            "pool": "mean", "dropout": 0.0, "attention_dropout": 0.0}
    models = []
    for compile in (False, "aot_eager"):
        torch.manual_seed(0)
        model = build(spec, input_shape=(10,), num_outputs=2)
        fit(model, data, epochs=2, batch_size=8, optim="adamw", device="cpu", compile=compile)
        models.append(model)
    _assert_close(models[1], models[0], 1e-5)
