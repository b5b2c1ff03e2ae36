"""A real ``dlforge serve`` process driven by Triton's own HTTP client (``tritonclient.http``): health,
metadata, JSON and binary tensors both ways, versions and aliases, BYTES texts, and errors that
arrive as InferenceServerException with the server's message and status."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from dlforge.data.text import text_encoding
from dlforge.data.tokenizer import load_tokenizer
from dlforge.models import build
from dlforge.registry import save_artifact
from dlforge.registry.artifact import load_artifact
from tests.serve.conftest import Server, ServeEnv, start_server, stop_server

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402  (after the skip)

X = np.asarray([[0.1, 0.2, 0.3, 0.4], [1.0, -2.0, 3.0, 0.5]], dtype=np.float32)
TEXTS = ["a fine film", "a dull film"]


@pytest.fixture(scope="module")
def triton(module_env: ServeEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, ServeEnv]]:
    """A server on ``module_env`` plus a tiny text model ``review`` (BYTES input)."""
    encoding = text_encoding(load_tokenizer("minilm"), 8)
    torch.manual_seed(0)
    model = build({"arch": "transformer", "vocab_size": encoding["vocab_size"], "dim": 8, "num_heads": 2,
                   "num_layers": 1, "ffn_dim": 8}, input_shape=(8,), num_outputs=2)
    folder: Path = tmp_path_factory.mktemp("triton")
    module_env.registry.register(save_artifact(model, folder / "review", task="classification",
                                               class_names=["no", "yes"], preprocessing={"encoding": encoding}),
                                 "review")
    server = start_server(module_env, folder)
    yield server, module_env
    stop_server(server)


@pytest.fixture(scope="module")
def client(triton) -> Iterator:
    server, env = triton
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    yield client
    client.close()


def _infer(client, headers, model, x, *, binary_in, binary_out, version="", datatype="FP32", outputs=None):
    given = httpclient.InferInput("input", list(x.shape), datatype)
    given.set_data_from_numpy(x, binary_data=binary_in)
    asked = [httpclient.InferRequestedOutput(name, binary_data=binary_out) for name in outputs] if outputs else None
    return client.infer(model, [given], model_version=version, outputs=asked, headers=headers)


def _labels(result) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in result.as_numpy("label")]


def test_health_and_metadata(triton, client):
    _, env = triton
    headers = env.headers()
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    assert client.is_model_ready("iris", headers=headers) and client.is_model_ready("iris", "2", headers=headers)
    assert client.is_model_ready("iris", "candidate", headers=headers)
    assert not client.is_model_ready("iris", "9", headers=headers) and not client.is_model_ready("nope", headers=headers)
    meta = client.get_model_metadata("iris", headers=headers)
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert client.get_model_metadata("review", headers=headers)["inputs"][0]["datatype"] == "BYTES"


@pytest.mark.parametrize(("binary_in", "binary_out"), [(False, False), (True, False), (False, True), (True, True)])
def test_infer_json_and_binary_equal_the_artifact(triton, client, binary_in, binary_out):
    _, env = triton
    for version, want_version in [("", 1), ("2", 2), ("candidate", 2)]:
        result = _infer(client, env.headers(), "iris", X, binary_in=binary_in, binary_out=binary_out, version=version,
                        outputs=["probabilities", "label", "label_index"])
        want = load_artifact(env.dirs[want_version]).predict(torch.from_numpy(X))
        assert_close(torch.from_numpy(result.as_numpy("probabilities").astype(np.float32)), want["probabilities"])
        assert _labels(result) == want["labels"]
        assert result.as_numpy("label_index").tolist() == [env.class_names.index(x) for x in want["labels"]]
        assert result.get_response()["model_version"] == str(want_version)
    # every output by default; FP64 in, as the same numbers
    result = _infer(client, env.headers(), "iris", X.astype(np.float64), binary_in=binary_in, binary_out=binary_out,
                    datatype="FP64")
    assert _labels(result) == load_artifact(env.dirs[1]).predict(torch.from_numpy(X))["labels"]


@pytest.mark.parametrize("binary", [False, True])
def test_bytes_text_input(triton, client, binary):
    server, env = triton
    import httpx

    v1 = httpx.post(f"{server.url}/v1/models/review/predict", json={"inputs": TEXTS}, headers=env.headers()).json()
    result = _infer(client, env.headers(), "review", np.asarray([t.encode() for t in TEXTS], dtype=np.object_),
                    binary_in=binary, binary_out=binary, datatype="BYTES")
    assert _labels(result) == v1["outputs"]
    assert_close(torch.from_numpy(result.as_numpy("probabilities").astype(np.float32)), torch.tensor(v1["probabilities"]))


def test_errors_raise_with_the_message(triton, client):
    _, env = triton
    cases = [({"model": "nope"}, "404", "not served here"),
             ({"version": "9"}, "404", "version 9 of 'iris' is not loaded"),
             ({"x": X[:, :3]}, "400", "expected shape [4], got [3]"),
             ({"x": np.asarray([[0, np.nan, 0, 0]], np.float32)}, "400", "inputs[0].data[1]: not a finite number"),
             ({"outputs": ["logits"]}, "400", "unknown output 'logits'"),
             ({"headers": {"Authorization": "Bearer dlf_nope"}}, "401", "not valid")]
    for change, status, message in cases:
        kwargs = {"model": "iris", "x": X, "version": "", "outputs": None, "headers": env.headers(), **change}
        with pytest.raises(InferenceServerException) as caught:
            _infer(client, kwargs["headers"], kwargs["model"], kwargs["x"], binary_in=True, binary_out=False,
                   version=kwargs["version"], outputs=kwargs["outputs"])
        assert caught.value.status() == status and message in caught.value.message(), change
