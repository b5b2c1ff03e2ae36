"""CSV loading: numeric and one-hot features, task detection, and every refusal."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.preprocessing import OneHotEncoder

from dlforge.data import load_csv
from dlforge.errors import DataError

MIXED = """
    age,color,size,label
    31,red,S,yes
    45,blue,M,no
    22,green,S,yes
    38,red,L,no
    29,blue,M,yes
"""


def test_numeric_csv_loads_features_and_regression_target(write_csv):
    path = write_csv("""
        a,b,price
        1,2.5,10.5
        3,-4,20.25
        5,6e1,30
    """, name="houses.csv")
    bundle = load_csv(path, target="price")
    assert bundle.name == "houses" and bundle.task == "regression" and bundle.kind == "tabular"
    np.testing.assert_array_equal(bundle.x, np.array([[1, 2.5], [3, -4], [5, 60]], np.float32))
    np.testing.assert_array_equal(bundle.y, np.array([[10.5], [20.25], [30]], np.float32))
    assert bundle.x.dtype == np.float32 and bundle.y.dtype == np.float32
    assert bundle.feature_names == ["a", "b"] and bundle.class_names is None
    assert {k: bundle.encoding[k] for k in ("kind", "columns", "categories")} == {
        "kind": "tabular", "columns": ["a", "b"], "categories": {}}
    assert bundle.encoding["types"] == {"a": "number", "b": "number"}
    assert bundle.encoding["target"] == "price" and bundle.encoding["ranges"]["b"] == [-4.0, 60.0]


def test_onehot_matches_sklearn_and_keeps_column_places(write_csv):
    bundle = load_csv(write_csv(MIXED), target="label")
    colors, sizes = ["blue", "green", "red"], ["L", "M", "S"]
    raw = [["red", "S"], ["blue", "M"], ["green", "S"], ["red", "L"], ["blue", "M"]]
    onehot = OneHotEncoder(categories=[colors, sizes]).fit_transform(raw).toarray()
    ages = np.array([[31], [45], [22], [38], [29]])
    expected = np.concatenate([ages, onehot], axis=1).astype(np.float32)
    np.testing.assert_array_equal(bundle.x, expected)
    assert bundle.feature_names == [
        "age", "color=blue", "color=green", "color=red", "size=L", "size=M", "size=S"]
    assert {k: bundle.encoding[k] for k in ("kind", "columns", "categories")} == {
        "kind": "tabular",
        "columns": ["age", "color", "size"],
        "categories": {"color": colors, "size": sizes},
    }
    assert bundle.encoding["types"] == {"age": "number", "color": "category", "size": "category"}
    assert bundle.task == "classification" and bundle.class_names == ["no", "yes"]
    np.testing.assert_array_equal(bundle.y, [1, 0, 1, 0, 1])


def test_reject_mode_names_the_text_columns(write_csv):
    with pytest.raises(DataError) as err:
        load_csv(write_csv(MIXED), target="label", categorical="reject")
    assert "'color'" in err.value.message and "'size'" in err.value.message
    assert "data.categorical: onehot" in err.value.hint


def test_reject_mode_accepts_an_all_numeric_file(write_csv):
    bundle = load_csv(write_csv("a,y\n1,0\n2,1\n"), target="y", categorical="reject")
    assert bundle.x.shape == (2, 1)


def test_few_integer_targets_are_classes_sorted_numerically(write_csv):
    rows = "\n".join(f"{i},{label}" for i, label in enumerate([10, 2, 2.0, 10, 3, 2]))
    # Gaps between the values would make task: auto choose regression (see test_own_tables).
    bundle = load_csv(write_csv("x,grade\n" + rows), target="grade", task="classification")
    assert bundle.task == "classification"
    assert bundle.class_names == ["2", "3", "10"]  # "2.0" is class "2"; 10 sorts after 3
    np.testing.assert_array_equal(bundle.y, [2, 0, 0, 2, 1, 0])
    assert bundle.y.dtype == np.int64 and bundle.num_outputs == 3


def test_many_integer_values_or_fractions_mean_regression(write_csv):
    many = "\n".join(f"{i % 4},{i}" for i in range(21))  # 21 distinct integers > 20
    assert load_csv(write_csv("x,y\n" + many), target="y").task == "regression"
    fractions = "x,y\n1,0.5\n2,1.5\n3,0.5\n"
    assert load_csv(write_csv(fractions, "f.csv"), target="y").task == "regression"


def test_explicit_task_overrides_detection(write_csv):
    path = write_csv("x,y\n1,0\n2,1\n3,1\n")
    bundle = load_csv(path, target="y", task="regression")
    assert bundle.task == "regression" and bundle.y.shape == (3, 1)
    fractions = write_csv("x,y\n1,0.5\n2,1.5\n", "f.csv")
    assert load_csv(fractions, target="y", task="classification").class_names == ["0.5", "1.5"]


def test_spaces_around_cells_and_a_byte_order_mark_are_ignored(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_text("\ufeffa, color ,y\n1, red ,0\n2,blue,1\n", encoding="utf-8")
    bundle = load_csv(path, target="y")
    assert bundle.encoding["columns"] == ["a", "color"]
    assert bundle.encoding["categories"] == {"color": ["blue", "red"]}


def test_missing_target_lists_the_columns(write_csv):
    with pytest.raises(DataError) as err:
        load_csv(write_csv(MIXED), target="labels")
    assert "'labels'" in err.value.message
    assert "['age', 'color', 'size', 'label']" in err.value.message
    assert "data.target" in err.value.hint


@pytest.mark.parametrize("cell, shown", [("", "an empty cell"), ("nan", "'nan'"),
                                         ("inf", "'inf'"), ("NaN", "'NaN'")])
def test_missing_feature_values_name_column_and_spreadsheet_row(write_csv, cell, shown):
    path = write_csv(f"a,b,y\n1,2,0\n3,4,1\n5,{cell},0\n")
    with pytest.raises(DataError) as err:
        load_csv(path, target="y", missing="error")
    assert "'b'" in err.value.message and shown in err.value.message
    assert "row 4" in err.value.message  # header is row 1, so the third data row is row 4


def test_empty_cell_in_a_text_column_is_missing_too(write_csv):
    with pytest.raises(DataError, match="'color' has an empty cell at row 3"):
        load_csv(write_csv("color,y\nred,0\n,1\n"), target="y", missing="error")


@pytest.mark.parametrize("cell", ["", "nan"])
def test_missing_target_values_are_refused(write_csv, cell):
    with pytest.raises(DataError, match="target column 'y'.* at row 3"):
        load_csv(write_csv(f"a,y\n1,0\n2,{cell}\n3,1\n"), target="y")


def test_blank_lines_are_skipped_but_counted(write_csv):
    path = write_csv("a,y\n1,0\n\n2,1\n,1\n")
    with pytest.raises(DataError, match="row 5"):
        load_csv(path, target="y", missing="error")


@pytest.mark.parametrize("text, message", [
    ("", "is empty"),
    ("a,b,y\n", "no data rows"),
    ("a,b,y\n1,2,0\n3,1\n", "row 3 has 2 cells but the header has 3"),
    ("a,y\n1,1\n2,1\n", "single class"),
    ("a,a,y\n1,2,0\n", "repeats column"),
    (",a,y\n0,1,0\n", "column 1 has no name"),
    ("y\n0\n1\n", "no input columns"),
])
def test_malformed_files_are_data_errors(write_csv, text, message):
    with pytest.raises(DataError, match=message):
        load_csv(write_csv(text), target="y")


def test_text_target_cannot_be_regressed(write_csv):
    with pytest.raises(DataError) as err:
        load_csv(write_csv(MIXED), target="label", task="regression")
    assert "'yes'" in err.value.message and "data.task: classification" in err.value.hint


@pytest.mark.parametrize("option, value, key", [("task", "classify", "data.task"),
                                                ("categorical", "ordinal", "data.categorical")])
def test_unknown_option_values_list_the_allowed_ones(write_csv, option, value, key):
    with pytest.raises(DataError) as err:
        load_csv(write_csv(MIXED), target="label", **{option: value})
    assert key in err.value.message and repr(value) in err.value.message
    assert "onehot, reject" in err.value.message or "auto, classification, regression" in (
        err.value.message)


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="nope.csv"):
        load_csv(tmp_path / "nope.csv", target="y")
