"""Otsu's threshold against an exhaustive search, hand examples, and the nuclei image."""

import numpy as np
import pytest
import torch

from dlforge.errors import DataError
from dlforge.evaluate.seg_baselines import otsu_segment, otsu_threshold
from dlforge.evaluate.segmentation import segmentation_scores


def _exhaustive(image: np.ndarray) -> float:
    """Try every cut between histogram bins; the first with the largest between-class variance."""
    if np.issubdtype(image.dtype, np.integer):
        centers = np.arange(image.min(), image.max() + 1)
        counts = np.array([(image == v).sum() for v in centers])
    else:
        counts, edges = np.histogram(image, bins=256)
        centers = (edges[:-1] + edges[1:]) / 2
    best, best_var = None, -1.0
    for k in range(len(centers) - 1):
        w0, w1 = counts[: k + 1].sum(), counts[k + 1:].sum()
        mu0 = (counts[: k + 1] * centers[: k + 1]).sum() / w0
        mu1 = (counts[k + 1:] * centers[k + 1:]).sum() / w1
        var = w0 * w1 * (mu0 - mu1) ** 2 / counts.sum() ** 2  # sigma_B^2
        if var > best_var * (1 + 1e-12):
            best, best_var = centers[k], var
    return float(best)


@pytest.mark.parametrize("seed", range(4))
def test_otsu_matches_exhaustive_search(seed):
    rng = np.random.default_rng(seed)
    n = rng.integers(50, 400)
    floats = np.concatenate([rng.normal(0.2, 0.05, n), rng.normal(0.7, 0.1, 500 - n)])
    for image in (floats, floats.astype(np.float32), (floats * 300).clip(0).astype(np.uint16),
                  rng.gamma(2.0, 1.0, (20, 25))):
        assert otsu_threshold(image) == _exhaustive(image)


def test_otsu_hand_examples():
    assert otsu_threshold(np.array([0, 1, 8, 9], np.uint8)) == 1.0
    # Two spikes at 0 and 1: the cut lies right after the first bin, centre 1/512.
    assert otsu_threshold(np.array([0.0, 0.0, 1.0, 1.0])) == 1 / 512
    assert otsu_threshold(np.full((3, 3), 5.0)) == 5.0
    with pytest.raises(DataError, match="finite"):
        otsu_threshold(np.array([0.0, np.nan]))


def test_otsu_segment_shapes_and_channel_mean():
    img = np.zeros((2, 4, 4))
    img[0, :, 2:] = 1.0  # bright in channel 0 only: the mean is still bimodal
    np.testing.assert_array_equal(otsu_segment(img), np.tile([0, 0, 1, 1], (4, 1)))
    vol = np.zeros((3, 4, 4), np.float32)
    vol[1] = 1.0
    out = otsu_segment(vol, spatial_dims=3)
    assert out.dtype == np.int64 and out.shape == (3, 4, 4) and out.sum() == 16
    assert otsu_segment(vol[None]).shape == (3, 4, 4)      # (C, D, H, W) by default
    assert otsu_segment(vol[None]).sum() == 16
    assert otsu_segment(vol[1:2]).shape == (4, 4)          # (C, H, W) by default
    with pytest.raises(DataError, match="spatial dims"):
        otsu_segment(np.zeros((1, 1, 1, 4, 4)))
    with pytest.raises(DataError, match="spatial dims"):
        otsu_segment(np.zeros((4, 4)), spatial_dims=3)


def test_otsu_dice_on_the_real_nuclei_image():
    assets = pytest.importorskip("dlforge.data.assets", reason="dlforge.data.assets is not written yet")
    folder = assets.asset_dir() / "nuclei"
    if not (folder / "img2d.tif").is_file():
        pytest.skip(f"the nuclei set is not installed in {folder} ({assets.INSTALL_HINT})")
    from PIL import Image

    image = np.array(Image.open(folder / "img2d.tif"))
    truth = (np.array(Image.open(folder / "mask2d.tif")) > 0).astype(np.int64)
    pred = otsu_segment(image)
    scores = segmentation_scores(torch.from_numpy(pred[None]), torch.from_numpy(truth[None]), num_classes=2)
    assert otsu_threshold(image) == 47.0
    assert scores["dice"] == pytest.approx(0.835, abs=5e-4)  # the figure
