"""int8 recipes: FX tracing of MLP and CNN, rebuilding int8 models from stored state, and the
weights-header check that refuses a mismatching state before anything is allocated."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from dlforge.errors import ArtifactError, ConfigError, DataError
from dlforge.models import build, spec_of
from dlforge.models.quantized import (
    QuantizedModel,
    convert,
    dynamic,
    is_tracing,
    load_quantized,
    prepare,
    state_problems,
    static_recipe,
)
from dlforge.registry import artifact as artifact_module
from dlforge.registry.artifact import load_artifact, save_artifact

SPECS = [
    ({"arch": "mlp", "hidden": [16, 8], "batch_norm": "before", "dropout": 0.1}, (1, 4, 4)),
    ({"arch": "cnn", "channels": [4, 8, 16]}, (3, 5, 7)),  # pooling stops at 1x1
    ({"arch": "cnn", "channels": [4, 4], "pool": "avg", "global_pool": "max"}, (2, 2, 9)),
]


def _model(spec: dict, shape: tuple[int, ...], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build(spec, input_shape=shape, num_outputs=5).eval()


@pytest.mark.parametrize(("spec", "shape"), SPECS)
def test_fx_trace_equals_the_eager_model(spec, shape) -> None:
    model = _model(spec, shape)
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(6, *shape)
    assert_close(traced(x), model(x), rtol=0, atol=0)
    assert not is_tracing()  # only while tracing
    with pytest.raises(DataError, match="expected"):
        model(torch.randn(6, 3))  # eager models keep their input check


@pytest.mark.parametrize("qconfig", ["default", "per_tensor"])
@pytest.mark.parametrize(("spec", "shape"), SPECS)
def test_load_quantized_rebuilds_the_int8_model_bit_for_bit(spec, shape, qconfig) -> None:
    model = _model(spec, shape)
    recipe = static_recipe(model, qconfig=qconfig)
    observed = prepare(model, recipe)
    observed(torch.randn(64, *shape))  # calibration
    int8 = convert(observed, model, recipe)
    rebuilt = load_quantized(_model(spec, shape, seed=1), recipe, observed.state_dict())
    x = torch.randn(9, *shape)
    assert_close(rebuilt(x), int8(x), rtol=0, atol=0)
    assert_close(int8(x), model(x), rtol=0, atol=0.25 * model(x).abs().max().item())  # int8: a coarse grid


def test_qat_recipe_round_trips_through_its_state() -> None:
    model = _model(*SPECS[1]).train()
    recipe = static_recipe(model, kind="qat_int8")
    observed = prepare(model, recipe)
    observed(torch.randn(16, 3, 5, 7))  # one training-mode pass sets scales and BN statistics
    int8 = convert(observed, model, recipe)
    rebuilt = load_quantized(_model(*SPECS[1], seed=2), recipe, observed.state_dict())
    x = torch.randn(4, 3, 5, 7)
    assert_close(rebuilt(x), int8(x), rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.ao, the reference
def test_dynamic_recipe_quantizes_linear_and_lstm_like_torch() -> None:
    model = build({"arch": "rnn", "kind": "lstm", "hidden_size": 16}, input_shape=(7, 3), num_outputs=4).eval()
    q = dynamic(model)
    kinds = {type(m) for m in q.modules()}
    assert torch.ao.nn.quantized.dynamic.LSTM in kinds and torch.ao.nn.quantized.dynamic.Linear in kinds
    reference = torch.ao.quantization.quantize_dynamic(model, {nn.Linear, nn.LSTM, nn.GRU}, dtype=torch.qint8)
    x = torch.randn(5, 7, 3)
    assert_close(q(x), reference(x), rtol=0, atol=0)
    rebuilt = load_quantized(build(spec_of(model)), {"kind": "dynamic_int8"}, model.state_dict())
    assert_close(rebuilt(x), q(x), rtol=0, atol=0)


def test_unknown_recipes_and_unsupported_archs_are_refused() -> None:
    model = _model(*SPECS[0])
    with pytest.raises(ArtifactError, match="unknown quantization recipe"):
        load_quantized(model, {"kind": "int4"}, model.state_dict())
    with pytest.raises(ArtifactError, match="qconfig"):
        load_quantized(model, {**static_recipe(model), "qconfig": "fancy"}, {})
    rnn = build({"arch": "rnn"}, input_shape=(7, 3), num_outputs=4)
    with pytest.raises(ConfigError, match="dynamic int8"):
        static_recipe(rnn)


def test_int8_model_checks_inputs_and_stays_on_the_cpu() -> None:
    model = _model(*SPECS[1])
    recipe = static_recipe(model)
    observed = prepare(model, recipe)
    observed(torch.randn(8, 3, 5, 7))
    int8 = convert(observed, model, recipe)
    assert isinstance(int8, QuantizedModel)
    with pytest.raises(DataError, match=r"expected \(B, 3, 5, 7\)"):
        int8(torch.randn(2, 3, 8, 8))
    for move in (lambda: int8.to("cuda"), lambda: int8.cuda(), lambda: int8.to(torch.device("cuda:0"))):
        with pytest.raises(ConfigError, match="CPU only"):
            move()
    assert int8.to("cpu") is int8


def test_state_problems_accepts_calibrated_state_and_names_mismatches() -> None:
    model = _model(*SPECS[1])
    recipe = static_recipe(model, kind="qat_int8")
    observed = prepare(model.train(), recipe)
    observed(torch.randn(8, 3, 5, 7))  # per-channel statistics grow from [0] to [channels]
    shapes = {k: list(v.shape) for k, v in observed.state_dict().items()}
    with torch.device("meta"):
        meta_model = build(spec_of(model))
    assert state_problems(meta_model, recipe, shapes) == []
    first = next(iter(k for k in shapes if k.endswith("weight")))
    bad = {**shapes, first: [99, 1, 1, 1], "extra": [3]}
    bad.pop(next(k for k in shapes if k.endswith(("histogram", "min_val"))))
    problems = state_problems(meta_model, recipe, bad)
    assert any(p.startswith("missing") for p in problems) and "unexpected extra" in problems
    assert any(first in p and "[99, 1, 1, 1]" in p for p in problems)
    sized = next(k for k in shapes if k.endswith("weight_fake_quant.scale"))
    assert state_problems(meta_model, recipe, {**shapes, sized: [10**9]})  # no huge "per-channel" tensor


def test_artifact_refuses_a_mismatching_int8_state_before_reading_weights(tmp_path, monkeypatch) -> None:
    model = _model(*SPECS[1])
    recipe = static_recipe(model)
    observed = prepare(model, recipe)
    observed(torch.randn(8, 3, 5, 7))
    state = observed.state_dict()
    state["head.weight"] = torch.zeros(7, 3)  # not the head's shape
    save_artifact(model, tmp_path / "bad", task="classification", quantization=recipe, state=state)

    def no_read(*args, **kwargs):
        raise AssertionError("weights were read before the header check")

    monkeypatch.setattr(artifact_module, "load_file", no_read)
    with pytest.raises(ArtifactError, match=r"head.weight has shape \[7, 3\]"):
        load_artifact(tmp_path / "bad")
    save_artifact(model, tmp_path / "unknown", task="classification", quantization={"kind": "int4"},
                  state=observed.state_dict())
    with pytest.raises(ArtifactError, match="unknown quantization recipe"):
        load_artifact(tmp_path / "unknown")


def test_a_dynamic_int8_bert_reads_any_sequence_length() -> None:
    # The dynamic recipe keeps the eager model, so a BERT still takes shorter sequences.
    from dlforge.models import build
    from dlforge.models.quantized import dynamic

    bert = build({"arch": "bert", "vocab_size": 50, "dim": 16, "num_layers": 1, "num_heads": 2},
                 input_shape=(32,), num_outputs=3).eval()
    short = torch.randint(1, 50, (2, 16))
    assert dynamic(bert)(short).shape == (2, 3)
