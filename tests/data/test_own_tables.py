"""Own tables done right: ID and dropped columns, gaps, unseen categories, task: auto, DataFrames."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from dlforge.data import encode_rows, load_csv, load_source, prepare, split_indices
from dlforge.data.tabular import examples, is_missing, read_csv
from dlforge.errors import DataError

SPLIT = {"val": 0.2, "test": 0.2, "stratify": True, "seed": 3}


def people(n: int = 60, seed: int = 0, gaps: bool = False) -> pd.DataFrame:
    """A small survey: a text ID, numbers, a category and a yes/no label."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "respondent": [f"R{1000 + 7 * i}" for i in range(n)],
        "age": rng.normal(40, 12, n).round(1),
        "city": rng.choice(["Oslo", "Rome", "Lima"], n),
        "income": rng.normal(50_000, 9_000, n).round(2),
        "label": rng.choice(["yes", "no"], n),
    })
    if gaps:
        df.loc[[2, 5, 11, 30, 41], "age"] = np.nan
        df.loc[[7, 19], "city"] = None
    return df


def write(df: pd.DataFrame, tmp_path, name: str = "people.csv"):
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


def _round_trip(preprocessing: dict) -> dict:
    return json.loads(json.dumps(preprocessing))  # as saved with a model


# ----------------------------------------------------------------------------- columns

def test_a_text_id_column_is_refused_with_a_short_hint_naming_it(tmp_path):
    with pytest.raises(DataError) as err:
        load_csv(write(people(), tmp_path), target="label")
    assert "'respondent'" in err.value.message and "identifier" in err.value.message
    assert "data.drop" in err.value.hint and "data.id_column: respondent" in err.value.hint
    assert len(str(err.value).replace(str(tmp_path), "")) < 300  # the message, not the folder it ran in


@pytest.mark.parametrize("values, refused", [
    (list(range(1, 41)), True),                         # a row counter
    (list(np.random.default_rng(0).permutation(40)), True),  # shuffled row numbers
    (list(range(1000, 1400, 10)), True),                # a sorted key
    (list(np.random.default_rng(1).choice(10_000, 40, replace=False)), False),  # unique amounts
    ([round(float(v), 5) for v in np.random.default_rng(2).normal(size=40)], False),  # measurements
    ([i % 7 for i in range(40)], False),                # repeated integers
])
def test_integer_identifiers_are_refused_but_numbers_that_measure_are_not(values, refused):
    rng = np.random.default_rng(5)
    df = pd.DataFrame({"key": values, "x": rng.normal(size=40), "y": rng.integers(0, 2, 40)})
    if refused:
        with pytest.raises(DataError, match="'key' looks like an identifier"):
            load_csv(df, target="y")
    else:
        assert load_csv(df, target="y").feature_names == ["key", "x"]


def test_keep_uses_a_column_that_looks_like_an_identifier_as_a_feature():
    rng = np.random.default_rng(5)
    df = pd.DataFrame({"year": range(1960, 2000), "x": rng.normal(size=40), "y": rng.integers(0, 2, 40)})
    with pytest.raises(DataError, match="data.keep: \\[year\\]"):
        load_csv(df, target="y")
    assert load_csv(df, target="y", keep=["year"]).feature_names == ["year", "x"]
    with pytest.raises(DataError, match="data.keep names 'yr'"):
        load_csv(df, target="y", keep=["yr"])


def test_unique_integers_under_an_id_name_are_refused():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"customerId": rng.choice(10_000, 40, replace=False), "x": rng.normal(size=40),
                       "y": rng.integers(0, 2, 40)})
    with pytest.raises(DataError, match="'customerId'"):
        load_csv(df, target="y")


def test_a_one_hot_explosion_is_refused_like_an_identifier():
    rng = np.random.default_rng(0)
    towns = [f"town{i}" for i in rng.integers(0, 300, 200)]  # ~150 categories in 200 rows
    df = pd.DataFrame({"town": towns, "x": rng.normal(size=200), "y": rng.integers(0, 2, 200)})
    with pytest.raises(DataError, match="one-hot inputs") as err:
        load_csv(df, target="y")
    assert "data.drop" in err.value.hint


def test_id_column_is_carried_on_the_bundle_and_kept_out_of_the_features(tmp_path):
    df = people()
    bundle = load_csv(write(df, tmp_path), target="label", id_column="respondent")
    assert bundle.ids == df["respondent"].tolist()
    assert "respondent" not in bundle.encoding["columns"] and bundle.encoding["id_column"] == "respondent"
    assert not any(name.startswith("respondent") for name in bundle.feature_names)
    assert bundle.subset(np.array([3, 1])).ids == [df["respondent"][3], df["respondent"][1]]


def test_drop_keeps_columns_out_and_unknown_names_are_listed_capped(tmp_path):
    path = write(people(), tmp_path)
    bundle = load_csv(path, target="label", drop=["respondent", "income"])
    assert bundle.encoding["columns"] == ["age", "city"]
    assert bundle.feature_names == ["age", "city=Lima", "city=Oslo", "city=Rome"]
    with pytest.raises(DataError) as err:
        load_csv(path, target="label", drop=["respondant"])
    assert "'respondant'" in err.value.message and "'respondent'" in err.value.hint
    with pytest.raises(DataError, match="target"):
        load_csv(path, target="label", drop=["respondent", "label"])


def test_examples_caps_every_list_in_a_message():
    assert examples(["a", "b"]) == "'a', 'b'"
    assert examples([f"v{i}" for i in range(5000)]) == "'v0', 'v1', 'v2', 'v3', 'v4', ... (4995 more)"
    assert examples(range(10), limit=2, quote=False) == "0, 1, ... (8 more)"


def test_an_unseen_category_among_5000_gets_a_short_hint():
    categories = [f"ID{i:05d}" for i in range(5000)]
    preprocessing = {"encoding": {"kind": "tabular", "columns": ["who"], "categories": {"who": categories}},
                     "standardize": None}
    with pytest.raises(DataError) as err:
        encode_rows([{"who": "someone new"}], preprocessing)
    assert "'someone new'" in err.value.message and "(4995 more)" in err.value.hint
    assert len(err.value.hint) < 300


# ----------------------------------------------------------------------------- gaps

@pytest.mark.parametrize("cell", ["", "NA", "n/a", "NaN", "nan", "null", "None", "?", "inf", "-inf"])
def test_what_counts_as_missing(cell):
    assert is_missing(cell)


def test_fill_values_are_the_train_split_medians_and_indicators_mark_the_gaps(tmp_path):
    df = people(gaps=True).drop(columns="respondent")
    path = write(df, tmp_path)
    bundle = load_csv(path, target="label", fit_split=SPLIT)
    train, _, _ = split_indices(bundle, **SPLIT)
    ages = df["age"].to_numpy()[train]
    assert bundle.encoding["fill"]["age"] == np.median(ages[~np.isnan(ages)])  # train rows only
    assert bundle.encoding["fill"]["age"] != np.nanmedian(df["age"])  # all rows would differ
    assert bundle.encoding["fill"]["city"] == "missing"
    assert "missing" in bundle.encoding["categories"]["city"]
    gaps_in_train = [c for c in ("age", "city") if df[c].iloc[train].isna().any()]
    assert bundle.encoding["indicators"] == gaps_in_train
    assert bundle.feature_names[-len(gaps_in_train):] == [f"{c}_missing" for c in gaps_in_train]
    age_missing = bundle.feature_names.index("age_missing")
    np.testing.assert_array_equal(bundle.x[:, age_missing], df["age"].isna().to_numpy(np.float32))
    filled = bundle.x[df["age"].isna().to_numpy(), bundle.feature_names.index("age")]
    assert np.all(filled == np.float32(bundle.encoding["fill"]["age"]))
    note = next(n for n in bundle.notes if n.startswith("filled"))
    assert note.startswith("filled 7 missing cells: age 5 (median ") and "city 2 ('missing')" in note


def test_a_row_with_a_gap_encodes_at_prediction_as_in_training(tmp_path):
    df = people(gaps=True).drop(columns="respondent")
    path = write(df, tmp_path)
    bundle = load_csv(path, target="label", fit_split=SPLIT)
    prepared = prepare(bundle, **SPLIT)
    preprocessing = _round_trip(prepared.preprocessing)
    _, val, _ = split_indices(bundle, **SPLIT)
    rows = [{k: ("" if pd.isna(v) else v) for k, v in df.iloc[i].items()} for i in val]
    assert torch.equal(encode_rows(rows, preprocessing), prepared.val.tensors[0])
    assert torch.equal(encode_rows(path, preprocessing)[val], prepared.val.tensors[0])
    # A gap in a column that had none in training is filled too (no indicator exists for it).
    row = {"age": 40, "city": "Oslo", "income": None}
    full = encode_rows([{**row, "income": bundle.encoding["fill"]["income"]}], preprocessing)
    assert torch.equal(encode_rows([row], preprocessing), full)


def test_missing_error_refuses_gaps_and_the_target_is_never_imputed(tmp_path):
    df = people(gaps=True).drop(columns="respondent")
    with pytest.raises(DataError, match="'age' has the value 'nan'|'age' has an empty cell") as err:
        load_csv(write(df, tmp_path), target="label", missing="error")
    assert "data.missing: impute" in err.value.hint
    df.loc[4, "label"] = None
    with pytest.raises(DataError, match="target column 'label' has an empty cell at row 6"):
        load_csv(write(df, tmp_path), target="label")


def test_an_encoding_saved_before_these_keys_encodes_as_it_did():
    old = {"encoding": {"kind": "tabular", "columns": ["a", "b"], "categories": {"b": ["NA", "x"]}},
           "standardize": None}
    x = encode_rows([{"a": 1.5, "b": "NA"}, {"a": 2, "b": "x"}], old)
    assert torch.equal(x, torch.tensor([[1.5, 1.0, 0.0], [2.0, 0.0, 1.0]]))  # "NA" was a category then
    with pytest.raises(DataError, match="'a' has an empty cell"):
        encode_rows([{"a": "", "b": "x"}], old)


# ----------------------------------------------------------------------------- unseen categories

def test_unknown_category_ignore_encodes_zeros_and_error_refuses(tmp_path):
    df = people().drop(columns="respondent")
    row = {"age": 30.5, "city": "Paris", "income": 40_000}
    for policy in ("error", "ignore"):
        prepared = prepare(load_csv(df, target="label", unknown_category=policy), standardize=False)
        preprocessing = _round_trip(prepared.preprocessing)
        if policy == "error":
            with pytest.raises(DataError, match="'Paris'"):
                encode_rows(row, preprocessing)
            continue
        assert encode_rows(row, preprocessing).tolist() == [[30.5, 0.0, 0.0, 0.0, 40_000.0]]


# ----------------------------------------------------------------------------- task: auto

def _target(values) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"x": rng.normal(size=len(values)), "y": values})


def test_task_auto_makes_an_integer_amount_regression_and_says_how_to_override():
    rng = np.random.default_rng(0)
    weights = rng.choice(np.arange(120, 260, 10), 200)  # 14 values in pounds
    bundle = load_csv(_target(weights), target="y")
    assert bundle.task == "regression"
    assert any("task: auto chose regression for 'y' (integer, 14 distinct values in 200 rows)" in n
               and "data.task: classification" in n for n in bundle.notes)


@pytest.mark.parametrize("labels, n", [([0, 1], 40), ([0, 1, 2], 150), ([1, 2, 3, 4, 5], 50),
                                       (list(range(10)), 1800), ([-1, 1], 30)])
def test_task_auto_keeps_small_runs_of_integers_as_classes(labels, n):
    values = np.resize(labels, n)
    bundle = load_csv(_target(values), target="y")
    assert bundle.task == "classification" and bundle.num_outputs == len(labels)
    # Two values are labels by any reading; a longer run of codes says how to override it.
    assert any("data.task: regression" in note for note in bundle.notes) == (len(labels) > 2)


# ----------------------------------------------------------------------------- DataFrames

def test_a_dataframe_loads_and_encodes_exactly_like_its_csv(tmp_path):
    df = people(gaps=True)
    path = write(df, tmp_path)
    from_csv = load_csv(path, target="label", id_column="respondent", fit_split=SPLIT)
    from_df = load_csv(df, target="label", id_column="respondent", fit_split=SPLIT)
    assert from_df.name == "dataframe"
    np.testing.assert_array_equal(from_df.x, from_csv.x)
    np.testing.assert_array_equal(from_df.y, from_csv.y)
    assert from_df.encoding == from_csv.encoding and from_df.ids == from_csv.ids
    preprocessing = _round_trip(prepare(from_csv, **SPLIT).preprocessing)
    assert torch.equal(encode_rows(df, preprocessing), encode_rows(path, preprocessing))
    assert torch.equal(encode_rows(df.drop(columns="label"), preprocessing), encode_rows(path, preprocessing))
    np.testing.assert_array_equal(load_source(df, target="label", id_column="respondent").x,
                                  load_csv(df, target="label", id_column="respondent").x)


def test_dataframe_messages_count_rows_as_iloc_does():
    df = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": ["x", "y", "x"], "y": [0, 1, None]})
    with pytest.raises(DataError, match=r"the DataFrame: target column 'y' .* row 2 \(counted from 0"):
        load_csv(df, target="y")


def test_csv_row_numbers_still_count_the_header(write_csv):
    table = read_csv(write_csv("a,y\n1,0\n2,1\n"))
    assert table.where(1) == "row 3 (row 1 is the header)"
