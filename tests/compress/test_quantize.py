"""int8 quantization: dynamic against PyTorch's own quantized Linear; static and QAT int8
against the fp32 parent (stated tolerance, argmax agreement) and through the artifact (exactly)."""

from __future__ import annotations

import warnings

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.testing import assert_close
from torch.utils.data import TensorDataset

from dlforge.compress import quantize_dynamic_int8, weight_bytes
from dlforge.compress.qat import quantize_aware_train
from dlforge.compress.quantize import Quantized, dynamic_int8, quantize_static_int8
from dlforge.errors import ConfigError, DataError
from dlforge.evaluate import evaluate
from dlforge.models import build
from dlforge.registry.artifact import load_artifact, save_artifact
from dlforge.train import fit


def test_int8_copy_is_close_to_fp32_and_leaves_the_original_alone() -> None:
    torch.manual_seed(0)
    model = build({"arch": "mlp", "hidden": [128, 128]}, input_shape=(64,), num_outputs=10).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small = quantize_dynamic_int8(model)
    x = torch.randn(32, 64)
    with torch.inference_mode():
        ref, got = model(x), small(x)
    # int8 weights with one scale per tensor: errors of a few per cent of the logits' spread
    assert (got - ref).abs().max() < 0.05 * ref.std()
    assert (got.argmax(1) == ref.argmax(1)).float().mean() >= 0.9
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])  # the fp32 model is unchanged
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 3


def test_each_layer_equals_torch_dynamic_quantized_linear() -> None:
    torch.manual_seed(1)
    layer = nn.Linear(32, 16)
    (qlayer,) = [m for m in quantize_dynamic_int8(nn.Sequential(layer)).modules()
                 if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    layer.qconfig = torch.ao.quantization.default_dynamic_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = torch.ao.nn.quantized.dynamic.Linear.from_float(layer)
    x = torch.randn(8, 32)
    assert_close(qlayer(x), reference(x), rtol=0, atol=0)


def test_weight_bytes_counts_int8_weights() -> None:
    model = nn.Sequential(nn.Linear(100, 200), nn.ReLU(), nn.Linear(200, 10))
    fp32 = (100 * 200 + 200 + 200 * 10 + 10) * 4
    assert weight_bytes(model) == fp32
    assert weight_bytes(quantize_dynamic_int8(model)) == 100 * 200 + 200 * 10 + (200 + 10) * 4


# ----------------------------------------------------------------- static int8 and QAT on digits

# The int8 model against its fp32 parent on held-out digits: int8 activations move each
# probability by at most MAX_PROB_DIFF, and the predicted class agrees on >= AGREEMENT.
MAX_PROB_DIFF, AGREEMENT = 0.05, 0.97


@pytest.fixture(scope="module")
def digits() -> dict:
    """A small CNN and MLP trained 3 epochs on 1400 of sklearn's 8x8 digits, 397 held out."""
    data = load_digits()
    x = torch.tensor(data.images / 16, dtype=torch.float32)[:, None]  # (N, 1, 8, 8) in [0, 1]
    y = torch.tensor(data.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = TensorDataset(x[order[:1400]], y[order[:1400]]), (x[order[1400:]], y[order[1400:]])
    models = {}
    for spec in ({"arch": "cnn", "channels": [8, 16]}, {"arch": "mlp", "hidden": [64]}):
        torch.manual_seed(0)
        model = build(spec, input_shape=(1, 8, 8), num_outputs=10)
        fit(model, train, epochs=3, batch_size=64, device="cpu", optim={"name": "adam", "lr": 3e-3})
        models[spec["arch"]] = model.eval()
    return {"train": train, "test": test, **models}


def _probs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).softmax(dim=1)


def _check_close_to_fp32(q: Quantized, fp32: nn.Module, x: torch.Tensor) -> None:
    ref, got = _probs(fp32, x), _probs(q.model, x)
    assert (got - ref).abs().max() <= MAX_PROB_DIFF
    assert (got.argmax(1) == ref.argmax(1)).float().mean() >= AGREEMENT


def _check_round_trip(q: Quantized, fp32: nn.Module, x: torch.Tensor, y: torch.Tensor, folder) -> None:
    """The artifact answers exactly what ``q.model`` answers, and evaluates the same."""
    save_artifact(fp32, folder, task="classification", quantization=q.recipe, state=q.state)
    art = load_artifact(folder)
    assert art.meta["quantization"] == q.recipe
    assert_close(art.predict(x)["probabilities"], _probs(q.model, x), rtol=0, atol=0)
    assert evaluate(art, (x, y)).metrics == evaluate(q.model, (x, y)).metrics


@pytest.mark.parametrize("arch", ["cnn", "mlp"])
def test_static_int8_is_close_to_fp32_and_round_trips_exactly(digits, arch, tmp_path) -> None:
    fp32 = digits[arch]
    before = {k: v.clone() for k, v in fp32.state_dict().items()}
    q = quantize_static_int8(fp32, digits["train"].tensors[0][:256])
    x, y = digits["test"]
    _check_close_to_fp32(q, fp32, x)
    _check_round_trip(q, fp32, x, y, tmp_path / "int8")
    assert all(torch.equal(v, before[k]) for k, v in fp32.state_dict().items())  # the parent is unchanged
    assert q.recipe == {"kind": "static_int8", "engine": "x86", "qconfig": "default", "example_shape": [1, 8, 8]}


def test_calibration_forms_agree_and_batches_limits_them(digits) -> None:
    x = digits["train"].tensors[0][:256]
    y = digits["train"].tensors[1][:256]
    reference = quantize_static_int8(digits["cnn"], x, batch_size=64)
    held_out = digits["test"][0]
    for calibration in (TensorDataset(x, y), [(x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)],
                        torch.cat([x, x.flip(0)])):  # batches=4 stops after the first 256
        q = quantize_static_int8(digits["cnn"], calibration, batch_size=64, batches=4)
        assert_close(q.model(held_out), reference.model(held_out), rtol=0, atol=0)


def test_per_tensor_qconfig_also_meets_the_tolerance(digits) -> None:
    q = quantize_static_int8(digits["cnn"], digits["train"].tensors[0][:256], qconfig="per_tensor")
    assert q.recipe["qconfig"] == "per_tensor"
    _check_close_to_fp32(q, digits["cnn"], digits["test"][0])


def test_quantization_aware_training_through_fit(digits, tmp_path) -> None:
    fp32 = digits["cnn"]
    train = TensorDataset(*(t[:512] for t in digits["train"].tensors))
    q = quantize_aware_train(fp32, train, epochs=1, lr=1e-4, batch_size=64)
    x, y = digits["test"]
    # QAT retrains, so the int8 model may differ from its parent; it must not score worse
    ref, got = _probs(fp32, x).argmax(1), _probs(q.model, x).argmax(1)
    assert (got == ref).float().mean() >= 0.95
    assert (got == y).float().mean() >= (ref == y).float().mean() - 0.01
    _check_round_trip(q, fp32, x, y, tmp_path / "qat")
    with pytest.raises(ConfigError, match="both lr and optim"):
        quantize_aware_train(fp32, digits["train"], lr=1e-3, optim="sgd")


def test_dynamic_int8_round_trips_as_recipe_and_state(digits, tmp_path) -> None:
    q = dynamic_int8(digits["mlp"])
    assert q.recipe == {"kind": "dynamic_int8"}
    assert_close(q.model(digits["test"][0]), quantize_dynamic_int8(digits["mlp"])(digits["test"][0]), rtol=0, atol=0)
    _check_round_trip(q, digits["mlp"], *digits["test"], tmp_path / "dynamic")


@pytest.mark.parametrize("bad", [torch.zeros(8, 64), torch.zeros(8, 1, 28, 28), [torch.zeros(8, 8, 8)]])
def test_calibration_of_the_wrong_shape_names_the_expected_shape(digits, bad) -> None:
    with pytest.raises(DataError, match=r"per-sample shape \(1, 8, 8\)"):
        quantize_static_int8(digits["cnn"], bad)
    with pytest.raises(DataError, match="empty"):
        quantize_static_int8(digits["cnn"], torch.zeros(0, 1, 8, 8))


@pytest.mark.parametrize("spec", [{"arch": "rnn"}, {"arch": "bert", "vocab_size": 50, "dim": 16, "num_layers": 1,
                                                     "num_heads": 2, "ffn_dim": 32}])
def test_sequence_models_are_pointed_to_dynamic_int8_or_onnx(spec) -> None:
    model = build(spec, input_shape=(7, 3) if spec["arch"] == "rnn" else (7,), num_outputs=2)
    with pytest.raises(ConfigError, match="dynamic int8.*ONNX Runtime"):
        quantize_static_int8(model, torch.zeros(4, 7, 3))
