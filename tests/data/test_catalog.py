"""Built-in sets: the catalog describes what the loader returns; generated sets are seeded."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import datasets

from dlforge.data import SegmentationBundle, list_builtin, load_builtin
from dlforge.data.assets import NUCLEI_FILES, asset_dir
from dlforge.errors import DataError

CATALOG = {d["name"]: d for d in list_builtin()}
GENERATED = ["xor", "circles", "spirals"]


def test_catalog_lists_every_set_with_all_keys():
    assert list(CATALOG) == ["digits", "breast_cancer", "wine", "iris", "diabetes", *GENERATED,
                             "nuclei", "synthetic_nuclei"]
    keys = {"name", "task", "kind", "shape", "n_samples", "n_classes", "description"}
    assert all(set(d) == keys and d["description"] for d in CATALOG.values())


@pytest.mark.parametrize("name", [n for n, d in CATALOG.items() if d["task"] == "segmentation"])
def test_segmentation_builtin_matches_its_catalog_entry(name):
    if name == "nuclei" and not all((asset_dir() / "nuclei" / f).is_file() for f in NUCLEI_FILES):
        pytest.skip("the nuclei set is not installed; run `python -m dlforge.data.assets nuclei`")
    entry, bundle = CATALOG[name], load_builtin(name)
    assert isinstance(bundle, SegmentationBundle) and bundle.name == name
    assert bundle.task == entry["task"] and bundle.encoding["kind"] == entry["kind"]
    assert bundle.x.shape == (entry["n_samples"], *entry["shape"]) and bundle.x.dtype == np.float32
    assert bundle.y.shape == (entry["n_samples"], *entry["shape"][1:]) and bundle.y.dtype == np.int64
    assert bundle.num_outputs == entry["n_classes"] and set(np.unique(bundle.y)) == {0, 1}


@pytest.mark.parametrize("name", [n for n, d in CATALOG.items() if d["task"] != "segmentation"])
def test_builtin_matches_its_catalog_entry(name):
    entry, bundle = CATALOG[name], load_builtin(name)
    assert bundle.name == name and bundle.task == entry["task"] and bundle.kind == entry["kind"]
    assert bundle.x.shape == (entry["n_samples"], *entry["shape"])
    assert bundle.x.dtype == np.float32 and np.isfinite(bundle.x).all()
    assert bundle.encoding["kind"] == entry["kind"]
    if entry["task"] == "classification":
        assert bundle.y.dtype == np.int64 and bundle.y.shape == (entry["n_samples"],)
        assert len(bundle.class_names) == entry["n_classes"] == bundle.num_outputs
        assert set(np.unique(bundle.y)) == set(range(entry["n_classes"]))
    else:
        assert bundle.y.dtype == np.float32 and bundle.y.shape == (entry["n_samples"], 1)
        assert entry["n_classes"] is None and bundle.num_outputs == 1
    if entry["kind"] == "tabular":
        assert bundle.feature_names == bundle.encoding["columns"]
        assert len(bundle.feature_names) == entry["shape"][0]


def test_digits_are_scaled_pixels_with_digit_class_names():
    bundle, raw = load_builtin("digits"), datasets.load_digits()
    assert bundle.x.min() == 0.0 and bundle.x.max() == 1.0  # sklearn pixels run 0..16
    np.testing.assert_array_equal(bundle.x[:, 0] * 16, raw.images)
    np.testing.assert_array_equal(bundle.y, raw.target)
    assert bundle.class_names == [str(d) for d in range(10)]
    assert bundle.encoding == {"kind": "image", "size": [8, 8], "mode": "L", "scale": 1 / 16}


def test_real_tabular_sets_keep_sklearn_values_and_names():
    bundle, raw = load_builtin("breast_cancer"), datasets.load_breast_cancer()
    np.testing.assert_allclose(bundle.x, raw.data.astype(np.float32))
    assert bundle.class_names == ["malignant", "benign"]
    assert bundle.feature_names == list(raw.feature_names)
    diabetes = load_builtin("diabetes")
    np.testing.assert_allclose(diabetes.y[:, 0], datasets.load_diabetes().target)


@pytest.mark.parametrize("name", GENERATED)
def test_generated_sets_are_seeded_and_sized(name):
    a = load_builtin(name, seed=7)
    b = load_builtin(name, seed=7)
    c = load_builtin(name, seed=8)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(a.x, c.x)
    small = load_builtin(name, n_samples=101, noise=0.3, seed=1)
    assert small.x.shape == (101, 2) and small.y.shape == (101,)
    assert abs(np.bincount(small.y)[0] - np.bincount(small.y)[1]) <= 40  # both classes present


@pytest.mark.parametrize("name", GENERATED)
def test_noise_spreads_the_points(name):
    clean = load_builtin(name, noise=0.0)
    noisy = load_builtin(name, noise=0.5)
    assert np.abs(noisy.x - clean.x).mean() > 0.1


def test_xor_labels_are_the_xor_of_coordinate_signs_without_noise():
    bundle = load_builtin("xor", noise=0.0, n_samples=500)
    expected = (bundle.x[:, 0] > 0) != (bundle.x[:, 1] > 0)
    np.testing.assert_array_equal(bundle.y, expected.astype(np.int64))


def test_circles_have_radii_one_and_a_half_without_noise():
    bundle = load_builtin("circles", noise=0.0, n_samples=200)
    radius = np.linalg.norm(bundle.x, axis=1)
    np.testing.assert_allclose(radius[bundle.y == 0], 1.0, atol=1e-6)  # outer
    np.testing.assert_allclose(radius[bundle.y == 1], 0.5, atol=1e-6)  # inner


def test_spiral_points_lie_on_their_arm_without_noise():
    bundle = load_builtin("spirals", noise=0.0, n_samples=400)
    # Arm k at radius r sits at angle 3*pi*r + k*pi: the arms are 180-degree rotations.
    radius = np.linalg.norm(bundle.x, axis=1)
    angle = 3 * np.pi * radius + np.pi * bundle.y
    on_arm = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    np.testing.assert_allclose(bundle.x, on_arm, atol=1e-5)
    assert np.bincount(bundle.y).tolist() == [200, 200]


@pytest.mark.parametrize("key", ["n_samples", "noise"])
def test_real_sets_refuse_generator_options(key):
    with pytest.raises(DataError, match=f"data.{key}"):
        load_builtin("iris", **{key: 10})


def test_unknown_builtin_suggests_the_closest_name():
    with pytest.raises(DataError) as err:
        load_builtin("digts")
    assert "did you mean 'digits'" in err.value.hint and "spirals" in err.value.hint


@pytest.mark.parametrize("kwargs", [{"n_samples": 1}, {"n_samples": 2.5}, {"noise": -0.1}])
def test_bad_generator_options_are_data_errors(kwargs):
    with pytest.raises(DataError, match="data." + next(iter(kwargs))):
        load_builtin("xor", **kwargs)
