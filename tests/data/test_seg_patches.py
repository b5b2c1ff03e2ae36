"""Segmentation patches and joint augmentation: oversampling hits its share; the mask follows the image exactly."""

from __future__ import annotations

import doctest

import pytest
import torch

import dlforge.data.seg_patches
from dlforge.data import SegAugmentConfig, augment_pair, sample_patches
from dlforge.errors import ConfigError, DataError

GEOMETRIC = {"hflip": 0.5, "vflip": 0.5, "rot90": 0.5, "rotation": 30, "translate": 0.1, "scale": (0.8, 1.2),
             "shear": 10, "elastic": 1.0, "elastic_sigma": 8.0}


def _sparse(n: int = 3, size: int = 128) -> torch.Tensor:
    """Masks (n, size, size) with one 4x4 object each: about 0.1% foreground."""
    masks = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        masks[i, 20 + 30 * i:24 + 30 * i, 90 - 20 * i:94 - 20 * i] = 1
    return masks


def _fg_share(y: torch.Tensor) -> float:
    return float((y.flatten(1).amax(1) > 0).float().mean())


@pytest.mark.parametrize("share", [0.0, 0.33, 0.5, 1.0])
def test_oversampling_hits_the_requested_share_of_foreground_patches(share):
    masks = _sparse()
    x, y = sample_patches(masks[:, None].float(), masks, (16, 16), 300, foreground=share, seed=0)
    assert x.shape == (300, 1, 16, 16) and y.shape == (300, 16, 16) and y.dtype == torch.int64
    # Random 16x16 patches touch a 4x4 object in about (19/113)^2 = 3% of draws.
    assert share <= _fg_share(y) <= share + 0.08
    assert torch.equal(x[:, 0].long(), y)  # the patch of the image is the patch of the mask


def test_patches_are_deterministic_per_seed():
    masks = _sparse()
    images = torch.rand(3, 2, 128, 128)
    a = sample_patches(images, masks, (32, 24), 20, seed=7)
    b = sample_patches(images, masks, (32, 24), 20, seed=7)
    c = sample_patches(images, masks, (32, 24), 20, seed=8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_small_images_are_padded_with_zeros():
    images = torch.ones(1, 1, 10, 6)
    masks = torch.full((1, 10, 6), 2, dtype=torch.long)
    x, y = sample_patches(images, masks, (16, 16), 4, seed=0)
    assert x.shape == (4, 1, 16, 16)
    # The only 16x16 window of the padded 16x16 image: centred, 3 rows and 5 columns of padding each side.
    assert torch.equal(x[0, 0, 3:13, 5:11], torch.ones(10, 6)) and float(x.sum()) == 4 * 60
    assert torch.equal(y[0].unique(), torch.tensor([0, 2])) and int((y[0] == 2).sum()) == 60


def test_3d_patches():
    masks = torch.zeros(2, 20, 40, 40, dtype=torch.long)
    masks[1, 5:8, 30:33, 2:5] = 3
    images = torch.rand(2, 2, 20, 40, 40)
    x, y = sample_patches(images, masks, (8, 16, 16), 12, foreground=0.5, seed=1)
    assert x.shape == (12, 2, 8, 16, 16) and y.shape == (12, 8, 16, 16)
    assert _fg_share(y) >= 0.5


def test_bad_inputs_are_clear_errors():
    masks = _sparse(1, 32)
    with pytest.raises(DataError, match="spatial dims"):
        sample_patches(torch.rand(1, 32, 32), masks, (8, 8), 2)
    with pytest.raises(DataError, match="integer class"):
        sample_patches(torch.rand(1, 1, 32, 32), masks.float(), (8, 8), 2)
    with pytest.raises(ConfigError, match="share"):
        sample_patches(torch.rand(1, 1, 32, 32), masks, (8, 8), 2, foreground=1.5)
    with pytest.raises(ConfigError, match="elastic"):
        augment_pair(torch.rand(1, 1, 8, 8), masks[:, :8, :8], {"elastic": 2})
    with pytest.raises(DataError, match="integer masks"):
        augment_pair(torch.rand(1, 1, 8, 8), masks[:, :8, :8].float(), {"hflip": 1.0})


def _encoded(n: int = 6, height: int = 48, width: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks with 4 classes, and images whose channel 0 is the mask and channel 1 the pixel's index + 1."""
    g = torch.Generator().manual_seed(0)
    y = torch.zeros(n, height, width, dtype=torch.long)
    for cls in (1, 2, 3):
        for i in range(n):
            top, left = torch.randint(0, height - 12, (2,), generator=g).tolist()
            y[i, top:top + 12, left:left + 10] = cls
    index = torch.arange(1, height * width + 1, dtype=torch.float32).view(1, height, width).expand(n, -1, -1)
    return torch.stack([y.float(), index], 1), y  # (n, 2, H, W), (n, H, W)


@pytest.mark.parametrize("height,width", [(48, 48), (40, 56)])
def test_the_mask_follows_the_image_exactly(height, width):
    x, y = _encoded(height=height, width=width)
    xa, ya = augment_pair(x, y, {**GEOMETRIC, "image_resample": "nearest"}, seed=3)
    assert ya.dtype == torch.int64 and ya.shape == y.shape
    assert not torch.equal(ya, y)  # something moved
    assert torch.equal(xa[:, 0].round().long(), ya)  # the image's copy of the mask is the mask
    # Each output pixel came from the source pixel the coordinate channel names (0: outside the image).
    source = xa[:, 1].round().long()  # (n, H, W)
    from_source = y.flatten(1).gather(1, (source - 1).clamp(min=0).flatten(1)).view_as(ya)
    assert torch.equal(torch.where(source > 0, from_source, 0), ya)
    assert set(ya.unique().tolist()) <= set(y.unique().tolist())


def test_bilinear_image_agrees_with_the_nearest_mask_away_from_edges():
    x, y = _encoded()
    ones = torch.ones_like(x[:, :1])  # after the warp: < 1 where bilinear sampling reached outside the image
    xa, ya = augment_pair(torch.cat([x[:, :1], ones], 1), y, GEOMETRIC, seed=4)
    assert set(ya.unique().tolist()) <= {0, 1, 2, 3}
    # Inside regions (5x5 neighbourhood of one class) bilinear sampling only mixes equal values.
    pool = torch.nn.functional.max_pool2d
    m = ya[:, None].float()
    inside = (pool(m, 5, 1, 2) == -pool(-m, 5, 1, 2))[:, 0] & (xa[:, 1] > 1 - 1e-4)
    inside[:, :2] = inside[:, -2:] = inside[:, :, :2] = inside[:, :, -2:] = False  # the window is cut at the border
    assert inside.float().mean() > 0.5
    assert torch.equal(xa[:, 0].round().long()[inside], ya[inside])


def test_intensity_changes_the_image_only():
    x, y = _encoded()
    xa, ya = augment_pair(x, y, {"brightness": 0.3, "contrast": 0.3, "noise": 0.1}, seed=0)
    assert torch.equal(ya, y) and not torch.allclose(xa, x)
    # Brightness and contrast are per-image factors, not clipping: values keep their range.
    assert float(xa[:, 1].max()) > 1000


def test_augmentation_is_deterministic_per_seed_and_leaves_the_global_generator_alone():
    x, y = _encoded()
    torch.manual_seed(0)
    expected = torch.rand(())
    torch.manual_seed(0)
    a = augment_pair(x, y, {**GEOMETRIC, "noise": 0.1}, seed=5)
    assert torch.equal(torch.rand(()), expected)
    b = augment_pair(x, y, {**GEOMETRIC, "noise": 0.1}, seed=5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert SegAugmentConfig().rot90 == 0.0 and torch.equal(augment_pair(x, y, None)[1], y)


def test_docstring_examples_run():
    result = doctest.testmod(dlforge.data.seg_patches)
    assert result.attempted >= 6 and result.failed == 0


def _encoded_3d(n: int = 8, depth: int = 6, height: int = 12, width: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """3D masks with 4 classes, and volumes whose channel 0 is the mask and channel 1 the voxel's index + 1."""
    y = torch.randint(0, 4, (n, depth, height, width), generator=torch.Generator().manual_seed(0))
    index = torch.arange(1, depth * height * width + 1, dtype=torch.float32).view(1, depth, height, width)
    return torch.stack([y.float(), index.expand(n, -1, -1, -1)], 1), y  # (n, 2, D, H, W), (n, D, H, W)


@pytest.mark.parametrize("depth,height,width", [(6, 12, 12), (5, 10, 14)])
def test_the_mask_follows_the_volume_exactly_in_3d(depth, height, width):
    x, y = _encoded_3d(depth=depth, height=height, width=width)
    config = {"hflip": 0.5, "vflip": 0.5, "dflip": 0.5, "rot90": 0.5}
    xa, ya = augment_pair(x, y, config, seed=1)
    assert ya.dtype == torch.int64 and ya.shape == y.shape and xa.shape == x.shape
    assert torch.equal(xa[:, 0].round().long(), ya)  # the volume's copy of the mask is the mask
    source = xa[:, 1].round().long()  # (n, D, H, W): where each voxel came from
    assert torch.equal(source.flatten(1).sort(1).values, x[:, 1].long().flatten(1))  # a permutation: nothing invented
    assert torch.equal(y.flatten(1).gather(1, source.flatten(1) - 1).view_as(ya), ya)
    moved = (source != x[:, 1].long()).flatten(1).any(1)  # (n,)
    assert 0 < int(moved.sum()) < len(x)  # p=0.5: some samples moved, some did not


def test_3d_flips_and_turns_are_the_exact_array_operations():
    x, y = _encoded_3d(n=2, depth=4, height=6, width=8)
    for key, dims in (("dflip", (1,)), ("vflip", (2,)), ("hflip", (3,))):
        xa, ya = augment_pair(x, y, {key: 1.0}, seed=0)
        assert torch.equal(ya, y.flip(dims)) and torch.equal(xa, x.flip(tuple(d + 1 for d in dims)))
    xa, ya = augment_pair(x, y, {"rot90": 1.0}, seed=0)  # H != W: only half turns in the H-W plane
    assert torch.equal(ya, y.rot90(2, (2, 3))) and torch.equal(xa, x.rot90(2, (3, 4)))
    xa, ya = augment_pair(x, y, {"brightness": 0.3, "noise": 0.1}, seed=0)
    assert torch.equal(ya, y) and not torch.allclose(xa, x)


def test_3d_warps_and_2d_depth_flips_are_refused():
    x, y = _encoded_3d(n=1)
    for warp in ({"rotation": 10}, {"elastic": 0.5}, {"scale": (0.9, 1.1)}, {"translate": 0.1}, {"shear": 5}):
        with pytest.raises(ConfigError, match="2D only"):
            augment_pair(x, y, warp)
    with pytest.raises(ConfigError, match="dflip"):
        augment_pair(x[:, :, 0], y[:, 0], {"dflip": 0.5})
    with pytest.raises(DataError, match=r"\(B, D, H, W\)"):
        augment_pair(x, y[:, 0], {"hflip": 0.5})
