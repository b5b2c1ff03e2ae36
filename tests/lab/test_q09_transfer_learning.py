"""Topic 9 at the quick budget: k-shot transfer on digits, MiniLM versus scratch on text."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from dlforge.data import load_builtin
from dlforge.lab import q09_transfer_learning as q09
from dlforge.lab import single_thread
from dlforge.models import build
from dlforge.registry import save_artifact
from dlforge.train import load_pretrained_weights

from .cache import finding_for

QUICK = q09.BUDGETS["quick"]


@pytest.fixture(scope="module")
def numbers():
    return finding_for(9).numbers


def test_k_values_and_sizes_are_as_configured(numbers):
    assert numbers["image_k"] == QUICK["image_k"] and numbers["text_k"] == QUICK["text_k"]
    for method in ("scratch", "finetune", "probe"):
        assert len(numbers[f"image_{method}_accuracy"]) == len(QUICK["image_k"])
    for method in ("minilm", "scratch", "scratch_long", "best_scratch"):
        assert len(numbers[f"text_{method}_accuracy"]) == len(QUICK["text_k"])
    # Half of every class of 5-9 is held out; the text test set is balanced.
    y = load_builtin("digits").y
    assert numbers["image_test_images"] == sum(int((y == d).sum()) // 2 for d in range(5, 10))
    assert numbers["text_test_texts"] == 6 * QUICK["text_test_per_class"]
    assert numbers["text_chance_accuracy"] == round(1 / 6, 4)
    assert 0 < numbers["text_scratch_vocab_size"] <= q09.SCRATCH_VOCAB


def test_accuracies_are_fractions_and_gains_are_differences(numbers):
    accuracies = [a for key, v in numbers.items() if key.endswith("_accuracy") and isinstance(v, list)
                  for a in v]
    assert accuracies and all(0.0 <= a <= 1.0 for a in accuracies)
    # element-wise means over seeds of per-seed differences: the differences of the means
    assert numbers["image_gain"] == pytest.approx([f - s for f, s in zip(
        numbers["image_finetune_accuracy"], numbers["image_scratch_accuracy"])], abs=3e-4)
    # the better scratch run is picked on each seed: its mean is at least either mean
    for best, a, b in zip(numbers["text_best_scratch_accuracy"], numbers["text_scratch_accuracy"],
                          numbers["text_scratch_long_accuracy"]):
        assert best >= max(a, b) - 1e-4
    assert numbers["text_gain"] == pytest.approx([m - s for m, s in zip(
        numbers["text_minilm_accuracy"], numbers["text_best_scratch_accuracy"])], abs=3e-4)
    # The scalars the checks read are the ends of those lists, not separate measurements.
    assert numbers["image_gain_at_smallest_k"] == pytest.approx(numbers["image_gain"][0], abs=1e-4)
    assert numbers["image_gain_at_largest_k"] == pytest.approx(numbers["image_gain"][-1], abs=1e-4)
    assert numbers["text_gain_at_smallest_k"] == pytest.approx(numbers["text_gain"][0], abs=1e-4)
    assert numbers["image_gain_shrinkage"] == pytest.approx(
        numbers["image_gain_at_smallest_k"] - numbers["image_gain_at_largest_k"], abs=3e-4)


def test_gains_are_paired_per_seed():
    f = finding_for(9)
    assert len(f.seeds) == q09.SEEDS["quick"]
    gains = f.per_seed["image_gain_at_smallest_k"]  # fine-tuned minus scratch on each seed
    assert len(gains) == len(f.seeds) and all(abs(g) < 0.5 for g in gains)
    gain = f.intervals["image_gain_at_smallest_k"]
    assert gain.n == len(f.seeds) and gain.low <= gain.mean <= gain.high
    assert gain.mean == pytest.approx(np.mean(gains), abs=1e-4)
    shrink = [a - b for a, b in zip(gains, f.per_seed["image_gain_at_largest_k"])]
    assert f.per_seed["image_gain_shrinkage"] == pytest.approx(shrink, abs=2e-4)
    assert f.intervals["text_gain_at_smallest_k"].low > q09.MIN_GAIN  # MiniLM wins by far


def test_checks_compare_gains_with_the_stated_margin():
    checks = {str(c) for c in finding_for(9).checks}
    assert checks == {f"image_gain_at_smallest_k >= {q09.MIN_GAIN}",
                      f"text_gain_at_smallest_k >= {q09.MIN_GAIN}",
                      "image_gain_shrinkage > 0.0"}


def test_the_pretraining_worked_and_the_pretrained_models_learned(numbers):
    assert numbers["pretrain_val_accuracy"] >= 0.9  # digits 0-4 are easy: a failed pretraining shows
    assert numbers["image_finetune_accuracy"][-1] >= 0.8
    # MiniLM is far above chance on 8 docstrings per class; the scratch model is the question.
    assert numbers["text_minilm_accuracy"][0] >= 3 * numbers["text_chance_accuracy"]
    body = [k for k in build(q09.CNN_SPEC, input_shape=(1, 8, 8), num_outputs=5).state_dict()
            if not k.startswith("head.")]
    assert numbers["pretrained_tensors_loaded"] == len(body)


def test_transfer_body_loads_every_pretrained_conv_tensor_and_keeps_the_fresh_head(tmp_path):
    torch.manual_seed(1)
    source = build(q09.CNN_SPEC, input_shape=(1, 8, 8), num_outputs=5)
    with torch.no_grad():  # running statistics differ from a fresh model's too
        for block in source.blocks:
            block[1].running_mean.uniform_(-1, 1)
            block[1].running_var.uniform_(0.5, 2)
    folder = save_artifact(source, tmp_path / "pretrained", task="classification")
    torch.manual_seed(2)
    target = build(q09.CNN_SPEC, input_shape=(1, 8, 8), num_outputs=5)
    fresh_head = {k: v.clone() for k, v in target.head.state_dict().items()}

    loaded = q09.transfer_body(target, folder)

    src, dst = source.state_dict(), target.state_dict()
    assert sorted(loaded) == sorted(k for k in src if not k.startswith("head."))
    for name in loaded:
        torch.testing.assert_close(dst[name], src[name], rtol=0, atol=0)
    for name, value in fresh_head.items():
        torch.testing.assert_close(target.head.state_dict()[name], value, rtol=0, atol=0)
    assert not torch.equal(target.head.weight, source.head.weight)
    # Same result as loading the body by hand from the in-memory model.
    reference = build(q09.CNN_SPEC, input_shape=(1, 8, 8), num_outputs=5)
    reference.load_state_dict({k: v for k, v in src.items() if not k.startswith("head.")}, strict=False)
    reference.head.load_state_dict(fresh_head)
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(target.eval()(x), reference.eval()(x))


def test_pretrain_saves_an_artifact_that_rebuilds_the_source_model(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(70, 1, 8, 8)  # (N, 1, 8, 8)
    y = torch.arange(70) % 10  # only 0-4 are used: 35 images, 5 of them held out
    with single_thread():  # two threads on a busy machine make this tiny fit 50x slower
        folder, acc = q09.pretrain(x, y, seed=3, folder=tmp_path / "source")
        _, again = q09.pretrain(x, y, seed=3, folder=tmp_path / "again")
    assert 0.0 <= acc <= 1.0
    # The same seed trains the same model; loading the artifact reproduces its outputs.
    assert again == acc
    target = build(q09.CNN_SPEC, input_shape=(1, 8, 8), num_outputs=5)
    source = build(q09.CNN_SPEC, input_shape=(1, 8, 8), num_outputs=5)
    load_pretrained_weights(source, folder)
    q09.transfer_body(target, folder)
    torch.testing.assert_close(target.eval().features(x[:4])[-1], source.eval().features(x[:4])[-1])


def test_padding_masked_equals_the_transformer_given_the_mask():
    torch.manual_seed(0)
    inner = build({**q09.SCRATCH_TEXT_SPEC, "vocab_size": 20}, input_shape=(8,), num_outputs=3).eval()
    x = torch.tensor([[5, 6, 7, 0, 0, 0, 0, 0], [9, 8, 7, 6, 5, 4, 3, 2]])
    wrapped = q09.PaddingMasked(inner, pad_id=0)
    torch.testing.assert_close(wrapped(x), inner(x, padding_mask=x == 0))
    # Masked padding and mean pooling: extra padding at the end changes nothing.
    torch.testing.assert_close(wrapped(x[:1, :5]), wrapped(x[:1]))


def test_shuffled_by_class_partitions_each_class():
    labels = np.array([2, 0, 1, 0, 2, 2, 1])
    parts = q09.shuffled_by_class(labels, np.random.default_rng(0))
    for c, part in enumerate(parts):
        assert sorted(part.tolist()) == np.flatnonzero(labels == c).tolist()


def test_figure_is_a_png():
    image = Image.open(io.BytesIO(base64.b64decode(finding_for(9).figures[0].png_base64)))
    assert image.format == "PNG" and image.width > 400
