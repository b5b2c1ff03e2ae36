"""Reference statistics for drift: features per input kind and the JSON reference."""

from __future__ import annotations

import json

import pytest
import torch
from torch.testing import assert_close

from dlforge.errors import DataError
from dlforge.registry.reference import build_reference, prediction_summary, reference_features


def test_tabular_features_are_the_columns_with_stored_or_encoded_names():
    x = torch.randn(6, 3)
    feats, names = reference_features(x, {"encoding": {"kind": "tabular"}})
    assert_close(torch.from_numpy(feats), x.double())
    assert names == ["x0", "x1", "x2"]
    _, names = reference_features(x, {"feature_names": ["a", "b", "c"]})
    assert names == ["a", "b", "c"]
    encoding = {"kind": "tabular", "columns": ["age", "color"], "categories": {"color": ["blue", "red"]}}
    _, names = reference_features(x, {"encoding": encoding})
    assert names == ["age", "color=blue", "color=red"]


def test_wide_tables_keep_64_evenly_spaced_columns():
    x = torch.arange(2 * 200, dtype=torch.float32).reshape(2, 200)
    feats, names = reference_features(x, {"encoding": {"kind": "tabular"}})
    assert feats.shape == (2, 64) and len(names) == 64
    assert names[0] == "x0" and names[-1] == "x199"
    assert_close(feats[0], x[0, [int(n[1:]) for n in names]].double().numpy())


def test_image_features_are_channel_mean_and_std():
    x = torch.rand(4, 3, 5, 6)
    feats, names = reference_features(x, {"encoding": {"kind": "image"}})
    assert names == ["c0_mean", "c0_std", "c1_mean", "c1_std", "c2_mean", "c2_std"]
    expected = torch.stack([x.double().mean(dim=(2, 3)), x.double().std(dim=(2, 3), unbiased=False)], dim=2)
    assert_close(torch.from_numpy(feats), expected.reshape(4, 6))


def test_text_feature_is_the_non_padding_length():
    ids = torch.tensor([[2, 9, 9, 3, 0, 0], [2, 3, 0, 0, 0, 0], [2, 5, 6, 7, 8, 3]])
    feats, names = reference_features(ids, {"encoding": {"kind": "text", "pad_id": 0}})
    assert names == ["length"]
    assert feats[:, 0].tolist() == [4.0, 2.0, 6.0]
    feats, _ = reference_features(ids, {"encoding": {"kind": "text", "pad_id": 3}})  # another tokenizer's pad
    assert feats[:, 0].tolist() == [5.0, 5.0, 5.0]
    assert reference_features(ids, {})[1] == ["length"]  # int64 (N, L) without a recipe: token ids


def test_sequence_features_are_means_over_time():
    x = torch.randn(5, 7, 2)
    feats, names = reference_features(x, {"encoding": {"kind": "sequence", "length": 7, "features": 2}})
    assert names == ["x0_mean", "x1_mean"]
    assert_close(torch.from_numpy(feats), x.double().mean(dim=1))


def test_input_that_does_not_match_its_kind_is_a_data_error():
    with pytest.raises(DataError, match="image inputs must have 4 dims"):
        reference_features(torch.zeros(2, 3), {"encoding": {"kind": "image"}})


def test_prediction_summary_of_classes_and_values():
    kind, idx, k = prediction_summary({"probabilities": torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]])})
    assert (kind, idx.tolist(), k) == ("classes", [1, 0], 3)
    kind, values, _ = prediction_summary({"values": torch.tensor([[1.0, 3.0], [2.0, 2.0]])})
    assert kind == "values" and values.tolist() == [2.0, 2.0]  # a horizon is summarised by its mean
    with pytest.raises(DataError, match="expected 'indices' or 'values'"):
        prediction_summary({"logits": torch.zeros(1)})


def test_build_reference_is_json_ready_bounded_and_deterministic():
    torch.manual_seed(0)
    x = torch.randn(1200, 4)
    indices = torch.randint(0, 3, (1200,))
    outputs = {"indices": indices, "probabilities": torch.rand(1200, 3), "labels": ["a"] * 1200}
    ref = build_reference(x, outputs, "classification", {}, max_samples=300, seed=1)
    assert json.loads(json.dumps(ref)) == ref
    assert ref["n"] == 1200 and ref["features"] == ["x0", "x1", "x2", "x3"]
    assert [len(s) for s in ref["samples"]] == [300] * 4
    assert ref == build_reference(x, outputs, "classification", {}, max_samples=300, seed=1)
    assert ref["samples"] != build_reference(x, outputs, "classification", {}, max_samples=300, seed=2)["samples"]
    # The kept samples are real rows of x (to 7 significant digits), in order.
    rows = torch.tensor(ref["samples"], dtype=torch.float64).T
    kept = torch.cdist(rows, x.double()).argmin(dim=1)
    assert_close(rows, x.double()[kept], rtol=1e-6, atol=1e-7)
    assert kept.tolist() == sorted(set(kept.tolist()))
    proportions = ref["prediction"]["proportions"]
    assert ref["prediction"]["kind"] == "classes" and sum(proportions) == pytest.approx(1.0)
    assert_close(torch.tensor(proportions, dtype=torch.float64), torch.bincount(indices, minlength=3).double() / 1200)


def test_build_reference_of_regression_keeps_value_samples():
    x, values = torch.randn(50, 2), torch.randn(50, 1)
    ref = build_reference(x, {"values": values}, "regression", {}, max_samples=500)
    assert ref["prediction"]["kind"] == "values"
    assert_close(torch.tensor(ref["prediction"]["samples"], dtype=torch.float64), values[:, 0].double(),
                 rtol=1e-6, atol=1e-7)
    assert len(ref["samples"][0]) == 50  # fewer samples than max_samples: all of them
