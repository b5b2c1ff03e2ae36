"""Random training patches inside the training region, normalisation and augmentation keys."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

from dlforge.data import seg_dataset
from dlforge.data.augment import AugmentConfig
from dlforge.data.seg_dataset import PatchDataset, normalize_images, seg_augment
from dlforge.errors import ConfigError, DataError


def test_doctests():
    assert doctest.testmod(seg_dataset).failed == 0


def test_patches_stay_inside_the_training_region():
    x = np.arange(64 * 64, dtype=np.float32).reshape(1, 1, 64, 64)
    y = np.zeros((1, 64, 64), np.int64)
    y[0, 50:60, 50:60] = 1
    train = np.zeros((1, 64, 64), bool)
    train[0, :40] = True  # rows 0..39 only
    ds = PatchDataset(x, y, train, (16, 16), length=50, foreground=0.5)
    torch.manual_seed(0)
    for i in range(50):
        xb, yb = ds[i]
        top = int(xb[0, 0, 0]) // 64
        assert 0 <= top <= 40 - 16  # the whole window lies in rows 0..39
        assert not yb.any()  # the foreground lies outside the region: never seen


def test_foreground_share_is_oversampled():
    rng = np.random.default_rng(0)
    x = rng.random((1, 1, 128, 128)).astype(np.float32)
    y = np.zeros((1, 128, 128), np.int64)
    y[0, 100:104, 10:14] = 1  # 16 foreground pixels of 16384
    ds = PatchDataset(x, y, np.ones((1, 128, 128), bool), (16, 16), length=400, foreground=0.5)
    torch.manual_seed(1)
    hits = sum(bool(ds[i][1].any()) for i in range(400))
    assert 150 <= hits <= 260  # about half, against ~2% for uniform windows


def test_small_images_are_padded_and_impossible_regions_refused():
    x, y = np.ones((1, 1, 10, 12), np.float32), np.ones((1, 10, 12), np.int64)
    ds = PatchDataset(x, y, np.ones((1, 10, 12), bool), (16, 16), length=2)
    xb, yb = ds[0]
    assert xb.shape == (1, 16, 16) and int(yb.sum()) == 120
    with pytest.raises(DataError, match="no 8x8 patch fits"):
        PatchDataset(x, y, np.zeros((1, 10, 12), bool), (8, 8), length=2)


def test_normalisation_is_per_image_and_per_channel():
    x = np.stack([np.linspace(0, 1, 100), np.linspace(0, 200, 100)]).reshape(1, 2, 10, 10).astype(np.float32)
    out = normalize_images(np.concatenate([x, 3 * x]), {"method": "percentile", "low": 0, "high": 100})
    assert np.allclose(out.min(axis=(2, 3)), 0) and np.allclose(out.max(axis=(2, 3)), 1)
    assert np.allclose(out[0], out[1])  # a brighter copy normalises to the same image


def test_augment_keys_for_masks():
    assert seg_augment(AugmentConfig()).rot90 == 0.5  # the segmentation default
    assert seg_augment(AugmentConfig(preset="none")).hflip == 0.0
    cfg = seg_augment(AugmentConfig(hflip=1.0, rotation=10, color_jitter={"brightness": 0.2}))
    assert (cfg.hflip, cfg.rotation, cfg.brightness, cfg.rot90) == (1.0, 10.0, 0.2, 0.0)
    with pytest.raises(ConfigError, match="mixup does not apply to segmentation"):
        seg_augment(AugmentConfig(mixup=0.2))
    with pytest.raises(ConfigError, match="for classification images"):
        seg_augment(AugmentConfig(preset="digits"))
