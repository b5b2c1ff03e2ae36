"""Text tables: built-in sets, CSV/JSONL loading and errors, text bundles and their encoding."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from dlforge.data import load_builtin
from dlforge.data.preprocess import encode_array, prepare, sample_shape
from dlforge.data.text import (
    TextTable,
    encode_text_inputs,
    load_text_table,
    stdlib_docs,
    text_builtin_names,
    text_bundle,
)
from dlforge.data.tokenizer import encode_texts, load_tokenizer
from dlforge.errors import DataError


@pytest.fixture(scope="module")
def minilm() -> Tokenizer:
    return load_tokenizer("minilm")


@pytest.fixture(scope="module")
def docs() -> TextTable:
    return load_text_table("stdlib_docs")


@pytest.fixture
def write_jsonl(tmp_path):
    def write(lines: list[str], name: str = "data.jsonl"):
        path = tmp_path / name
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    return write


# ----------------------------------------------------------------------------- built-ins
def test_builtin_names():
    assert text_builtin_names() == ["stdlib_docs", "pydoc_topics"]


def test_stdlib_docs_is_a_real_six_class_task(docs):
    assert docs.class_names == ["collections", "datetime", "logging", "math", "os", "re"]
    counts = np.bincount(docs.labels, minlength=6)
    assert counts.min() >= 25 and len(docs) == counts.sum() > 300
    assert docs.labels.dtype == np.int64
    assert len(set(docs.texts)) == len(docs.texts)  # no exact duplicates
    assert all(len(t.split()) >= 5 and t == " ".join(t.split()) for t in docs.texts)


def test_stdlib_docs_texts_do_not_name_their_module(docs):
    for text, label in zip(docs.texts, docs.labels):
        module = docs.class_names[label]
        assert not re.search(rf"\b{module}\b", text, flags=re.IGNORECASE), (module, text)


def test_stdlib_docs_texts_are_the_modules_docstrings(docs):
    import math

    first = " ".join(math.sqrt.__doc__.split("\n\n")[0].split())
    index = docs.texts.index(first)
    assert docs.class_names[docs.labels[index]] == "math"


def test_stdlib_docs_is_deterministic(docs):
    again = stdlib_docs()
    assert again.texts == docs.texts and np.array_equal(again.labels, docs.labels)


def test_pydoc_topics_is_unlabelled_prose():
    table = load_text_table("pydoc_topics")
    assert table.labels is None and table.class_names is None and len(table) > 500
    assert len(set(table.texts)) == len(table)
    assert not any(">>>" in t or "::=" in t for t in table.texts)


def test_label_column_none_drops_builtin_labels():
    table = load_text_table("stdlib_docs", label_column=None)
    assert table.labels is None and len(table) > 300


def test_subset_keeps_texts_and_labels_together(docs):
    part = docs.subset([5, 0])
    assert part.texts == [docs.texts[5], docs.texts[0]]
    assert list(part.labels) == [docs.labels[5], docs.labels[0]]


# ----------------------------------------------------------------------------- files
def test_csv_happy_path(write_csv):
    path = write_csv('''
        text,label,source
        "A fine, moving film",pos,a
        dull and slow,neg,b

        "He said ""wow""",pos,c
    ''')
    table = load_text_table(path)
    assert table.name == "data" and table.class_names == ["neg", "pos"]
    assert table.texts == ["A fine, moving film", "dull and slow", 'He said "wow"']
    assert table.labels.tolist() == [1, 0, 1]
    unlabelled = load_text_table(path, label_column=None)
    assert unlabelled.labels is None and unlabelled.texts == table.texts


def test_integer_labels_sort_numerically(write_csv):
    path = write_csv("review,stars\ngood,10\nok,2\nbad,1\n")
    table = load_text_table(path, text_column="review", label_column="stars")
    assert table.class_names == ["1", "2", "10"] and table.labels.tolist() == [2, 1, 0]


def test_jsonl_happy_path(write_jsonl):
    path = write_jsonl(['{"text": "good film", "label": "pos"}', "",
                        '{"text": "  bad film ", "label": "neg", "id": 3}',
                        '{"text": "fine", "label": "pos"}'])
    table = load_text_table(path)
    assert table.texts == ["good film", "bad film", "fine"]
    assert table.class_names == ["neg", "pos"] and table.labels.tolist() == [1, 0, 1]


def test_jsonl_numbers_as_labels(write_jsonl):
    path = write_jsonl(['{"text": "a", "label": 1}', '{"text": "b", "label": 0.0}',
                        '{"text": "c", "label": "1"}'])
    table = load_text_table(path)
    assert table.class_names == ["0", "1"] and table.labels.tolist() == [1, 0, 1]


@pytest.mark.parametrize("name", ["missing.csv", "missing.jsonl"])
def test_missing_file(tmp_path, name):
    with pytest.raises(DataError, match=f"{name} not found") as err:
        load_text_table(tmp_path / name)
    assert "data.source" in err.value.hint


def test_unknown_source(tmp_path):
    with pytest.raises(DataError, match="neither a built-in text set") as err:
        load_text_table("stdlib_dogs")
    assert "data.source" in err.value.hint and "stdlib_docs" in err.value.hint


def test_missing_text_column_lists_columns(write_csv, write_jsonl):
    with pytest.raises(DataError, match=r"no column 'text'; its columns are 'body', 'label'"
                       ) as err:
        load_text_table(write_csv("body,label\nhi,a\nho,b\n"))
    assert "data.text_column" in err.value.hint
    with pytest.raises(DataError, match=r"line 2 has no 'text' key; its keys are 'body'") as err:
        load_text_table(write_jsonl(['{"text": "a", "label": "x"}', '{"body": "b", "label": "y"}']))
    assert "data.text_column" in err.value.hint


def test_missing_label_column(write_csv, write_jsonl):
    with pytest.raises(DataError, match=r"no column 'label'; its columns are 'text'") as err:
        load_text_table(write_csv("text\nhi\nho\n"))
    assert "data.target" in err.value.hint
    with pytest.raises(DataError, match="line 1 has no 'label' key") as err:
        load_text_table(write_jsonl(['{"text": "a"}']))
    assert "data.target" in err.value.hint


def test_empty_text_names_the_row_or_line(write_csv, write_jsonl):
    with pytest.raises(DataError, match=r"text in column 'text' is empty at row 3 \(row 1 is "
                                        "the header\\)") as err:
        load_text_table(write_csv("text,label\nhi,a\n  ,b\n"))
    assert "data.text_column" in err.value.hint
    with pytest.raises(DataError, match="empty at line 2"):
        load_text_table(write_jsonl(['{"text": "a", "label": "x"}', '{"text": "", "label": "y"}']))


def test_empty_label_names_the_row_or_line(write_csv, write_jsonl):
    with pytest.raises(DataError, match="label in column 'label' is empty at row 2") as err:
        load_text_table(write_csv("text,label\nhi,\nho,b\n"))
    assert "data.target" in err.value.hint
    with pytest.raises(DataError, match="label in column 'label' is empty at line 1"):
        load_text_table(write_jsonl(['{"text": "a", "label": null}', '{"text": "b", "label": 1}']))


def test_malformed_json_line(write_jsonl):
    with pytest.raises(DataError, match=r"line 3 is not valid JSON \(Expecting") as err:
        load_text_table(write_jsonl(['{"text": "a", "label": "x"}', "",
                                     '{"text": "b", "label": }']))
    assert "one JSON object per line" in err.value.hint
    with pytest.raises(DataError, match="line 1 holds a list, not a JSON object"):
        load_text_table(write_jsonl(['["a", "x"]']))
    with pytest.raises(DataError, match="line 1: 'text' holds a int, not a string") as err:
        load_text_table(write_jsonl(['{"text": 5, "label": "x"}']))
    assert "data.text_column" in err.value.hint


def test_single_class(write_csv):
    with pytest.raises(DataError, match=r"label column 'label' has a single class \('pos'\)"
                       ) as err:
        load_text_table(write_csv("text,label\nhi,pos\nho,pos\n"))
    assert "data.target" in err.value.hint


def test_empty_files(write_csv, write_jsonl):
    with pytest.raises(DataError, match="is empty"):
        load_text_table(write_csv(""))
    with pytest.raises(DataError, match="header row but no data rows"):
        load_text_table(write_csv("text,label\n"))
    with pytest.raises(DataError, match="data.jsonl is empty") as err:
        load_text_table(write_jsonl(["", "  "]))
    assert "one JSON object per line" in err.value.hint


# ----------------------------------------------------------------------------- tensors
@pytest.fixture(scope="module")
def bundle(docs, minilm):
    return text_bundle(docs, minilm, max_len=24)


def test_text_bundle_holds_int64_ids_and_the_tokenizer(bundle, docs, minilm):
    assert bundle.kind == "text" and bundle.task == "classification"
    assert bundle.x.dtype == np.int64 and bundle.x.shape == (len(docs), 24)
    assert bundle.class_names == docs.class_names and bundle.feature_names is None
    np.testing.assert_array_equal(bundle.x, encode_texts(minilm, docs.texts, 24))
    encoding = bundle.encoding
    assert encoding["kind"] == "text" and encoding["max_len"] == 24 and encoding["pad_id"] == 0
    assert encoding["vocab_size"] == 30522
    rebuilt = Tokenizer.from_str(encoding["tokenizer"])
    assert rebuilt.encode(docs.texts[0]).ids == minilm.encode(docs.texts[0]).ids
    assert sample_shape(encoding) == (24,) and bundle.input_shape == (24,)


def test_prepare_gives_int64_tensors_without_standardising(bundle):
    prepared = prepare(bundle, val=0.2, test=0.2, seed=0, standardize=True)
    assert prepared.preprocessing["standardize"] is None
    assert prepared.kind == "text" and prepared.input_shape == (24,)
    x, y = prepared.train.tensors
    assert x.dtype == torch.int64 and y.dtype == torch.int64
    # Every prepared row is a bundle row, unchanged.
    rows = {tuple(r) for r in bundle.x.tolist()}
    assert all(tuple(r) in rows for r in x.tolist())
    assert len(prepared.train) + len(prepared.val) + len(prepared.test) == len(bundle)


def test_prepare_still_standardises_other_kinds():
    prepared = prepare(load_builtin("iris"), val=0.2, test=0.2)
    assert prepared.preprocessing["standardize"] is not None
    assert prepared.train.tensors[0].dtype == torch.float32


def test_encode_text_inputs_round_trip(bundle, docs):
    prepared = prepare(bundle, val=0.2, test=0.2, seed=0)
    preprocessing = json.loads(json.dumps(prepared.preprocessing))  # as saved with a model
    ids = encode_text_inputs(docs.texts, preprocessing)
    assert ids.dtype == torch.int64
    torch.testing.assert_close(ids, torch.from_numpy(bundle.x))
    one = encode_text_inputs(docs.texts[3], preprocessing)
    torch.testing.assert_close(one, torch.from_numpy(bundle.x[3:4]))


def test_encode_text_inputs_errors(bundle):
    preprocessing = {"encoding": bundle.encoding, "standardize": None}
    with pytest.raises(DataError, match="non-empty list of strings"):
        encode_text_inputs([], preprocessing)
    with pytest.raises(DataError, match="non-empty list of strings"):
        encode_text_inputs(["ok", None], preprocessing)
    tabular = {"encoding": {"kind": "tabular", "columns": ["a"], "categories": {}}}
    with pytest.raises(DataError, match="takes tabular input, not text input"):
        encode_text_inputs(["hello"], tabular)


def test_encode_array_keeps_text_ids_int64_and_checks_them(bundle):
    preprocessing = {"encoding": bundle.encoding, "standardize": None}
    ids = encode_array(bundle.x[:5], preprocessing)
    assert ids.dtype == torch.int64
    torch.testing.assert_close(ids, torch.from_numpy(bundle.x[:5]))
    assert encode_array(torch.from_numpy(bundle.x[0]), preprocessing).shape == (1, 24)
    with pytest.raises(DataError, match="do not match the model's length 24"):
        encode_array(bundle.x[:, :10], preprocessing)
    with pytest.raises(DataError, match="outside the vocabulary of 30522"):
        encode_array(bundle.x[:2] + 30522, preprocessing)
    with pytest.raises(DataError, match="must be integers"):
        encode_array(bundle.x[:2] + 0.5, preprocessing)


def test_text_bundle_needs_labels(minilm):
    table = TextTable("raw", ["a b", "c d"], None, None)
    with pytest.raises(DataError, match="has no labels") as err:
        text_bundle(table, minilm, max_len=8)
    assert "data.target" in err.value.hint
