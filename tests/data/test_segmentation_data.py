"""Image + mask folders and synthetic nuclei (issue 14, data)."""

from __future__ import annotations

import doctest
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dlforge.data import (
    SegmentationBundle,
    load_segmentation_folder,
    segmentation,
    segmentation_synthetic,
    synthetic_nuclei,
)
from dlforge.errors import DataError


def _write(root: Path, pairs: dict[str, tuple[np.ndarray, np.ndarray]], suffix: str = ".png") -> Path:
    """pairs: stem -> (image uint8 (H, W) or (H, W, 3), mask (H, W)) written as PNGs."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for stem, (image, mask) in pairs.items():
        Image.fromarray(image).save(root / "images" / f"{stem}{suffix}")
        Image.fromarray(mask).save(root / "masks" / f"{stem}{suffix}")
    return root


def _pair(seed: int, size=(12, 10), classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, size, dtype=np.uint8),
            (np.arange(size[0] * size[1]).reshape(size) % classes).astype(np.uint8))


def _write_stack(path: Path, pages: np.ndarray) -> None:
    frames = [Image.fromarray(p) for p in pages]
    frames[0].save(path, save_all=True, append_images=frames[1:])


def test_png_round_trip(tmp_path):
    pairs = {"a": _pair(0), "b": _pair(1)}
    bundle = load_segmentation_folder(_write(tmp_path / "cells", pairs))
    assert isinstance(bundle, SegmentationBundle) and bundle.task == "segmentation"
    assert bundle.x.dtype == np.float32 and bundle.x.shape == (2, 1, 12, 10)
    assert bundle.y.dtype == np.int64 and bundle.y.shape == (2, 12, 10)
    assert bundle.ids == ["a", "b"] and bundle.class_names == ["class_0", "class_1", "class_2"]
    np.testing.assert_array_equal(bundle.x[1, 0], pairs["b"][0] / np.float32(255))
    np.testing.assert_array_equal(bundle.y[0], pairs["a"][1])
    x, y = bundle.to_tensor_dataset()[1]
    assert tuple(x.shape) == (1, 12, 10) and tuple(y.shape) == (12, 10)


def test_binary_255_masks_become_0_1_and_rgb_images_keep_3_channels(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    mask = np.where(np.eye(8, dtype=bool), 255, 0).astype(np.uint8)
    bundle = load_segmentation_folder(_write(tmp_path / "c", {"a": (image, mask)}))
    assert bundle.input_shape == (3, 8, 8) and bundle.class_names == ["background", "foreground"]
    np.testing.assert_array_equal(bundle.y[0], np.eye(8, dtype=np.int64))


def test_multipage_tiff_reads_as_a_3d_stack(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (5, 6, 7), dtype=np.uint8)  # (D, H, W)
    mask = (rng.random((5, 6, 7)) > 0.5).astype(np.uint8)
    for sub in ("images", "masks"):
        (tmp_path / "vol" / sub).mkdir(parents=True)
    _write_stack(tmp_path / "vol" / "images" / "s1.tif", image)
    _write_stack(tmp_path / "vol" / "masks" / "s1.tif", mask)
    bundle = load_segmentation_folder(tmp_path / "vol")
    assert bundle.x.shape == (1, 1, 5, 6, 7) and bundle.y.shape == (1, 5, 6, 7) and bundle.spatial_dims == 3
    np.testing.assert_array_equal(bundle.y[0], mask)
    np.testing.assert_array_equal(bundle.x[0, 0], image / np.float32(255))


def test_16_bit_tiff_is_scaled_by_65535(tmp_path):
    image = np.array([[0, 65535], [1000, 30000]], dtype=np.uint16)
    root = _write(tmp_path / "c", {"a": (image, np.array([[0, 1], [1, 0]], np.uint8))}, suffix=".tif")
    bundle = load_segmentation_folder(root)
    np.testing.assert_allclose(bundle.x[0, 0], image / 65535, rtol=1e-6)


def test_instance_masks_give_foreground_and_keep_ids(tmp_path):
    ids = np.zeros((8, 8), np.uint8)
    ids[1:3, 1:3], ids[5:7, 5:7] = 1, 2
    bundle = load_segmentation_folder(_write(tmp_path / "c", {"a": (_pair(0, (8, 8))[0], ids)}), masks="instances")
    np.testing.assert_array_equal(bundle.y[0], ids > 0)
    np.testing.assert_array_equal(bundle.instances[0], ids)


def test_missing_mask_names_the_image(tmp_path):
    root = _write(tmp_path / "c", {"a": _pair(0), "b": _pair(1)})
    (root / "masks" / "b.png").unlink()
    with pytest.raises(DataError, match=r"images/b\.png has no mask"):
        load_segmentation_folder(root)


def test_extra_mask_names_the_mask(tmp_path):
    root = _write(tmp_path / "c", {"a": _pair(0)})
    Image.fromarray(_pair(1)[1]).save(root / "masks" / "z.png")
    with pytest.raises(DataError, match=r"masks/z\.png has no image"):
        load_segmentation_folder(root)


def test_mask_of_another_size_names_both_files(tmp_path):
    root = _write(tmp_path / "c", {"a": _pair(0), "b": (_pair(1)[0], _pair(1, (12, 11))[1])})
    with pytest.raises(DataError, match=r"masks/b\.png is 12x11 \(HxW\) but its image .*images/b\.png is 12x10"):
        load_segmentation_folder(root)


def test_images_of_different_sizes_name_the_file(tmp_path):
    root = _write(tmp_path / "c", {"a": _pair(0), "b": _pair(1, (9, 9))})
    with pytest.raises(DataError, match=r"images/b\.png is 9x9 \(HxW\)"):
        load_segmentation_folder(root)


def test_mask_values_that_are_not_classes_name_the_file(tmp_path):
    image = _pair(0)[0]
    mask = np.zeros((12, 10), np.uint8)
    mask[:4], mask[4:8] = 128, 255
    root = _write(tmp_path / "c", {"a": _pair(0, classes=2), "b": (image, mask)})
    with pytest.raises(DataError, match=r"masks/b\.png holds the value 128, which is not a class"):
        load_segmentation_folder(root)


def test_mask_values_beyond_class_names_name_the_file(tmp_path):
    root = _write(tmp_path / "c", {"a": _pair(0, classes=3)})
    with pytest.raises(DataError, match=r"masks/a\.png holds the value 2.*0\.\.1 for the 2 class_names"):
        load_segmentation_folder(root, class_names=["bg", "cell"])


def test_float_mask_with_fractions_names_the_file(tmp_path):
    root = _write(tmp_path / "c", {"a": _pair(0)})
    (root / "masks" / "a.png").unlink()
    Image.fromarray(np.full((12, 10), 0.5, np.float32)).save(root / "masks" / "a.tif")
    with pytest.raises(DataError, match=r"mask .*masks/a\.tif holds non-integer values \(e\.g\. 0\.5\)"):
        load_segmentation_folder(root)


def test_float_mask_of_whole_numbers_loads(tmp_path):
    root = _write(tmp_path / "c", {"a": _pair(0)})
    (root / "masks" / "a.png").unlink()
    Image.fromarray((np.arange(120).reshape(12, 10) % 2).astype(np.float32)).save(root / "masks" / "a.tif")
    assert load_segmentation_folder(root).class_names == ["background", "foreground"]


def test_unreadable_image_names_the_file(tmp_path):
    root = _write(tmp_path / "c", {"a": _pair(0)})
    (root / "images" / "a.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot read image .*images/a\.png"):
        load_segmentation_folder(root)


def test_colour_mask_names_the_file(tmp_path):
    rgb = np.zeros((12, 10, 3), np.uint8)
    rgb[:3, :, 0] = 200
    root = _write(tmp_path / "c", {"a": (_pair(0)[0], rgb)})
    with pytest.raises(DataError, match=r"mask .*masks/a\.png is a colour image"):
        load_segmentation_folder(root)


def test_missing_masks_folder_says_the_layout(tmp_path):
    (tmp_path / "c" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match=r"masks not found.*images/ and masks/"):
        load_segmentation_folder(tmp_path / "c")


def test_generator_is_deterministic_per_seed():
    a, b = synthetic_nuclei(3, size=(48, 48), seed=7), synthetic_nuclei(3, size=(48, 48), seed=7)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    np.testing.assert_array_equal(a.instances, b.instances)
    assert not np.array_equal(a.y, synthetic_nuclei(3, size=(48, 48), seed=8).y)


@pytest.mark.parametrize("fraction", [0.2, 0.05, 0.01])
def test_generator_hits_the_requested_foreground(fraction):
    bundle = synthetic_nuclei(4, size=(128, 128), foreground=fraction, seed=0)
    per_image = bundle.y.mean(axis=(1, 2))
    assert np.all(np.abs(per_image - fraction) <= max(0.002, 0.1 * fraction)), per_image


def test_generator_3d_shapes_and_labels():
    bundle = synthetic_nuclei(2, size=(16, 32, 32), radius=(3, 6), blobs=5, seed=0)
    assert bundle.x.shape == (2, 1, 16, 32, 32) and bundle.y.shape == (2, 16, 32, 32)
    assert bundle.x.dtype == np.float32 and bundle.y.dtype == np.int64
    assert bundle.synthetic and "synthetic" in bundle.notes[0]
    assert set(np.unique(bundle.y)) == {0, 1} and np.array_equal(bundle.y, bundle.instances > 0)


def test_generator_masks_are_the_geometry_not_the_image():
    # the noiseless image is bright exactly where the mask is, before blur: inside means > outside
    bundle = synthetic_nuclei(1, size=(64, 64), blobs=6, noise=0.0, seed=3)
    image, mask = bundle.x[0, 0], bundle.y[0].astype(bool)
    assert image[mask].mean() > 3 * image[~mask].mean()
    assert bundle.instances[0].max() <= 6


def test_generator_refuses_blobs_and_foreground_together():
    with pytest.raises(DataError, match="blobs or foreground"):
        synthetic_nuclei(1, blobs=3, foreground=0.1)


@pytest.mark.parametrize("module", [segmentation, segmentation_synthetic])
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
