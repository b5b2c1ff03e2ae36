"""Standardizer against scikit-learn's StandardScaler, and prepare's train-only statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.preprocessing import StandardScaler
from torch.testing import assert_close

from dlforge.data import Standardizer, load_builtin, prepare, split
from dlforge.errors import DataError


def test_feature_stats_and_transform_match_standard_scaler():
    x = load_builtin("wine").x
    ours, reference = Standardizer.fit(x), StandardScaler().fit(x.astype(np.float64))
    assert ours.axis == "feature"
    assert_close(np.array(ours.mean), reference.mean_)
    assert_close(np.array(ours.std), reference.scale_)  # population std, ddof=0
    assert_close(ours.transform(x), reference.transform(x).astype(np.float32))


def test_constant_columns_are_divided_by_one_like_standard_scaler():
    x = np.array([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]], dtype=np.float32)
    ours = Standardizer.fit(x)
    assert ours.std[1] == 1.0 == StandardScaler().fit(x).scale_[1]
    np.testing.assert_array_equal(ours.transform(x)[:, 1], [0.0, 0.0, 0.0])


def test_channel_stats_are_over_samples_height_and_width():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(10, 3, 4, 5)).astype(np.float32) * np.array([1, 2, 3])[:, None, None]
    ours = Standardizer.fit(x)
    assert ours.axis == "channel" and len(ours.mean) == 3
    per_channel = x.transpose(1, 0, 2, 3).reshape(3, -1).astype(np.float64)  # (C, N*H*W)
    assert_close(np.array(ours.mean), per_channel.mean(axis=1))
    assert_close(np.array(ours.std), per_channel.std(axis=1))
    out = ours.transform(x)
    assert_close(out.mean(axis=(0, 2, 3)), np.zeros(3, np.float32), atol=1e-5, rtol=0)
    assert_close(out.std(axis=(0, 2, 3)), np.ones(3, np.float32), atol=1e-5, rtol=0)


def test_tensor_and_array_transforms_agree_and_keep_their_type():
    x = load_builtin("iris").x
    scaler = Standardizer.fit(x)
    as_tensor = scaler.transform(torch.from_numpy(x).double())
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.dtype == torch.float32
    as_array = scaler.transform(x)
    assert isinstance(as_array, np.ndarray) and as_array.dtype == np.float32
    assert torch.equal(as_tensor, torch.from_numpy(as_array))


def test_dict_round_trip_through_json():
    scaler = Standardizer.fit(load_builtin("digits").x)
    again = Standardizer.from_dict(json.loads(json.dumps(scaler.to_dict())))
    assert again == scaler
    with pytest.raises(DataError, match="lack mean, std or axis"):
        Standardizer.from_dict({"mean": [0.0]})


def test_shape_mismatch_is_a_data_error():
    scaler = Standardizer.fit(np.zeros((3, 4)))
    with pytest.raises(DataError, match="fitted on 4 features"):
        scaler.transform(np.zeros((3, 5)))
    with pytest.raises(DataError, match="cannot standardise"):
        Standardizer.fit(np.zeros((3, 4, 5)))


@pytest.mark.parametrize("name", ["wine", "digits"])
def test_prepare_fits_statistics_on_the_train_split_only(name):
    bundle = load_builtin(name)
    prepared = prepare(bundle, val=0.2, test=0.2, seed=5)
    stats = prepared.preprocessing["standardize"]
    train = split(bundle, val=0.2, test=0.2, seed=5).train
    assert stats == Standardizer.fit(train.x).to_dict()
    assert stats != Standardizer.fit(bundle.x).to_dict()
    # The train tensors are standardised with exactly those stats: mean 0, std 1.
    x = prepared.train.tensors[0].double()
    dims = (0,) if x.ndim == 2 else (0, 2, 3)
    assert_close(x.mean(dim=dims), torch.zeros(x.shape[1], dtype=torch.float64),
                 atol=1e-5, rtol=0)
    # ...while the held-out splits are not exactly centred, since their stats were unused.
    assert prepared.val.tensors[0].double().mean(dim=dims).abs().max() > 1e-3


def test_prepare_reports_shapes_and_keeps_the_bundle_unscaled():
    bundle = load_builtin("diabetes")
    before = bundle.x.copy()
    prepared = prepare(bundle, val=0.1, test=0.1)
    np.testing.assert_array_equal(bundle.x, before)
    assert prepared.task == "regression" and prepared.input_shape == (10,)
    assert prepared.num_outputs == 1 and prepared.class_names is None
    x, y = prepared.train[0]
    assert x.dtype == torch.float32 and y.dtype == torch.float32 and y.shape == (1,)
    assert prepared.preprocessing["encoding"] == bundle.encoding
    json.dumps(prepared.preprocessing)  # saved next to the model, so it must be JSON-able


def test_prepare_without_standardize_passes_x_through():
    bundle = load_builtin("iris")
    prepared = prepare(bundle, val=0, test=0, standardize=False)
    assert prepared.preprocessing["standardize"] is None
    assert prepared.val is None and prepared.test is None
    assert torch.equal(prepared.train.tensors[0], torch.from_numpy(bundle.x))
    assert prepared.train.tensors[1].dtype == torch.int64
