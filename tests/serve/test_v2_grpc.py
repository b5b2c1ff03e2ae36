"""A real ``dlforge serve --grpc-port`` process driven by Triton's own gRPC client (``tritonclient.grpc``):
health, model readiness by version and alias, metadata, FP32 and BYTES inference equal to REST ``/v2``'s
answers, and errors as gRPC status codes with REST's messages.

This process never imports ``dlforge.serve.grpc_v2.server``: its generated protobuf code and
Triton's client both claim the names ``inference.*`` (see ``dlforge.serve.grpc_v2``)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from torch.testing import assert_close
from typer.testing import CliRunner

from dlforge.data.text import text_encoding
from dlforge.data.tokenizer import load_tokenizer
from dlforge.errors import ConfigError
from dlforge.models import build
from dlforge.registry import save_artifact
from tests.serve.conftest import Server, ServeEnv, free_port, start_server, stop_server

grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402  (after the skip)

X = np.asarray([[0.1, 0.2, 0.3, 0.4], [1.0, -2.0, 3.0, 0.5]], dtype=np.float32)
TEXTS = ["a fine film", "a dull film"]


@pytest.fixture(scope="module")
def served(module_env: ServeEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, ServeEnv, str]]:
    """(server, env, gRPC address): ``module_env`` plus a tiny text model ``review`` (BYTES input)."""
    encoding = text_encoding(load_tokenizer("minilm"), 8)
    torch.manual_seed(0)
    model = build({"arch": "transformer", "vocab_size": encoding["vocab_size"], "dim": 8, "num_heads": 2,
                   "num_layers": 1, "ffn_dim": 8}, input_shape=(8,), num_outputs=2)
    folder: Path = tmp_path_factory.mktemp("grpc")
    module_env.registry.register(save_artifact(model, folder / "review", task="classification",
                                               class_names=["no", "yes"], preprocessing={"encoding": encoding}),
                                 "review")
    port = free_port()
    server = start_server(module_env, folder, "--grpc-port", str(port))
    yield server, module_env, f"127.0.0.1:{port}"
    stop_server(server)


@pytest.fixture(scope="module")
def client(served) -> Iterator:
    client = grpcclient.InferenceServerClient(served[2])
    yield client
    client.close()


def _key(env: ServeEnv) -> dict[str, str]:
    return {"authorization": f"Bearer {env.predict_key}"}  # gRPC metadata keys are lower case


def _infer(client, headers, model, x, *, version="", datatype="FP32"):
    given = grpcclient.InferInput("input", list(x.shape), datatype)
    given.set_data_from_numpy(x)
    return client.infer(model, [given], model_version=version, headers=headers)


def _rest(server: Server, env: ServeEnv, model: str, data: list, shape: list[int], datatype: str, version: str = ""):
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    body = {"inputs": [{"name": "input", "shape": shape, "datatype": datatype, "data": data}]}
    answer = httpx.post(server.url + path, json=body, headers=env.headers())
    assert answer.status_code == 200, answer.text
    return answer.json()


def _output(rest: dict, name: str) -> list:
    return next(o for o in rest["outputs"] if o["name"] == name)["data"]


def test_health_readiness_and_metadata(served, client):
    server, env, _ = served
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata().extensions == httpx.get(f"{server.url}/v2").json()["extensions"]
    for version in ("", "1", "2", "candidate", "production"):
        assert client.is_model_ready("iris", version, headers=_key(env)), version
    for name in ("iris", "review"):
        meta = client.get_model_metadata(name, headers=_key(env))
        rest = httpx.get(f"{server.url}/v2/models/{name}", headers=env.headers()).json()
        got = [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in (*meta.inputs, *meta.outputs)]
        assert got == rest["inputs"] + rest["outputs"] and list(meta.versions) == rest["versions"]
    assert client.get_model_metadata("iris", "2", headers=_key(env)).versions == ["1", "2"]


def test_fp32_infer_equals_rest(served, client):
    server, env, _ = served
    for version, want_version in [("", "1"), ("2", "2"), ("candidate", "2")]:
        result = _infer(client, _key(env), "iris", X, version=version)
        rest = _rest(server, env, "iris", X.ravel().tolist(), list(X.shape), "FP32", version)
        assert result.get_response().model_version == rest["model_version"] == want_version
        assert_close(torch.tensor(result.as_numpy("probabilities")),
                     torch.tensor(_output(rest, "probabilities")).reshape(len(X), -1))
        assert [v.decode() for v in result.as_numpy("label")] == _output(rest, "label")
        assert result.as_numpy("label_index").tolist() == _output(rest, "label_index")
        assert result.get_response().parameters["variant"].string_param == rest["parameters"]["variant"]


def test_bytes_text_infer_equals_rest(served, client):
    server, env, _ = served
    result = _infer(client, _key(env), "review", np.asarray([t.encode() for t in TEXTS], dtype=np.object_),
                    datatype="BYTES")
    rest = _rest(server, env, "review", TEXTS, [len(TEXTS)], "BYTES")
    assert [v.decode() for v in result.as_numpy("label")] == _output(rest, "label")
    assert_close(torch.tensor(result.as_numpy("probabilities")),
                 torch.tensor(_output(rest, "probabilities")).reshape(len(TEXTS), -1))


def test_typed_contents_answer_as_raw_contents(served, client):
    """The protocol's other tensor form (``contents.fp32_contents``, ``bytes_contents``), sent with Triton's
    generated stub: the same answers as the raw bytes tritonclient sends."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    server, env, address = served
    tensor = service_pb2.ModelInferRequest.InferInputTensor
    with grpc.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for model, given, raw in [
                ("iris", tensor(name="input", datatype="FP32", shape=list(X.shape),
                                contents=service_pb2.InferTensorContents(fp32_contents=X.ravel().tolist())),
                 _infer(client, _key(env), "iris", X)),
                ("review", tensor(name="input", datatype="BYTES", shape=[len(TEXTS)],
                                  contents=service_pb2.InferTensorContents(bytes_contents=[t.encode() for t in TEXTS])),
                 _infer(client, _key(env), "review", np.asarray([t.encode() for t in TEXTS], dtype=np.object_),
                        datatype="BYTES"))]:
            answer = stub.ModelInfer(service_pb2.ModelInferRequest(model_name=model, inputs=[given]),
                                     metadata=tuple(_key(env).items()))
            names = [o.name for o in answer.outputs]
            assert answer.raw_output_contents[names.index("probabilities")] == \
                raw.get_response().raw_output_contents[names.index("probabilities")]
        both = service_pb2.ModelInferRequest(model_name="iris", inputs=[given, given], raw_input_contents=[b"1234"])
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(both, metadata=tuple(_key(env).items()))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "raw_input_contents: 1 entries for 2 inputs" in caught.value.details()


def test_errors_are_status_codes_with_rest_messages(served, client):
    _, env, _ = served
    cases = [({"model": "nope"}, "NOT_FOUND", "not served here"),
             ({"version": "9"}, "NOT_FOUND", "version 9 of 'iris' is not loaded"),
             ({"version": "nightly"}, "NOT_FOUND", "nightly"),
             ({"x": X[:, :3]}, "INVALID_ARGUMENT", "expected shape [4], got [3]"),
             ({"x": np.asarray([[0, np.nan, 0, 0]], np.float32)}, "INVALID_ARGUMENT", "not a finite number"),
             ({"headers": {}}, "UNAUTHENTICATED", "needs an API key"),
             ({"headers": {"authorization": "Bearer dlf_nope"}}, "UNAUTHENTICATED", "not valid")]
    for change, code, message in cases:
        kwargs = {"model": "iris", "x": X, "version": "", "headers": _key(env), **change}
        with pytest.raises(InferenceServerException) as caught:
            _infer(client, kwargs["headers"], kwargs["model"], kwargs["x"], version=kwargs["version"])
        assert caught.value.status() == f"StatusCode.{code}" and message in caught.value.message(), change
    for name, version, headers, code in [("nope", "", _key(env), "NOT_FOUND"), ("iris", "9", _key(env), "NOT_FOUND"),
                                         ("iris", "", {}, "UNAUTHENTICATED")]:
        with pytest.raises(InferenceServerException) as caught:
            client.is_model_ready(name, version, headers=headers)
        assert caught.value.status() == f"StatusCode.{code}"


def test_grpc_port_without_grpcio_or_on_the_http_port_is_a_config_error(monkeypatch, tmp_path):
    from dlforge.cli import app
    from dlforge.serve.grpc_v2 import require_grpc

    require_grpc()  # installed here: no error
    same = CliRunner().invoke(app, ["serve", "--registry", f"sqlite:///{tmp_path / 'r.db'}", "--port", "8001",
                                    "--grpc-port", "8001"])
    assert same.exit_code == 2 and "also the HTTP --port" in same.output
    monkeypatch.setitem(sys.modules, "grpc", None)  # `import grpc` now raises ImportError
    with pytest.raises(ConfigError, match="grpcio") as caught:
        require_grpc()
    assert "dlforge[grpc]" in caught.value.hint
    result = CliRunner().invoke(app, ["serve", "--registry", f"sqlite:///{tmp_path / 'r.db'}", "--grpc-port", "8001"])
    assert result.exit_code == 2 and "dlforge[grpc]" in result.output


def test_the_app_leaves_the_generated_code_unloaded():
    import dlforge.serve.main  # noqa: F401  (what every server test imports)

    assert "dlforge.serve.grpc_v2.grpc_predict_v2_pb2" not in sys.modules  # Triton's client could not load beside it


def test_docstring_examples_in_a_process_of_their_own():
    """The server module's examples (rest_body, infer_response) run where Triton's client is not loaded."""
    import subprocess

    code = ("import doctest, dlforge.serve.grpc_v2 as g, dlforge.serve.grpc_v2.server as s\n"
            "r = [doctest.testmod(m, optionflags=doctest.ELLIPSIS) for m in (g, s)]\n"
            "assert all(x.failed == 0 for x in r) and r[1].attempted >= 4, r")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
