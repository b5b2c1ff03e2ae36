"""Predict requests are strict about numbers and text, and bounded in tokens: one test per row
of the hardening issue (booleans, overflow and non-finite outputs, invalid Unicode, tokens)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from fastapi.exceptions import RequestValidationError
from fastapi.testclient import TestClient

from dlforge.data.text import text_encoding
from dlforge.data.tokenizer import load_tokenizer
from dlforge.models import build
from dlforge.registry import save_artifact
from dlforge.serve.inputs import InputSpec, encode_inputs
from dlforge.serve.main import create_app
from tests.serve.conftest import ServeEnv

TABLE = {"encoding": {"kind": "tabular", "columns": ["age", "color"], "categories": {"color": ["blue", "red"]}},
         "standardize": {"mean": [30.0, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "axis": "feature"}}
IMAGE = {"encoding": {"kind": "image", "size": [2, 2], "mode": "L", "scale": 1 / 255},
         "standardize": {"mean": [0.5], "std": [0.25], "axis": "channel"}}
MAX_LEN = 8


def save_model(folder: Path, spec: dict, shape: tuple[int, ...], preprocessing: dict | None = None,
               ones: bool = False, task: str = "classification") -> Path:
    """A small artifact of ``spec`` (every weight 1 with ``ones``) for the input tests."""
    torch.manual_seed(0)
    model = build(spec, input_shape=shape, num_outputs=2)
    if ones:  # every weight 1: huge but finite inputs overflow inside the model, and softmax gives NaN
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(1.0)
    names = ["no", "yes"] if task == "classification" else None
    return save_artifact(model, folder, task=task, class_names=names, preprocessing=preprocessing)


def input_models(folder: Path) -> list[tuple[str, Path]]:
    """(name, artifact) of a table, an image, a series (2, 3), an all-ones MLP and a text model."""
    mlp = {"arch": "mlp", "hidden": [4]}
    encoding = text_encoding(load_tokenizer("minilm"), MAX_LEN)
    text = {"arch": "transformer", "vocab_size": encoding["vocab_size"], "dim": 8, "num_heads": 2,
            "num_layers": 1, "ffn_dim": 8}
    return [("people", save_model(folder / "people", mlp, (3,), TABLE)),
            ("pixels", save_model(folder / "pixels", mlp, (1, 2, 2), IMAGE)),
            ("series", save_model(folder / "series", mlp, (2, 3))),
            ("ones", save_model(folder / "ones", mlp, (4,), ones=True)),
            ("review", save_model(folder / "review", text, (MAX_LEN,), {"encoding": encoding}))]


@pytest.fixture(scope="module")
def env(module_env: ServeEnv, tmp_path_factory: pytest.TempPathFactory) -> ServeEnv:
    """``module_env`` plus a table, an image, a series (2, 3), an all-ones MLP and a text model."""
    for name, path in input_models(tmp_path_factory.mktemp("strict")):
        module_env.registry.register(path, name)
    return module_env


@contextmanager
def _client(env: ServeEnv, **settings) -> Iterator[TestClient]:
    with TestClient(create_app(env.settings(**settings)), raise_server_exceptions=False) as client:
        client.headers.update(env.headers())
        yield client


@pytest.fixture(scope="module")
def client(env: ServeEnv) -> Iterator[TestClient]:
    with _client(env) as test_client:
        yield test_client


def _predict(client: TestClient, name: str, inputs: list):
    return client.post(f"/v1/models/{name}/predict", json={"inputs": inputs})


def _raw(client: TestClient, path: str, body: str):
    """POST a JSON text as written: ``json=`` cannot send a lone surrogate escape."""
    return client.post(path, content=body.encode("ascii"), headers={"content-type": "application/json"})


def _paths(r) -> list[str]:
    assert r.status_code == 422, r.text
    return [f["path"] for f in r.json()["error"]["fields"]]


def test_a_boolean_anywhere_in_numbers_is_a_422_naming_the_field(client):
    # numpy reads true as 1: before, each of these was answered 200 (only all-boolean samples were refused)
    assert _paths(_predict(client, "series", [[[1, 2, 3], [4, 5, 6]], [[1, 2, True], [4, 5, 6]]])) == [
        "body.inputs.1.0.2"]
    assert _paths(_predict(client, "series", [[[1.5, 2, 3], [4, 5, False]]])) == ["body.inputs.0.1.2"]
    assert _paths(_predict(client, "people", [[1, True, 0]])) == ["body.inputs.0.1"]
    assert _paths(_predict(client, "people", [{"age": True, "color": "red"}])) == ["body.inputs.0.age"]
    assert _paths(_predict(client, "pixels", [[[0, 255], [True, 9]]])) == ["body.inputs.0.1.0"]
    r = _predict(client, "review", [[101, True, 102, 0, 0, 0, 0, 0]])
    assert _paths(r) == ["body.inputs.0.1"] and "got a boolean" in r.text
    assert _predict(client, "series", [[[1, 2, 3], [4, 5, 6]]]).status_code == 200  # numbers still pass


def test_overflow_and_non_finite_outputs_are_a_422_never_null_numbers(client):
    # 3e38 standardised by a std of 0.5 overflows float32: the cell or column is named
    assert _paths(_predict(client, "people", [[1.0, 0, 1], [1.0, 3e38, 1]])) == ["body.inputs.1.1"]
    assert _paths(_predict(client, "people", [{"age": 1, "color": "red"}, {"age": -3e38, "color": "red"}])) == [
        "body.inputs.1.age"]
    # Finite inputs, but the model overflows: before, a 200 with outputs ["no"] and probabilities [null, null].
    r = _predict(client, "ones", [[1.0] * 4, [3e38] * 4])
    assert _paths(r) == ["body.inputs.1"] and "non-finite output" in r.text
    assert _predict(client, "ones", [[1.0] * 4]).status_code == 200
    # numpy's "overflow encountered in divide" is checked, not printed in the server's log
    model = client.app.state.pool.loaded("people")[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RequestValidationError, match="overflows float32"):
            encode_inputs(InputSpec.of(model.artifact), model.artifact, [[3e38, 0.0, 1.0]] * 40)


def test_invalid_unicode_is_a_422_and_odd_text_never_a_500(client):
    # a lone surrogate: before, a 500 (a TypeError in the tokenizer; in a table row, the echo broke the JSON)
    r = _raw(client, "/v1/models/review/predict", '{"inputs": ["fine", "bad \\ud800 text", "x\\udc00"]}')
    assert _paths(r) == ["body.inputs.1", "body.inputs.2"] and "lone surrogate U+D800" in r.text
    r = _raw(client, "/v1/models/people/predict", '{"inputs": [{"age": 1, "color": "\\ud800"}]}')
    assert _paths(r) == ["body.inputs.0.color"]
    r = _raw(client, "/v1/models/people/predict", '{"inputs": [{"age": 1, "color": "red", "\\udfff": 1}]}')
    assert _paths(r) == ["body.inputs.0"]  # a bad column name is not echoed in the path
    request_id = _predict(client, "iris", [[0, 0, 0, 0]]).json()["request_id"]
    r = _raw(client, "/v1/models/iris/feedback", f'{{"request_id": "{request_id}", "label": "\\ud800"}}')
    assert r.status_code == 422 and "lone surrogate" in r.text
    # NUL, control characters, a long text and an unknown odd category are answered or refused, never a 500
    for text in ["a\x00b", "\x1b[31m\u202e", "word " * 150_000, "x" * 500_000, "\U0001F600" * 1000]:
        assert _predict(client, "review", [text]).status_code == 200
    assert _predict(client, "people", [{"age": 1, "color": "\x00" * 1000}]).status_code == 422


def test_tokens_per_request_are_capped_and_max_inputs_holds_for_every_form(env):
    with _client(env, max_tokens=20, max_inputs=3) as client:
        two = ["a fine film", "one two three four five six"]  # 5 + 8 tokens after truncation to MAX_LEN
        assert _predict(client, "review", two).status_code == 200
        r = _predict(client, "review", [*two, "a dull film"])  # 5 + 8 + 5 = 18: still under the cap
        assert r.status_code == 200, r.text
        r = _predict(client, "review", [*two, "one two three four five six"])  # 21 tokens
        assert r.status_code == 413, r.text
        error = r.json()["error"]
        assert "21 text tokens" in error["message"] and "cap of 20" in error["message"]
        assert "at most 2 items" in error["hint"]
        ids = [101, 2028, 2048, 2093, 2176, 2274, 2416, 102]  # token-id lists count the same way
        assert _predict(client, "review", [ids, ids, ids[:5] + [0, 0, 0]]).status_code == 413
        for name, item in [("review", "x"), ("people", {"age": 1, "color": "red"}), ("series", [[0] * 3] * 2),
                           ("pixels", {"b64": ""})]:
            r = _predict(client, name, [item] * 4)
            assert _paths(r) == ["body.inputs"] and "at most 3 inputs" in r.text
