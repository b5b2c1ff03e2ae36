"""Overlay PNGs (size, colours at known pixels, the 3D slice) and the report's HTML section."""

import base64
import io

import numpy as np
from PIL import Image

from dlforge.evaluate.seg_report import (
    BOTH,
    FALSE_NEG,
    FALSE_POS,
    PRED,
    TRUTH,
    overlay_png,
    overlay_slice,
    segmentation_section,
)


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def test_overlay_colours_at_known_pixels():
    truth = np.zeros((20, 30), np.int64)
    truth[4:12, 4:12] = 1
    pred = np.zeros_like(truth)
    pred[4:12, 8:16] = 1                    # shifted right by 4
    image = np.zeros((1, 20, 30))           # black: tints show as pure blends of their colour
    rgb = _decode(overlay_png(image, truth, pred))
    assert rgb.shape == (20, 30, 3)
    assert tuple(rgb[8, 4]) == TRUTH        # truth's left edge only
    assert tuple(rgb[8, 15]) == PRED        # prediction's right edge only
    assert tuple(rgb[4, 9]) == BOTH         # top edges coincide
    fp, fn = rgb[8, 13], rgb[8, 6]          # inside the prediction only / the truth only
    assert fp.argmax() == 0 and fp[0] == round(0.45 * FALSE_POS[0]) and fp[1] == 0
    assert fn.argmax() == 2 and fn[2] == round(0.45 * FALSE_NEG[2])
    assert tuple(rgb[0, 0]) == (0, 0, 0) and tuple(rgb[8, 10]) == (0, 0, 0)  # background; true positive


def test_overlay_normalises_by_percentiles_and_shrinks_to_max_side():
    rng = np.random.default_rng(0)
    image = rng.normal(1000, 50, (3, 300, 600))          # RGB in an arbitrary range
    mask = np.zeros((300, 600), np.int64)
    rgb = _decode(overlay_png(image, mask, mask, max_side=200))
    assert rgb.shape == (100, 200, 3)
    assert rgb.min() == 0 and rgb.max() == 255 and 100 < rgb.mean() < 155


def test_overlay_3d_shows_the_slice_with_most_foreground():
    truth = np.zeros((5, 8, 8), np.int64)
    truth[1, 2:4, 2:4] = 1
    truth[3, 1:7, 1:7] = 1                   # the most foreground: slice 3
    pred = np.zeros_like(truth)
    assert overlay_slice(truth, pred) == 3
    image = np.zeros((1, 5, 8, 8))
    rgb = _decode(overlay_png(image, truth, pred))
    assert rgb.shape == (8, 8, 3) and tuple(rgb[1, 3]) == TRUTH and tuple(rgb[2, 2]) != TRUTH
    assert overlay_slice(np.zeros_like(truth), pred) == 2   # nothing anywhere: the middle


EVALUATION = {
    "metrics": {"dice": 0.9123, "iou": 0.8, "hd95": float("inf"), "ap50": 0.7, "dsb": 0.5,
                "dice_per_class": [0.99, 0.9123], "iou_per_class": [0.98, 0.8],
                "hd95_per_class": [float("nan"), 3.5]},
    "class_names": ["background", "<nucleus>"],
    "baselines": {"otsu": {"dice": 0.8349, "iou": 0.7166, "hd95": 6.708, "ap50": 0.0519, "dsb": 0.0269}},
    "postprocessing": {"chosen": "fill_holes", "candidates": [
        {"name": "none", "dice": 0.8349, "ap50": 0.05, "kept": True, "chosen": False},
        {"name": "fill_holes", "dice": 0.8467, "ap50": 0.07, "kept": True, "chosen": True}]},
    "folds": [{"fold": 1, "dice": 0.9, "hd95": 4.0}, {"fold": 2, "dice": 0.8, "hd95": 6.0}],
    "overlays": [{"name": "img <1> & co", "png_base64": base64.b64encode(b"png").decode()}],
}


def test_section_holds_every_table_and_escapes_names():
    html = segmentation_section(EVALUATION)
    for text in ("0.9123", "0.8349", "Otsu threshold", "inf", "n/a", "3.5", "0.8467", "fill_holes (chosen)",
                 "0.85 ± 0.05", "5 ± 1", 'src="data:image/png;base64,cG5n"', "&lt;nucleus&gt;",
                 "img &lt;1&gt; &amp; co"):
        assert text in html, text
    assert "<nucleus>" not in html and "<1>" not in html
    assert html.count("<table") == 4 and html.count("<figure>") == 1


def test_section_without_optional_parts():
    html = segmentation_section({"metrics": {"dice": 0.5}})
    assert "Otsu" not in html and "Post-processing" not in html and "Per fold" not in html
    assert "Overlays" not in html and "0.5" in html and html.count("<table") == 1
