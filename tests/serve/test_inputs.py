"""JSON inputs -> model-ready tensors (dlforge.serve.inputs), checked against the artifact's own encoders."""

from __future__ import annotations

import doctest
import importlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.exceptions import RequestValidationError
from torch.testing import assert_close

from dlforge.data.text import encode_text_inputs, text_encoding
from dlforge.data.tokenizer import load_tokenizer
from dlforge.models import build
from dlforge.registry.artifact import Artifact, load_artifact, save_artifact
from dlforge.serve import inputs as inputs_module
from dlforge.serve.inputs import InputSpec, encode_inputs

TABULAR = {
    "encoding": {"kind": "tabular", "columns": ["age", "color"], "categories": {"color": ["blue", "red"]}},
    "standardize": {"mean": [30.0, 0.5, 0.5], "std": [10.0, 0.5, 0.5], "axis": "feature"},
}


def _artifact(folder: Path, spec: dict, shape: tuple[int, ...], preprocessing: dict | None = None) -> Artifact:
    torch.manual_seed(0)
    model = build(spec, input_shape=shape, num_outputs=2)
    return load_artifact(save_artifact(model, folder, task="classification", class_names=["no", "yes"],
                                       preprocessing=preprocessing))


@pytest.fixture
def image(tmp_path: Path) -> Artifact:
    return _artifact(tmp_path / "img", {"arch": "mlp", "hidden": [4]}, (1, 2, 3))


@pytest.fixture
def tabular(tmp_path: Path) -> Artifact:
    return _artifact(tmp_path / "tab", {"arch": "mlp", "hidden": [4]}, (3,), TABULAR)


@pytest.fixture(scope="module")
def text(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    folder = tmp_path_factory.mktemp("text")
    encoding = text_encoding(load_tokenizer("minilm"), 8)
    return _artifact(folder / "txt", {"arch": "transformer", "vocab_size": encoding["vocab_size"], "dim": 8,
                                      "num_heads": 2, "num_layers": 1, "ffn_dim": 8}, (8,), {"encoding": encoding})


def _errors(spec: InputSpec, art: Artifact, inputs: list) -> list[tuple[tuple, str]]:
    with pytest.raises(RequestValidationError) as info:
        encode_inputs(spec, art, inputs)
    return [(tuple(e["loc"]), e["msg"]) for e in info.value.errors()]


@pytest.mark.parametrize("module", ["dlforge.serve.inputs", "dlforge.serve.tensor_checks", "dlforge.serve.v2_infer"])
def test_docstring_examples(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_spec_reads_the_artifact(image: Artifact, tabular: Artifact, text: Artifact) -> None:
    assert InputSpec.of(image) == InputSpec("array", (1, 2, 3), False, None, False, ())
    assert InputSpec.of(tabular) == InputSpec("tabular", (3,), False, None, False, ("age", "color"))
    assert InputSpec.of(text) == InputSpec("text", (8,), True, 30522, True, ())


def test_nested_numbers_pass_unchanged(image: Artifact) -> None:
    x = np.random.default_rng(0).normal(size=(5, 1, 2, 3))
    got = encode_inputs(InputSpec.of(image), image, x.tolist())
    assert got.dtype == torch.float32
    assert_close(got, torch.from_numpy(x).float())  # model-ready: no preprocessing applied


def test_shape_errors_name_the_field(image: Artifact) -> None:
    spec = InputSpec.of(image)
    good = [[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]]
    assert _errors(spec, image, [good, [[[0.0, 1.0], [3.0, 4.0, 5.0]]]]) == [
        (("body", "inputs", 1, 0, 0), "expected shape [3], got [2]")]
    assert _errors(spec, image, [good, good, [[0.0] * 3] * 2]) == [
        (("body", "inputs", 2), "expected shape [1, 2, 3], got [2, 3]")]


def test_non_finite_and_non_numbers_are_refused(image: Artifact) -> None:
    spec = InputSpec.of(image)
    bad = [[[0.0, math.nan, 2.0], [3.0, 4.0, 5.0]], [[[0.0, 1.0, math.inf], [3.0, 4.0, 5.0]]],
           [[[0.0, 1.0, 2.0], [3.0, "4", 5.0]]], [[[0.0, 1.0, True], [3.0, 4.0, 5.0]]],
           [[[0.0, 1.0, 2.0], [3.0, 4.0, 1e39]]], "picture.png", {"a": 1}, None]
    assert _errors(spec, image, bad) == [  # the first problem of each bad item
        (("body", "inputs", 0), "expected shape [1, 2, 3], got [2, 3]"),
        (("body", "inputs", 1, 0, 0, 2), "not a finite number"),
        (("body", "inputs", 2, 0, 1, 1), "expected a number, got a string"),
        (("body", "inputs", 3, 0, 0, 2), "expected a number, got a boolean"),
        (("body", "inputs", 4, 0, 1, 2), "not a finite number (outside the float32 range)"),
        (("body", "inputs", 5), "expected a nested list of numbers of shape [1, 2, 3], got a string"),
        (("body", "inputs", 6), "expected a nested list of numbers of shape [1, 2, 3], got an object"),
        (("body", "inputs", 7), "expected a nested list of numbers of shape [1, 2, 3], got null"),
    ]


def test_at_most_ten_errors_are_listed(image: Artifact) -> None:
    assert len(_errors(InputSpec.of(image), image, ["x"] * 50)) == inputs_module.MAX_ERRORS


def test_tabular_rows_equal_artifact_encode(tabular: Artifact) -> None:
    spec = InputSpec.of(tabular)
    rows = [{"age": 31, "color": "red"}, {"age": "20.5", "color": "blue", "ignored": None}]
    got = encode_inputs(spec, tabular, [rows[0], [0.1, 0.2, 0.3], rows[1]])
    want = tabular.encode(rows)  # (2, 3), standardised with the stored statistics
    assert_close(got[[0, 2]], want)
    # a numeric row is the encoded row before standardisation, as Artifact.encode takes an array
    assert_close(got[1], tabular.encode(np.array([[0.1, 0.2, 0.3]]))[0])


def test_tabular_row_errors_name_the_row(tabular: Artifact) -> None:
    spec = InputSpec.of(tabular)
    errors = _errors(spec, tabular, [{"age": 31, "color": "red"}, {"age": 31, "color": "green"},
                                     {"color": "red"}, {"age": "nan", "color": "red"}, {"age": [1], "color": "red"}])
    assert errors[0] == (("body", "inputs", 4, "age"), "expected a string, a number or null, got a list")
    errors = _errors(spec, tabular, [{"age": 31, "color": "red"}, {"age": 31, "color": "green"},
                                     {"color": "red"}, {"age": "nan", "color": "red"}])
    assert [loc for loc, _ in errors] == [("body", "inputs", i) for i in (1, 2, 3)]
    assert "'green'" in errors[0][1] and "blue" in errors[0][1]  # the known categories are the hint
    assert "missing column(s)" in errors[1][1] and "age" in errors[1][1]
    assert "the value 'nan'" in errors[2][1]


def test_text_strings_equal_the_stored_tokenizer(text: Artifact) -> None:
    spec = InputSpec.of(text)
    ids = [101, 7592, 102, 0, 0, 0, 0, 0]
    got = encode_inputs(spec, text, ["a fine film", ids, "hello world"])
    assert got.dtype == torch.int64
    want = encode_text_inputs(["a fine film", "hello world"], text.preprocessing)
    assert torch.equal(got[[0, 2]], want)
    assert got[1].tolist() == ids
    assert torch.equal(encode_inputs(spec, text, [ids, [float(i) for i in ids]]), torch.tensor([ids, ids]))


def test_token_id_errors(text: Artifact) -> None:
    spec = InputSpec.of(text)
    assert _errors(spec, text, [[101, 5, 102, 0, 0, 0, 0, 30522], [1, 2.5, 0, 0, 0, 0, 0, 0], [1, 2, 3], 7]) == [
        (("body", "inputs", 0, 7), "token id 30522 is outside the vocabulary [0, 30522)"),
        (("body", "inputs", 1, 1), "expected an integer token id, got 2.5"),
        (("body", "inputs", 2), "expected shape [8], got [3]"),
        (("body", "inputs", 3), "expected a string or a list of 8 integer token ids, got a number"),
    ]
    assert _errors(spec, text, [[-1] * 8]) == [(("body", "inputs", 0, 0), "token id -1 is outside the vocabulary [0, 30522)")]


def test_one_number_per_sample(tmp_path: Path) -> None:
    art = _artifact(tmp_path / "one", {"arch": "mlp", "hidden": [2]}, (1,))
    spec = InputSpec.of(art)
    assert_close(encode_inputs(spec, art, [1.5, [2.0], -3]), torch.tensor([[1.5], [2.0], [-3.0]]))
    assert _errors(spec, art, [1.0, math.nan]) == [(("body", "inputs", 1), "not a finite number")]
