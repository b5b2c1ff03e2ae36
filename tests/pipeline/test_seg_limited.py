"""Limited labels: SSL pretraining transfers the whole U-Net body, pseudo-labels threshold exactly,
self-training runs end to end, and fit trains reconstruction (float) targets."""

from __future__ import annotations

import doctest

import pytest
import torch
from torch.utils.data import TensorDataset

import dlforge.pipeline.seg_limited
from dlforge import models
from dlforge.data.segmentation_synthetic import synthetic_nuclei
from dlforge.errors import ConfigError, DataError
from dlforge.pipeline.seg_limited import (
    SegSchedule,
    fit_segmenter,
    pretrain_unet,
    pseudo_labels,
    self_train,
    train_segmenter,
    transfer_pretrained,
)
from dlforge.targets import IGNORE_INDEX
from dlforge.train import fit

SPEC = {"widths": [4, 8, 16]}


@pytest.fixture(scope="module")
def tiny():
    b = synthetic_nuclei(4, size=(32, 32), radius=(3, 6), seed=0)
    return torch.as_tensor(b.x), torch.as_tensor(b.y)  # (4, 1, 32, 32), (4, 32, 32)


def test_fit_trains_a_unet_on_float_targets_of_the_output_shape():
    x = torch.rand(8, 2, 16, 16, generator=torch.Generator().manual_seed(0))
    model = models.build({**SPEC, "arch": "unet"}, input_shape=(2, 16, 16), num_outputs=2)
    result = fit(model, TensorDataset(x, x.clone()), TensorDataset(x, x.clone()), epochs=3, batch_size=4, device="cpu")
    epochs = [r for r in result.history if r["type"] == "epoch"]
    assert len(epochs) == 3 and "train_accuracy" not in epochs[0] and "val_accuracy" not in epochs[0]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]  # MSE reconstruction learns


def test_pretraining_transfers_every_tensor_but_the_head(tiny):
    x, _ = tiny
    state = pretrain_unet(SPEC, x, epochs=1, patch=(16, 16), batch_size=4, length=8, device="cpu")
    assert state["head.weight"].shape == (1, 4, 1, 1)  # a reconstruction head: one output per channel
    seg = models.build({**SPEC, "arch": "unet"}, input_shape=(1, 16, 16), num_outputs=2)
    report = transfer_pretrained(seg, state)
    assert sorted(report.skipped) == ["head.bias", "head.weight"]
    encoder = [k for k in seg.state_dict() if k.startswith("encoder.")]
    assert encoder and set(encoder) <= set(report.loaded)
    assert all(torch.equal(seg.state_dict()[k], state[k]) for k in report.loaded)


def test_transfer_skips_a_head_of_the_same_shape_and_refuses_a_foreign_model():
    a = models.build({**SPEC, "arch": "unet"}, input_shape=(1, 16, 16), num_outputs=2)
    b = models.build({**SPEC, "arch": "unet"}, input_shape=(1, 16, 16), num_outputs=2)
    report = transfer_pretrained(b, a.state_dict())
    assert sorted(report.skipped) == ["head.bias", "head.weight"]
    assert not torch.equal(a.head.weight, b.head.weight)
    with pytest.raises(ConfigError, match="same U-Net spec"):
        transfer_pretrained(b, torch.nn.Linear(2, 2).state_dict())


def test_pseudo_labels_keep_exactly_the_pixels_at_or_above_the_threshold():
    probs = torch.tensor([[[0.90, 0.89, 0.05, 0.40]],  # class 0
                          [[0.05, 0.01, 0.95, 0.30]],  # class 1
                          [[0.05, 0.10, 0.00, 0.30]]])[None]  # class 2; (1, 3, 1, 4)
    assert pseudo_labels(probs, 0.9).tolist() == [[[0, IGNORE_INDEX, 1, IGNORE_INDEX]]]
    assert pseudo_labels(probs, 0.4).tolist() == [[[0, 0, 1, 0]]]
    assert pseudo_labels(probs, 0.9).dtype == torch.int64
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        pseudo_labels(probs, 1.5)
    with pytest.raises(DataError, match="N, K"):
        pseudo_labels(torch.rand(2, 3), 0.9)


def test_cross_entropy_trains_on_partly_ignored_masks():
    x = torch.rand(4, 1, 16, 16)
    y = torch.full((4, 16, 16), IGNORE_INDEX)
    y[:, :4] = 1  # only these rows carry labels; the rest must not count
    model = models.build({**SPEC, "arch": "unet"}, input_shape=(1, 16, 16), num_outputs=2)
    fit_segmenter(model, x, y, SegSchedule((16, 16), n_patches=4, epochs=3, batch_size=2, device="cpu"), seed=0)
    with torch.no_grad():
        pred = model(x).argmax(1)  # (4, 16, 16)
    assert bool((pred[:, :4] == 1).float().mean() > 0.5)  # learns from the labelled rows, no NaN


def test_train_segmenter_with_init_starts_from_the_pretrained_body(tiny):
    x, y = tiny
    state = pretrain_unet(SPEC, x[1:], epochs=1, patch=(16, 16), batch_size=4, length=4, device="cpu")
    schedule = SegSchedule((16, 16), n_patches=4, epochs=1, batch_size=4, lr=1e-12, augment=False, device="cpu")
    model = train_segmenter(SPEC, x[:1], y[:1], schedule, init=state)
    # lr ~ 0 keeps the weights where transfer put them
    assert torch.allclose(model.encoder[0][0][0].weight, state["encoder.0.0.0.weight"], atol=1e-6)


def test_self_train_runs_end_to_end(tiny):
    x, y = tiny
    schedule = SegSchedule((16, 16), n_patches=8, epochs=2, batch_size=4, device="cpu")
    result = self_train(SPEC, x[:1], y[:1], x[1:3], schedule, threshold=0.6, seed=0)
    assert result.pseudo.shape == (2, 32, 32) and result.pseudo.dtype == torch.int64
    assert set(result.pseudo.unique().tolist()) <= {IGNORE_INDEX, 0, 1}
    assert result.labelled_share == pytest.approx(float((result.pseudo != IGNORE_INDEX).float().mean()))
    assert result.student is not result.teacher and not result.student.training
    with torch.no_grad():
        assert result.student(x[3:, :, :16, :16]).shape == (1, 2, 16, 16)


def test_docstring_examples_run():
    result = doctest.testmod(dlforge.pipeline.seg_limited)
    assert result.attempted > 0 and result.failed == 0
