"""encode_rows / encode_images / encode_array give exactly the tensors prepare made."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from dlforge.data import (
    encode_array,
    encode_images,
    encode_rows,
    load_builtin,
    load_csv,
    load_image_folder,
    prepare,
    sample_shape,
    split_indices,
)
from dlforge.errors import DataError

SPLIT = {"val": 0.25, "test": 0.25, "seed": 4}


@pytest.fixture
def people_csv(write_csv):
    rng = np.random.default_rng(0)
    lines = ["age,color,height,label"]
    for i in range(40):
        color = ["red", "blue", "green"][i % 3]
        lines.append(f"{20 + i % 17},{color},{rng.normal(170, 10):.2f},{'yes' if i % 2 else 'no'}")
    return write_csv("\n".join(lines) + "\n", name="people.csv")


def _round_trip(preprocessing: dict) -> dict:
    """As saved with a model and loaded back."""
    return json.loads(json.dumps(preprocessing))


def test_encode_rows_reproduces_prepared_tensors(people_csv):
    bundle = load_csv(people_csv, target="label")
    prepared = prepare(bundle, **SPLIT)
    _, val_idx, _ = split_indices(bundle, **SPLIT)
    with people_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))  # raw text, target column included
    preprocessing = _round_trip(prepared.preprocessing)
    encoded = encode_rows([rows[i] for i in val_idx], preprocessing)
    assert torch.equal(encoded, prepared.val.tensors[0])
    assert torch.equal(encode_rows(people_csv, preprocessing)[val_idx], encoded)
    assert torch.equal(encode_rows(str(people_csv), preprocessing)[val_idx], encoded)


def test_encode_rows_accepts_python_values_and_ignores_extra_columns(people_csv):
    prepared = prepare(load_csv(people_csv, target="label"), **SPLIT)
    as_text = encode_rows([{"age": "30", "color": "red", "height": "171.5"}],
                          prepared.preprocessing)
    as_values = encode_rows([{"height": 171.5, "color": "red", "age": 30, "id": 99}],
                            prepared.preprocessing)
    assert torch.equal(as_text, as_values) and as_text.shape == (1, 5)


def test_encode_rows_takes_one_dict_and_treats_absent_cells_as_gaps(people_csv):
    prepared = prepare(load_csv(people_csv, target="label"), **SPLIT)
    row = {"age": "30", "color": "red", "height": "171.5"}
    assert torch.equal(encode_rows(row, prepared.preprocessing),
                       encode_rows([row], prepared.preprocessing))
    with pytest.raises(DataError, match="'height' has an empty cell at row 2"):
        encode_rows([row, {"age": "31", "color": "red"}], prepare(
            load_csv(people_csv, target="label", missing="error"), **SPLIT).preprocessing)


def test_encode_rows_names_a_missing_column(people_csv):
    prepared = prepare(load_csv(people_csv, target="label"), **SPLIT)
    with pytest.raises(DataError) as err:
        encode_rows([{"age": "30", "color": "red"}], prepared.preprocessing)
    assert "'height'" in err.value.message


def test_encode_rows_names_an_unseen_category_and_the_known_ones(people_csv):
    prepared = prepare(load_csv(people_csv, target="label"), **SPLIT)
    with pytest.raises(DataError) as err:
        encode_rows([{"age": "30", "color": "purple", "height": "160"}],
                    prepared.preprocessing)
    assert "'purple'" in err.value.message and "'color'" in err.value.message
    assert "'blue', 'green', 'red'" in err.value.hint and "data.unknown_category" in err.value.hint


def test_encode_rows_refuses_text_in_a_numeric_column(people_csv):
    prepared = prepare(load_csv(people_csv, target="label"), **SPLIT)
    with pytest.raises(DataError, match="'age' is numeric but row 2 holds 'old'"):
        encode_rows([{"age": "30", "color": "red", "height": "1"},
                     {"age": "old", "color": "red", "height": "1"}], prepared.preprocessing)


@pytest.mark.parametrize("color, shape", [("grayscale", (12, 10)), ("rgb", (12, 10, 3))])
def test_encode_images_reproduces_prepared_tensors(write_images, random_pixels, color, shape):
    images = random_pixels(shape, 12, seed=9)
    root = write_images({"a": images[:6], "b": images[6:]})
    bundle = load_image_folder(root, image_size=(7, 5), color=color)
    prepared = prepare(bundle, val=0.25, test=0.25, seed=1)
    _, _, test_idx = split_indices(bundle, val=0.25, test=0.25, seed=1)
    files = sorted(root.glob("*/*.png"))  # class folders in order, as the loader reads them
    encoded = encode_images([files[i] for i in test_idx], _round_trip(prepared.preprocessing))
    assert encoded.shape == (len(test_idx), 3 if color == "rgb" else 1, 7, 5)
    assert torch.equal(encoded, prepared.test.tensors[0])


def test_encode_images_resizes_new_files_to_the_stored_size(write_images, random_pixels,
                                                             tmp_path):
    root = write_images({"a": random_pixels((6, 6), 2), "b": random_pixels((6, 6), 2)})
    prepared = prepare(load_image_folder(root), val=0, test=0)
    big = tmp_path / "big.png"
    Image.fromarray(random_pixels((30, 20), 1)[0]).save(big)
    assert encode_images([big], prepared.preprocessing).shape == (1, 1, 6, 6)
    with pytest.raises(DataError, match="missing.png"):
        encode_images([tmp_path / "missing.png"], prepared.preprocessing)


def test_encode_images_refuses_a_tabular_model(people_csv, tmp_path):
    prepared = prepare(load_csv(people_csv, target="label"), **SPLIT)
    with pytest.raises(DataError, match="tabular input, not image input"):
        encode_images([tmp_path / "x.png"], prepared.preprocessing)


@pytest.mark.parametrize("name", ["digits", "breast_cancer"])
def test_encode_array_reproduces_prepared_tensors(name):
    bundle = load_builtin(name)
    prepared = prepare(bundle, **SPLIT)
    train_idx, _, _ = split_indices(bundle, **SPLIT)
    preprocessing = _round_trip(prepared.preprocessing)
    assert torch.equal(encode_array(bundle.x[train_idx], preprocessing),
                       prepared.train.tensors[0])
    as_tensor = encode_array(torch.from_numpy(bundle.x[train_idx]), preprocessing)
    assert torch.equal(as_tensor, prepared.train.tensors[0])
    one = encode_array(bundle.x[train_idx[0]], preprocessing)  # no batch dimension
    assert torch.equal(one, prepared.train.tensors[0][:1])


def test_encode_array_refuses_the_wrong_sample_shape():
    prepared = prepare(load_builtin("digits"), **SPLIT)
    assert sample_shape(prepared.preprocessing["encoding"]) == (1, 8, 8)
    with pytest.raises(DataError) as err:
        encode_array(np.zeros((2, 1, 28, 28), np.float32), prepared.preprocessing)
    assert "(2, 1, 28, 28)" in err.value.message and "(1, 8, 8)" in err.value.message


def test_a_digits_png_encodes_like_its_array(tmp_path):
    bundle = load_builtin("digits")
    prepared = prepare(bundle, **SPLIT)
    # A user's PNG of a digit holds 0..255 pixels: 0..16 scaled up and rounded.
    pixels = np.round(bundle.x[0, 0] * 255).astype(np.uint8)  # (8, 8)
    Image.fromarray(pixels).save(tmp_path / "digit.png")
    from_png = encode_images([tmp_path / "digit.png"], prepared.preprocessing)
    from_array = encode_array(bundle.x[:1], prepared.preprocessing)
    std = prepared.preprocessing["standardize"]["std"][0]
    # Only the rounding to whole 0..255 pixels separates them: half a level at most.
    torch.testing.assert_close(from_png, from_array, atol=0.5 / 255 / std + 1e-6, rtol=0)
