"""load_source picks the right loader and refuses options that would be ignored."""

from __future__ import annotations

import numpy as np
import pytest

from dlforge.data import load_builtin, load_source, write_idx
from dlforge.errors import DataError


def test_builtin_names_win(monkeypatch, tmp_path):
    (tmp_path / "iris").mkdir()  # a folder of the same name must not shadow the built-in
    monkeypatch.chdir(tmp_path)
    assert load_source("iris").name == "iris" and len(load_source("iris")) == 150
    a = load_source("xor", n_samples=64, noise=0.2, seed=5)
    np.testing.assert_array_equal(a.x, load_builtin("xor", n_samples=64, noise=0.2, seed=5).x)


def test_csv_path_goes_to_the_csv_loader(write_csv):
    path = write_csv("a,color,y\n1,red,0\n2,blue,1\n3,red,1\n", name="table.CSV")
    bundle = load_source(str(path), target="y", categorical="onehot")
    assert bundle.kind == "tabular" and bundle.feature_names == ["a", "color=blue", "color=red"]
    with pytest.raises(DataError, match="data.target"):
        load_source(path)  # a CSV needs a target


def test_folder_goes_to_the_image_loader(write_images, random_pixels):
    root = write_images({"a": random_pixels((5, 5), 2), "b": random_pixels((5, 5), 2)})
    bundle = load_source(root, image_size=(4, 4), color="rgb")
    assert bundle.kind == "image" and bundle.x.shape == (4, 3, 4, 4)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_folder_and_file_go_to_the_idx_loader(tmp_path, suffix):
    images = np.arange(2 * 9, dtype=np.uint8).reshape(2, 3, 3)
    write_idx(images, np.array([4, 2]), tmp_path / f"s-images-idx3-ubyte{suffix}",
              tmp_path / f"s-labels-idx1-ubyte{suffix}")
    for source in (tmp_path, tmp_path / f"s-images-idx3-ubyte{suffix}"):
        bundle = load_source(str(source))
        assert bundle.class_names == ["2", "4"] and bundle.x.shape == (2, 1, 3, 3)


def test_missing_path_is_named_and_typos_suggest_builtins(tmp_path):
    missing = tmp_path / "no_such.csv"
    with pytest.raises(DataError) as err:
        load_source(str(missing))
    assert str(missing) in err.value.message and "data.source" in err.value.hint
    with pytest.raises(DataError) as err:
        load_source("spiral")
    assert "'spirals'" in err.value.hint and "breast_cancer" in err.value.hint


@pytest.mark.parametrize("option, value, allowed", [
    ("task", "clustering", "auto, classification, regression"),
    ("categorical", "drop", "onehot, reject"),
    ("color", "RGBA", "grayscale, rgb"),
])
def test_unknown_option_values_list_the_allowed_ones(option, value, allowed):
    with pytest.raises(DataError) as err:
        load_source("iris", **{option: value})
    assert allowed in err.value.message and f"data.{option}" in err.value.message


@pytest.mark.parametrize("kwargs, key", [
    ({"target": "species"}, "data.target"),
    ({"image_size": (28, 28)}, "data.image_size"),
    ({"task": "regression"}, "data.task"),
])
def test_options_that_do_not_apply_to_a_builtin_are_refused(kwargs, key):
    with pytest.raises(DataError) as err:
        load_source("digits", **kwargs)
    assert key in str(err.value)


def test_generator_options_on_a_file_are_refused(write_csv):
    with pytest.raises(DataError, match="data.n_samples"):
        load_source(write_csv("a,y\n1,0\n2,1\n"), target="y", n_samples=10)


def test_unknown_file_type_is_explained(tmp_path):
    (tmp_path / "data.parquet").write_bytes(b"PAR1")
    with pytest.raises(DataError) as err:
        load_source(tmp_path / "data.parquet")
    assert "data.parquet" in err.value.message and ".csv" in err.value.hint
