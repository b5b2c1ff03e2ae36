"""Segmentation artifacts: raw images of any size in, label maps and areas out."""

from __future__ import annotations

import doctest
import io

import numpy as np
import pytest
import torch
from PIL import Image

from dlforge.errors import DataError
from dlforge.models.sliding_window import sliding_window_predict
from dlforge.models.unet import build_unet
from dlforge.registry import load_artifact, save_artifact, segment
from dlforge.registry.segment import class_areas, encode_seg_images, mask_bytes
from dlforge.registry.validate import check_artifact

PREP = {"encoding": {"kind": "segmentation", "mode": "L", "scale": 1 / 255, "size": [32, 32], "spatial_dims": 2,
                     "window": [16, 16], "normalize": {"method": "percentile", "low": 1.0, "high": 99.8}},
        "standardize": None, "postprocess": {"remove_small": 4, "fill_holes": False, "keep_largest": False}}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    torch.manual_seed(0)
    model = build_unet((1, 16, 16), 2, widths=(4, 8))
    folder = save_artifact(model, tmp_path_factory.mktemp("seg") / "model", task="segmentation",
                           class_names=["background", "cell"], preprocessing=PREP)
    return load_artifact(folder)


def test_doctests():
    assert doctest.testmod(segment).failed == 0


def test_files_bytes_and_arrays_encode_the_same(tmp_path):
    pixels = (np.random.default_rng(0).random((20, 30)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    png = (tmp_path / "a.png").read_bytes()
    a, b, c = encode_seg_images([tmp_path / "a.png", png, pixels], PREP)
    assert a.shape == (1, 20, 30)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
    lo, hi = np.percentile(pixels / 255, [1, 99.8])
    torch.testing.assert_close(a[0], torch.from_numpy(((pixels / 255 - lo) / (hi - lo)).astype(np.float32)))


@pytest.mark.parametrize("value, message", [
    (np.zeros((2, 8, 8)), "does not fit this model, which reads 1-channel 2D"),
    (np.full((8, 8), np.nan), "NaN"),
    ("missing.png", "not found"),
    (b"not an image", "cannot read image"),
    ([["a"]], "array of numbers"),
])
def test_bad_images_are_data_errors(value, message):
    with pytest.raises(DataError, match=message):
        encode_seg_images([value], PREP)


def test_too_many_pixels_are_refused(monkeypatch):
    monkeypatch.setattr(segment, "MAX_PIXELS", 100)
    with pytest.raises(DataError, match="larger than 100 pixels"):
        encode_seg_images([np.zeros((11, 10))], PREP)


def test_segment_is_sliding_windows_then_post_processing(artifact):
    image = (np.random.default_rng(1).random((40, 27)) * 255).astype(np.uint8)
    (mask,) = artifact.segment([image])
    x = encode_seg_images([image], PREP)[0]
    logits = sliding_window_predict(artifact.model.eval(), x, (16, 16))
    want = segment.PostProcess(remove_small=4).apply(logits.argmax(0).numpy())
    assert mask.shape == (40, 27) and np.array_equal(mask, want)
    out = artifact.predict(x[None])
    assert np.array_equal(out["masks"][0].numpy(), mask)
    assert sum(out["areas"][0].values()) == 40 * 27


def test_a_segmentation_artifact_passes_registry_validation(artifact):
    check_artifact(artifact.path)


def test_masks_round_trip_as_png_and_tiff():
    mask = np.zeros((5, 7), np.int64)
    mask[1:3, 2:6] = 1
    data, media = mask_bytes(mask)
    assert media == "image/png" and np.array_equal(np.array(Image.open(io.BytesIO(data))), mask * 255)
    three = np.arange(3 * 4 * 4).reshape(3, 4, 4) % 3
    data, media = mask_bytes(three)
    with Image.open(io.BytesIO(data)) as tif:
        pages = []
        for i in range(tif.n_frames):
            tif.seek(i)
            pages.append(np.array(tif))
    assert media == "image/tiff" and np.array_equal(np.stack(pages), three)
    assert class_areas(three, ["a", "b", "c"]) == {"a": 16, "b": 16, "c": 16}
