"""Artifact.encode takes RAW inputs: pixels in the source's own units, image bytes, rows, windows.

``dlforge.data.encode_array`` keeps taking already-encoded arrays (a bundle's ``x`` in [0, 1]).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dlforge.data import encode_array, load_builtin, load_image_folder, prepare
from dlforge.data.image_folder import ImageTooLargeError, decode_image
from dlforge.data.preprocess import encode_pixels
from dlforge.errors import DataError
from dlforge.models import build
from dlforge.registry import load_artifact, save_artifact


def _artifact(folder: Path, prepared) -> object:
    torch.manual_seed(0)
    model = build({"arch": "mlp", "hidden": [8]}, input_shape=prepared.input_shape, num_outputs=prepared.num_outputs)
    return load_artifact(save_artifact(model, folder, task="classification", class_names=prepared.class_names,
                                       preprocessing=prepared.preprocessing))


@pytest.fixture(scope="module")
def digits():
    bundle = load_builtin("digits")
    return bundle, prepare(bundle, val=0.15, test=0.15, seed=0)


def test_digits_raw_pixels_encode_exactly_as_training(digits, tmp_path):
    bundle, prepared = digits
    art = _artifact(tmp_path / "m", prepared)
    raw = np.round(bundle.x[:20, 0] * 16)  # sklearn's own 0..16 pixels, (N, 8, 8)
    want = encode_array(bundle.x[:20], art.preprocessing)  # the [0, 1] array training standardised
    for layout in (raw, raw[:, :, :, None], raw[:, None], raw.astype(np.uint8), torch.from_numpy(raw)):
        assert torch.equal(art.encode(layout), want)
    assert torch.equal(art.encode(raw[0]), want[:1])  # one sample, no batch dimension
    assert torch.equal(art.encode(raw[:2].tolist()), want[:2])  # nested lists, as JSON gives them
    # The bug this replaces: raw 0..16 pixels read as if already in [0, 1] are 16 times too bright.
    assert not torch.allclose(encode_array(raw[:, None], art.preprocessing), want)


def test_image_folder_raw_pixels_bytes_and_files_agree(tmp_path):
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (tmp_path / "pets" / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (5, 4, 3), dtype=np.uint8)).save(tmp_path / "pets" / label / f"{i}.png")
    bundle = load_image_folder(tmp_path / "pets", color="rgb")
    prepared = prepare(bundle, val=0.0, test=0.0, stratify=False)
    art = _artifact(tmp_path / "m", prepared)
    files = sorted((tmp_path / "pets").glob("*/*.png"))
    from_files = art.encode(files)
    hwc = np.stack([np.asarray(Image.open(f)) for f in files])  # (N, 5, 4, 3) 0..255, as a user holds them
    assert torch.equal(art.encode(hwc), from_files)
    assert torch.equal(art.encode(hwc.transpose(0, 3, 1, 2)), from_files)  # (N, C, H, W)
    assert torch.equal(art.encode([f.read_bytes() for f in files]), from_files)  # PNG bytes, decoded in memory
    assert torch.equal(art.encode(files[0].read_bytes()), from_files[:1])
    assert torch.equal(encode_array(bundle.x, art.preprocessing), from_files)  # bundle.x keeps its meaning


def test_bytes_are_converted_and_resized_like_files(digits, tmp_path):
    _, prepared = digits
    art = _artifact(tmp_path / "m", prepared)
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 16, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    from_bytes = art.encode((tmp_path / "big.png").read_bytes())
    assert from_bytes.shape == (1, 1, 8, 8)
    assert torch.equal(from_bytes, art.encode(tmp_path / "big.png"))


def test_wrong_pixel_shapes_say_what_fits(digits, tmp_path):
    art = _artifact(tmp_path / "m", digits[1])
    with pytest.raises(DataError) as err:
        art.encode(np.zeros((2, 28, 28)))
    assert "(2, 28, 28)" in err.value.message and "(N, 8, 8)" in err.value.hint and "(N, 1, 8, 8)" in err.value.hint


def test_image_bytes_errors():
    with pytest.raises(DataError, match="not a recognised image format"):
        decode_image(b"not an image", "L")
    buf = io.BytesIO()
    Image.new("L", (3000, 3000)).save(buf, "PNG")  # 27 KB on the wire, 9 M pixels decoded
    with pytest.raises(ImageTooLargeError, match="3000x3000"):
        decode_image(buf.getvalue(), "L", max_pixels=1_000_000)


def test_encode_pixels_scale_without_whole_levels():
    preprocessing = {"encoding": {"kind": "image", "size": [1, 2], "mode": "L", "scale": 0.4}}
    torch.testing.assert_close(encode_pixels([[1.0, 2.0]], preprocessing), torch.tensor([[[[0.4, 0.8]]]]))


def test_tabular_arrays_and_series_lists_keep_their_meaning(tmp_path):
    tab = {"encoding": {"kind": "tabular", "columns": ["a", "b"], "categories": {}},
           "standardize": {"mean": [1.0, 2.0], "std": [2.0, 4.0], "axis": "feature"}}
    art = load_artifact(save_artifact(build({"arch": "mlp", "hidden": [2]}, input_shape=(2,), num_outputs=1),
                                      tmp_path / "t", task="regression", preprocessing=tab))
    assert torch.equal(art.encode(np.array([[3.0, 6.0]])), torch.tensor([[1.0, 1.0]]))  # raw feature values
    assert torch.equal(art.encode([{"a": 3, "b": 6}]), torch.tensor([[1.0, 1.0]]))
    seq = {"encoding": {"kind": "sequence", "length": 3, "features": 1}, "standardize": None,
           "target_scale": {"mean": 10.0, "std": 2.0}}
    art = load_artifact(save_artifact(build({"arch": "mlp", "hidden": [2]}, input_shape=(3, 1), num_outputs=1),
                                      tmp_path / "s", task="regression", preprocessing=seq))
    window = [[[10.0], [12.0], [8.0]]]  # the series' own units
    assert torch.equal(art.encode(window), torch.tensor([[[0.0], [1.0], [-1.0]]]))
    assert torch.equal(art.encode(np.array(window)), art.encode(window))


def test_reference_ranges_and_the_far_rule():
    from dlforge.registry.reference import build_reference, out_of_range

    x = torch.tensor([[0.0, -1.0], [2.0, 1.0]])
    ref = build_reference(x, {"values": torch.zeros(2, 1)}, "regression", {"encoding": {"kind": "tabular"}})
    assert ref["ranges"] == {"features": ["x0", "x1"], "min": [0.0, -1.0], "max": [2.0, 1.0]}
    # x0's width is 2: far means below -6 or above 8; x1's width 2: below -7 or above 7.
    found = out_of_range(torch.tensor([[7.9, 0.0], [8.1, -7.5], [0.0, 0.0]]), ref, {})
    assert [(f["input"], f["feature"], f["value"]) for f in found] == [(1, "x0", 8.1), (1, "x1", -7.5)]
    assert out_of_range(x, {"features": []}, {}) == []  # an older reference without ranges: nothing to say
    images = build_reference(torch.zeros(3, 2, 4, 4), {"indices": torch.zeros(3, dtype=torch.long),
                                                      "probabilities": torch.ones(3, 2)}, "classification",
                             {"encoding": {"kind": "image"}})
    assert images["ranges"]["features"] == ["c0", "c1"]
