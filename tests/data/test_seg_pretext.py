"""Pretext patches for self-supervised U-Net pretraining: shapes, corruption confined to the blocks, fresh draws."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import dlforge.data.seg_pretext
from dlforge.data.seg_pretext import inpaint_mask, pretext_dataset
from dlforge.errors import ConfigError, DataError


def _images(n: int = 3, size: tuple[int, ...] = (64, 64), channels: int = 2) -> torch.Tensor:
    return torch.rand(n, channels, *size, generator=torch.Generator().manual_seed(0)) + 1.0  # never 0


@pytest.mark.parametrize("method", ["inpaint", "denoise"])
@pytest.mark.parametrize("size,patch", [((64, 64), (32, 32)), ((16, 32, 32), (8, 16, 16))])
def test_items_are_corrupted_and_clean_patches_of_the_patch_shape(method, size, patch):
    ds = pretext_dataset(_images(size=size), patch, method=method, length=5, seed=0)
    corrupted, clean = ds[0]
    assert len(ds) == 5
    assert corrupted.shape == clean.shape == (2, *patch)
    assert corrupted.dtype == clean.dtype == torch.float32
    assert not torch.equal(corrupted, clean)


def test_inpainting_changes_exactly_the_chosen_blocks_and_nothing_else():
    ds = pretext_dataset(_images(), (64, 64), method="inpaint", length=1, mask_ratio=0.25, noise=0.5, seed=3)
    corrupted, clean = ds[0]  # (2, 64, 64)
    changed = (corrupted != clean).any(dim=0)  # (64, 64)
    per_block = changed.view(8, 8, 8, 8).permute(0, 2, 1, 3).reshape(64, 64).float().mean(dim=1)  # (blocks,)
    assert set(per_block.unique().tolist()) <= {0.0, 1.0}  # a block is wholly corrupted or untouched
    assert int(per_block.sum()) == 16  # 25% of the 8x8 grid of 8x8 blocks
    unchanged = ~changed
    assert torch.equal(corrupted[:, unchanged], clean[:, unchanged])


def test_inpainting_without_noise_blanks_blocks_to_zero():
    corrupted, clean = pretext_dataset(_images(), (32, 32), length=1, mask_ratio=0.5, noise=0.0)[0]
    blank = corrupted == 0
    assert blank.float().mean().item() == pytest.approx(0.5)
    assert torch.equal(corrupted[~blank], clean[~blank])


def test_inpaint_mask_handles_sides_not_divisible_by_the_block():
    m = inpaint_mask((20, 12), 1.0, torch.Generator().manual_seed(0))  # blocks of 2x1
    assert m.shape == (20, 12) and bool(m.all())


def test_every_access_draws_afresh_and_the_seed_repeats_the_sequence():
    a = pretext_dataset(_images(), (32, 32), length=4, seed=7)
    b = pretext_dataset(_images(), (32, 32), length=4, seed=7)
    first, again = a[0], a[0]
    assert not torch.equal(first[1], again[1]) or not torch.equal(first[0], again[0])
    assert all(torch.equal(x, y) for x, y in zip(b[0], first)) and all(torch.equal(x, y) for x, y in zip(b[0], again))


def test_dataloader_workers_do_not_repeat_each_other():
    torch.manual_seed(0)
    ds = pretext_dataset(_images(), (32, 32), method="denoise", length=2, noise=0.3, seed=0)
    batches = list(DataLoader(ds, batch_size=1, num_workers=2))
    assert not torch.equal(batches[0][0], batches[1][0])


def test_bad_arguments_say_what_to_do():
    with pytest.raises(ConfigError, match="inpaint, denoise"):
        pretext_dataset(_images(), (32, 32), method="jigsaw")
    with pytest.raises(ConfigError, match="no larger than the images"):
        pretext_dataset(_images(), (128, 32))
    with pytest.raises(DataError, match="must be float"):
        pretext_dataset(torch.zeros(2, 1, 32, 32, dtype=torch.long), (16, 16))
    with pytest.raises(DataError, match="inside the images' training regions"):
        pretext_dataset(_images(), (16, 16), train=[np.zeros((64, 64), bool)] * len(_images()))
    with pytest.raises(ConfigError, match="noise > 0"):
        pretext_dataset(_images(), (16, 16), method="denoise", noise=0.0)


def test_windows_stay_inside_the_training_region_of_images_of_any_size():
    left = torch.arange(40 * 40, dtype=torch.float32).reshape(1, 40, 40)
    other = torch.full((1, 20, 30), -1.0)
    train = np.zeros((40, 40), bool)
    train[:, :20] = True  # columns 0..19 only
    ds = pretext_dataset([left, other], (8, 8), method="denoise", noise=0.1, length=200, seed=1,
                         train=[train, np.ones((20, 30), bool)])
    for i in range(200):
        _, clean = ds[i]
        if clean.min() >= 0:  # from the first image: every column inside 0..19
            assert int(clean[0, 0, -1]) % 40 <= 19


def test_docstring_examples_run():
    result = doctest.testmod(dlforge.data.seg_pretext)
    assert result.attempted > 0 and result.failed == 0
