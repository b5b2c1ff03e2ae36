"""The Open Inference Protocol (KServe V2) routes over TestClient: every route, JSON and binary tensors,
BYTES texts, versions and aliases, the traffic split, the v1 refusals as V2 error objects, and the
request/response objects checked against a JSON schema written from the protocol's specification."""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator

import jsonschema
import numpy as np
import orjson
import pytest
import torch
from fastapi.testclient import TestClient
from torch.testing import assert_close

from dlforge.registry.artifact import load_artifact
from dlforge.serve.main import create_app
from dlforge.serve.routing import TrafficConfig, choose_variant
from dlforge.serve.v2_codec import InferRequest, InferResponse, decode_request
from tests.serve.conftest import ServeEnv
from tests.serve.test_segmentation_serving import save_tiny_segmenter
from tests.serve.test_strict_inputs import input_models, save_model

X = [[0.1, 0.2, 0.3, 0.4], [1.0, -2.0, 3.0, 0.5]]
HEADER = "Inference-Header-Content-Length"

# The protocol's $inference_request / $inference_response / metadata objects, written from the
# specification (kserve open-inference-protocol, inference_rest.md and the binary tensor extension).
_PARAMS = {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}}
_DATATYPE = {"enum": ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16",
                      "FP32", "FP64", "BYTES", "BF16"]}
_SHAPE = {"type": "array", "items": {"type": "integer"}}
_TENSOR = {"type": "object", "required": ["name", "shape", "datatype"], "additionalProperties": False,
           "properties": {"name": {"type": "string"}, "shape": _SHAPE, "datatype": _DATATYPE,
                          "parameters": _PARAMS, "data": {"type": "array"}}}
REQUEST_SCHEMA = {"type": "object", "required": ["inputs"], "additionalProperties": False, "properties": {
    "id": {"type": "string"}, "parameters": _PARAMS, "inputs": {"type": "array", "items": _TENSOR, "minItems": 1},
    "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "additionalProperties": False,
                                           "properties": {"name": {"type": "string"}, "parameters": _PARAMS}}}}}
RESPONSE_SCHEMA = {"type": "object", "required": ["model_name", "outputs"], "additionalProperties": False,
                   "properties": {"model_name": {"type": "string"}, "model_version": {"type": "string"},
                                  "id": {"type": "string"}, "parameters": _PARAMS,
                                  "outputs": {"type": "array", "items": _TENSOR}}}
_META_TENSOR = {"type": "object", "required": ["name", "datatype", "shape"], "additionalProperties": False,
                "properties": {"name": {"type": "string"}, "datatype": _DATATYPE, "shape": _SHAPE}}
MODEL_META_SCHEMA = {"type": "object", "required": ["name", "platform", "inputs", "outputs"],
                     "additionalProperties": False, "properties": {
                         "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
                         "platform": {"type": "string"}, "inputs": {"type": "array", "items": _META_TENSOR},
                         "outputs": {"type": "array", "items": _META_TENSOR}}}
SERVER_META_SCHEMA = {"type": "object", "required": ["name", "version", "extensions"], "additionalProperties": False,
                      "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                                     "extensions": {"type": "array", "items": {"type": "string"}}}}
ERROR_SCHEMA = {"type": "object", "required": ["error"], "additionalProperties": False,
                "properties": {"error": {"type": "string"}}}


@pytest.fixture(scope="module")
def env(module_env: ServeEnv, tmp_path_factory: pytest.TempPathFactory) -> ServeEnv:
    """``module_env`` (iris v1/v2) plus a table, an image, a series, an all-ones MLP, a text, a regression and a
    segmentation model."""
    folder = tmp_path_factory.mktemp("v2")
    for name, path in [*input_models(folder),
                       ("price", save_model(folder / "price", {"arch": "mlp", "hidden": [4]}, (4,), task="regression")),
                       ("nuclei", save_tiny_segmenter(folder / "nuclei"))]:
        module_env.registry.register(path, name)
    return module_env


def _client(env: ServeEnv, **settings) -> TestClient:
    client = TestClient(create_app(env.settings(**settings)), raise_server_exceptions=False)
    client.headers.update(env.headers())
    return client


@pytest.fixture(scope="module")
def client(env: ServeEnv) -> Iterator[TestClient]:
    with _client(env) as test_client:
        yield test_client


def _tensor(data, shape, datatype="FP32", name="input") -> dict:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def _infer(client, model, *tensors, path="", **extra):
    return client.post(f"/v2/models/{model}{path}/infer", json={"inputs": list(tensors), **extra})


def _binary_body(header: dict, chunks: list[bytes]) -> tuple[bytes, dict[str, str]]:
    head = orjson.dumps(header)
    return head + b"".join(chunks), {HEADER: str(len(head)), "content-type": "application/octet-stream"}


def _outputs(r) -> dict[str, np.ndarray | list]:
    """name -> data of a V2 response (JSON or binary), read the way the specification says."""
    size = r.headers.get(HEADER)
    head = orjson.loads(r.content[:int(size)] if size else r.content)
    jsonschema.validate(head, RESPONSE_SCHEMA)
    out, offset = {}, int(size or 0)
    for o in head["outputs"]:
        if "data" in o:
            out[o["name"]] = np.asarray(o["data"]).reshape(o["shape"]) if o["datatype"] != "BYTES" else o["data"]
            continue
        n = o["parameters"]["binary_data_size"]
        chunk, offset = r.content[offset:offset + n], offset + n
        if o["datatype"] == "BYTES":
            items, i = [], 0
            while i < len(chunk):
                (k,) = struct.unpack_from("<I", chunk, i)
                items.append(chunk[i + 4:i + 4 + k].decode())
                i += 4 + k
            out[o["name"]] = items
        else:
            out[o["name"]] = np.frombuffer(chunk, {"FP32": "<f4", "INT64": "<i8"}[o["datatype"]]).reshape(o["shape"]).copy()
    assert offset == len(r.content) or not size
    return out


def _error(r, status: int) -> str:
    assert r.status_code == status, r.text
    jsonschema.validate(r.json(), ERROR_SCHEMA)
    return r.json()["error"]


# ------------------------------------------------------------------------------ routes
def test_server_metadata_and_health_are_open(env, client):
    bare = TestClient(client.app)  # no key: open, like /healthz and /readyz
    body = bare.get("/v2").json()
    jsonschema.validate(body, SERVER_META_SCHEMA)
    assert body["name"] == "dlforge" and "binary_tensor_data" in body["extensions"]
    assert bare.get("/v2/health/live").json() == {"live": True}
    assert bare.get("/v2/health/ready").status_code == 200 and bare.get("/v2/health/ready").json()["ready"] is True
    with _client(env) as loading:
        loading.app.state.pool.ready = lambda: False  # as while the models load
        assert loading.get("/v2/health/ready").status_code == 503


def test_model_metadata_versions_aliases_and_keys(env, client):
    meta = client.get("/v2/models/iris").json()
    jsonschema.validate(meta, MODEL_META_SCHEMA)
    assert meta["versions"] == ["1", "2"] and meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in meta["outputs"]] == ["probabilities", "label", "label_index"]
    assert meta["outputs"][0]["shape"] == [-1, 3]
    for path in ("/versions/2", "/versions/candidate"):
        assert client.get(f"/v2/models/iris{path}").json()["name"] == "iris"
        assert client.get(f"/v2/models/iris{path}/ready").json()["ready"] is True
    assert client.get("/v2/models/review").json()["inputs"][0] == {"name": "input", "datatype": "BYTES", "shape": [-1]}
    assert client.get("/v2/models/pixels").json()["inputs"][0]["shape"] == [-1, 1, 2, 2]
    assert client.get("/v2/models/price").json()["outputs"] == [{"name": "values", "datatype": "FP32", "shape": [-1, 2]}]
    assert "not served" in _error(client.get("/v2/models/nope"), 404)
    assert "version 9" in _error(client.get("/v2/models/iris/versions/9/ready"), 404)
    assert "no alias 'beta'" in _error(client.get("/v2/models/iris/versions/beta"), 404)
    assert _error(client.get("/v2/models/iris/versions/b..d"), 400)
    bare = TestClient(client.app)
    assert "needs an API key" in _error(bare.get("/v2/models/iris"), 401)
    bad = {"Authorization": "Bearer dlf_nope"}
    assert "not valid" in _error(bare.post("/v2/models/iris/infer", json={}, headers=bad), 401)


# ------------------------------------------------------------------------------ infer
def test_json_infer_equals_v1_and_the_artifact(env, client):
    r = _infer(client, "iris", _tensor(X, [2, 4]), id="req-7")
    head = r.json()
    assert r.status_code == 200 and head["id"] == "req-7" and head["model_version"] == "1"
    assert head["parameters"]["variant"] == "production" and head["parameters"]["request_id"] == r.headers["x-request-id"]
    out = _outputs(r)
    want = load_artifact(env.dirs[1]).predict(torch.tensor(X))
    assert_close(torch.tensor(out["probabilities"], dtype=torch.float32), want["probabilities"])
    assert out["label"] == want["labels"]
    assert out["label_index"].tolist() == [env.class_names.index(x) for x in want["labels"]]
    v1 = client.post("/v1/models/iris/predict", json={"inputs": X}).json()
    assert_close(torch.tensor(out["probabilities"], dtype=torch.float32), torch.tensor(v1["probabilities"]))
    flat = _outputs(_infer(client, "iris", _tensor(sum(X, []), [2, 4])))  # flat data, row-major
    assert_close(flat["probabilities"], out["probabilities"])
    assert _outputs(_infer(client, "iris", _tensor(X, [2, 4], "FP64")))["label"] == out["label"]
    # the answer is recorded in the same A/B experiment (and feedback finds it by its request id) as v1's
    before = client.get("/v1/models/iris/experiment").json()["variants"]["production"]["requests"]
    head = _infer(client, "iris", _tensor(X[:1], [1, 4])).json()
    assert client.get("/v1/models/iris/experiment").json()["variants"]["production"]["requests"] == before + 1
    r = client.post("/v1/models/iris/feedback", json={"request_id": head["parameters"]["request_id"], "label": "setosa"})
    assert r.status_code == 200, r.text


def test_versions_aliases_and_the_traffic_split(env):
    with _client(env) as client:
        for path, extra, version, variant in [("/versions/2", {}, "2", "version:2"),
                                              ("/versions/candidate", {}, "2", "candidate"),
                                              ("", {"parameters": {"alias": "candidate"}}, "2", "candidate"),
                                              ("/versions/1", {"parameters": {"alias": "candidate"}}, "1", "version:1")]:
            head = _infer(client, "iris", _tensor(X, [2, 4]), path=path, **extra).json()
            assert (head["model_version"], head["parameters"]["variant"]) == (version, variant), (path, extra)
        want = load_artifact(env.dirs[2]).predict(torch.tensor(X))["probabilities"]
        assert_close(torch.tensor(_outputs(_infer(client, "iris", _tensor(X, [2, 4]), path="/versions/2"))[
            "probabilities"], dtype=torch.float32), want)
        assert "alias" in _error(_infer(client, "iris", _tensor(X, [2, 4]), path="/versions/candidate",
                                        parameters={"alias": "production"}), 400)
    # the split applies when no version is named (a model of its own: the module's other clients never see it)
    for version in (1, 2):
        env.registry.register(env.dirs[version], "abtest")
    env.registry.set_alias("abtest", "production", 1)
    env.registry.set_alias("abtest", "candidate", 2)
    split = {"variants": [{"alias": "production", "weight": 0.5}, {"alias": "candidate", "weight": 0.5}]}
    env.registry.set_traffic("abtest", split)
    with _client(env) as client:
        parsed, seen = TrafficConfig.model_validate(split), set()
        for user in (f"user-{i}" for i in range(12)):
            r = client.post("/v2/models/abtest/infer", json={"inputs": [_tensor(X, [2, 4])]},
                            headers={"X-User-Id": user})
            assert r.json()["parameters"]["variant"] == choose_variant(parsed, "abtest", user, random.Random())
            seen.add(r.json()["parameters"]["variant"])
        assert seen == {"production", "candidate"}


def test_binary_tensors_in_and_out_for_every_datatype(env, client):
    x = np.asarray(X, dtype=np.float32)
    want = _outputs(_infer(client, "iris", _tensor(X, [2, 4])))
    for datatype, dtype in [("FP32", "<f4"), ("FP64", "<f8"), ("FP16", "<f2")]:
        raw = x.astype(dtype).tobytes()
        header = {"inputs": [{"name": "input", "shape": [2, 4], "datatype": datatype,
                              "parameters": {"binary_data_size": len(raw)}}],
                  "parameters": {"binary_data_output": True}}
        body, headers = _binary_body(header, [raw])
        r = client.post("/v2/models/iris/infer", content=body, headers=headers)
        assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream", r.text
        out = _outputs(r)
        assert out["label"] == want["label"] and out["label_index"].tolist() == want["label_index"].tolist()
        assert_close(out["probabilities"], want["probabilities"].astype(np.float32), atol=1e-3 if dtype == "<f2" else 0,
                     rtol=1e-3 if dtype == "<f2" else 1e-6)
    # per output: binary probabilities, JSON labels, in the order asked; no Content-Type at all (tritonclient)
    raw = x.tobytes()
    header = {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "parameters": {"binary_data_size": 32}}],
              "outputs": [{"name": "label"}, {"name": "probabilities", "parameters": {"binary_data": True}}]}
    body, headers = _binary_body(header, [raw])
    r = client.post("/v2/models/iris/infer", content=body, headers={HEADER: headers[HEADER]})
    head = orjson.loads(r.content[:int(r.headers[HEADER])])
    assert [o["name"] for o in head["outputs"]] == ["label", "probabilities"] and "data" in head["outputs"][0]
    assert head["outputs"][1]["parameters"] == {"binary_data_size": 24}
    # integer pixels (UINT8, INT32) answer as the same numbers in FP32 do
    pixels = [[[[0, 255], [128, 9]]]]
    want = _outputs(_infer(client, "pixels", _tensor(pixels, [1, 1, 2, 2])))["probabilities"]
    for datatype, dtype in [("UINT8", "<u1"), ("INT32", "<i4")]:
        raw = np.asarray(pixels, dtype=dtype).tobytes()
        body, headers = _binary_body({"inputs": [{"name": "input", "shape": [1, 1, 2, 2], "datatype": datatype,
                                                  "parameters": {"binary_data_size": len(raw)}}]}, [raw])
        assert_close(_outputs(client.post("/v2/models/pixels/infer", content=body, headers=headers))["probabilities"],
                     want)
    v1 = client.post("/v1/models/pixels/predict", json={"inputs": pixels[0:1]}).json()["probabilities"]
    assert_close(torch.tensor(want, dtype=torch.float32), torch.tensor(v1))


def test_bytes_texts_json_binary_and_token_ids(env, client):
    texts = ["a fine film", "a dull film"]
    v1 = client.post("/v1/models/review/predict", json={"inputs": texts}).json()
    out = _outputs(_infer(client, "review", _tensor(texts, [2], "BYTES")))
    assert out["label"] == v1["outputs"] and _close(out["probabilities"], v1["probabilities"])
    raw = b"".join(struct.pack("<I", len(t)) + t.encode() for t in texts)
    body, headers = _binary_body({"inputs": [{"name": "input", "shape": [2, 1], "datatype": "BYTES",
                                              "parameters": {"binary_data_size": len(raw)}}],
                                  "outputs": [{"name": "label", "parameters": {"binary_data": True}}]}, [raw])
    assert _outputs(client.post("/v2/models/review/infer", content=body, headers=headers))["label"] == v1["outputs"]
    ids = [[101, 2028, 2048, 102, 0, 0, 0, 0]]
    v1 = client.post("/v1/models/review/predict", json={"inputs": ids}).json()
    out = _outputs(_infer(client, "review", _tensor(ids, [1, 8], "INT64")))
    assert out["label"] == v1["outputs"] and _close(out["probabilities"], v1["probabilities"])
    # regression: FP32 values [B, K]
    want = load_artifact(env.registry.versions("price")[0].path).predict(torch.tensor(X))["values"]
    got = _outputs(_infer(client, "price", _tensor(X, [2, 4])))["values"]
    assert _close(got, want) and got.shape == (2, 2)


def test_segmentation_masks_and_areas_equal_v1(env, client):
    meta = client.get("/v2/models/nuclei").json()
    assert meta["inputs"][0]["shape"] == [-1, 1, -1, -1] and [o["name"] for o in meta["outputs"]] == ["mask", "areas"]
    image = np.random.default_rng(0).integers(0, 255, (2, 1, 20, 24)).tolist()  # two images of one size
    v1 = client.post("/v1/models/nuclei/predict", json={"inputs": image}).json()
    for binary in (False, True):
        out = _outputs(_infer(client, "nuclei", _tensor(image, [2, 1, 20, 24]), parameters={"binary_data_output": binary}))
        assert out["mask"] == [s["mask"]["b64"] for s in v1["outputs"]]
        assert out["areas"].tolist() == [[s["areas"][c] for c in v1["class_names"]] for s in v1["outputs"]]


def _close(a, b) -> bool:
    assert_close(torch.tensor(np.asarray(a), dtype=torch.float32), torch.tensor(np.asarray(b), dtype=torch.float32))
    return True


# ------------------------------------------------------------------------------ refusals
def test_every_v1_refusal_is_a_v2_error_naming_the_field(env, client):
    # booleans: in a number tensor, and as a BOOL tensor (v1: a 422 naming the field)
    assert _error(_infer(client, "series", _tensor([[[1, 2, 3], [4, 5, True]]], [1, 2, 3])), 400) == (
        "inputs[0].data[5]: expected a number (FP32), got a boolean")
    assert "BOOL is not a number" in _error(_infer(client, "iris", _tensor([[True] * 4], [1, 4], "BOOL")), 400)
    # overflow once standardised, values beyond float32, and a non-finite model output
    assert _error(_infer(client, "people", _tensor([[1.0, 0, 1], [1.0, 3e38, 1]], [2, 3])), 400).startswith(
        "inputs[0] ('input') sample 1 at [1]: a value")
    assert "outside the FP32 range" in _error(_infer(client, "iris", _tensor([[1e39, 0, 0, 0]], [1, 4])), 400)
    assert "not a finite number" in _error(_infer(client, "iris", _tensor([[1e39, 0, 0, 0]], [1, 4], "FP64")), 400)
    assert "non-finite output" in _error(_infer(client, "ones", _tensor([[1.0] * 4, [3e38] * 4], [2, 4])), 400)
    nan = np.asarray([[0, np.nan, 0, 0]], "<f4").tobytes()
    body, headers = _binary_body({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                                              "parameters": {"binary_data_size": 16}}]}, [nan])
    assert "inputs[0].data[1]: not a finite number" in _error(client.post("/v2/models/iris/infer", content=body,
                                                                           headers=headers), 400)
    # shapes, strings among numbers, token ids outside the vocabulary or not integers
    assert "expected shape [4], got [5]" in _error(_infer(client, "iris", _tensor([[1] * 5], [1, 5])), 400)
    assert "got a string" in _error(_infer(client, "iris", _tensor([[1, "2", 3, 4]], [1, 4])), 400)
    assert "outside the vocabulary" in _error(_infer(client, "review", _tensor([[10 ** 9] * 8], [1, 8], "INT64")), 400)
    assert "expected an integer" in _error(_infer(client, "review", _tensor([[1.5] * 8], [1, 8], "INT64")), 400)
    assert "integer token id" in _error(_infer(client, "review", _tensor([[1.5] * 8], [1, 8])), 400)
    # text: not UTF-8 (binary), a lone surrogate (JSON), not a string
    bad = struct.pack("<I", 2) + b"\xff\xfe"
    body, headers = _binary_body({"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES",
                                              "parameters": {"binary_data_size": len(bad)}}]}, [bad])
    assert "not valid UTF-8" in _error(client.post("/v2/models/review/infer", content=body, headers=headers), 400)
    lone = b'{"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": ["bad \\ud800"]}]}'
    r = client.post("/v2/models/review/infer", content=lone, headers={"content-type": "application/json"})
    assert "not valid JSON" in _error(r, 400)
    assert "expected a string (BYTES)" in _error(_infer(client, "review", _tensor([3], [1], "BYTES")), 400)


def test_token_cap_and_max_inputs_hold_on_v2(env):
    with _client(env, max_tokens=20, max_inputs=3) as client:
        texts = ["a fine film", "one two three four five six", "one two three four five six"]  # 21 tokens
        assert "cap of 20" in _error(_infer(client, "review", _tensor(texts, [3], "BYTES")), 413)
        assert "at most 3 inputs" in _error(_infer(client, "iris", _tensor([[0] * 4] * 4, [4, 4])), 400)


@pytest.mark.parametrize(("body", "message"), [
    ({"inputs": []}, "inputs: List should have at least 1 item"),
    ({"inputs": [_tensor([1], [1], "FP8")]}, "inputs[0].datatype: Input should be"),
    ({"inputs": [_tensor([1], [-1, 4])]}, "inputs[0].shape[0]: Input should be greater than or equal to 0"),
    ({"inputs": [_tensor([1, 2, 3], [1, 4])]}, "inputs[0].data: 3 elements, but the declared shape is [1, 4]"),
    ({"inputs": [_tensor([[1, 2], [3]], [2, 2])]}, "nested lists of unequal lengths"),
    ({"inputs": [_tensor([[0] * 4], [1, 4])], "extra": 1}, "extra: Extra inputs are not permitted"),
    ({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32"}]}, "inputs[0].data: missing"),
    ({"inputs": [_tensor([[0] * 4], [1, 4], name="x")]}, "one input named 'input', got ['x']"),
    ({"inputs": [_tensor([[0] * 4], [1, 4]), _tensor([[0] * 4], [1, 4])]}, "one input named 'input'"),
    ({"inputs": [_tensor([], [0, 4])]}, "batch size"),
    ({"inputs": [_tensor([[0] * 4], [1, 4])], "outputs": [{"name": "logits"}]}, "outputs[0].name: unknown output"),
    ({"inputs": [_tensor([[0] * 4], [1, 4])], "outputs": [{"name": "label", "parameters": {"binary_data": 1}}]},
     "outputs[0].parameters.binary_data: expected true or false"),
    ({"inputs": [_tensor([[0] * 4], [1, 4])], "parameters": {"alias": 3}}, "parameters.alias"),
])
def test_bad_headers_are_400_naming_the_field(client, body, message):
    assert message in _error(client.post("/v2/models/iris/infer", json=body), 400)


def test_bad_binary_framing_and_transport_refusals(env, client):
    raw = np.zeros((1, 4), "<f4").tobytes()
    tensor = {"name": "input", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}
    body, headers = _binary_body({"inputs": [tensor]}, [raw + b"\0"])
    assert "1 bytes of binary data that no input claims" in _error(
        client.post("/v2/models/iris/infer", content=body, headers=headers), 400)
    body, headers = _binary_body({"inputs": [{**tensor, "parameters": {"binary_data_size": 12}}]}, [raw[:12]])
    assert "12 bytes, but shape [1, 4] of FP32 takes 16" in _error(
        client.post("/v2/models/iris/infer", content=body, headers=headers), 400)
    body, headers = _binary_body({"inputs": [tensor]}, [raw[:8]])
    assert "binary_data_size: 16 bytes from byte 0" in _error(
        client.post("/v2/models/iris/infer", content=body, headers=headers), 400)
    r = client.post("/v2/models/iris/infer", content=body, headers={**headers, HEADER: str(len(body) + 1)})
    assert "Inference-Header-Content-Length is" in _error(r, 400)
    assert "expected a byte count" in _error(client.post("/v2/models/iris/infer", content=body,
                                                         headers={**headers, HEADER: "x"}), 400)
    r = client.post("/v2/models/iris/infer", content=b"{}", headers={"content-type": "text/plain"})
    assert "application/octet-stream" in _error(r, 415)
    with _client(env, max_body_bytes=1000) as small:
        assert "over 1000 bytes" in _error(_infer(small, "iris", _tensor([[0.0] * 4] * 100, [100, 4])), 413)


# ------------------------------------------------------------------------------ the schema
def test_request_and_response_objects_round_trip_the_protocol_schema(env, client):
    import tritonclient.http as httpclient
    from tritonclient.http._utils import _get_inference_request

    x = np.asarray(X, dtype=np.float32)
    for binary in (False, True):
        given = httpclient.InferInput("input", [2, 4], "FP32")
        given.set_data_from_numpy(x, binary_data=binary)
        asked = [httpclient.InferRequestedOutput("probabilities", binary_data=binary)]
        body, size = _get_inference_request(inputs=[given], request_id="r1", outputs=asked, sequence_id=0,
                                            sequence_start=False, sequence_end=False, priority=0, timeout=None,
                                            custom_parameters=None)
        head = orjson.loads(body[:size] if size else body)
        jsonschema.validate(head, REQUEST_SCHEMA)  # tritonclient speaks the schema ...
        parsed, tensors = decode_request(body, size)  # ... and the codec reads what it sends
        assert parsed.model_dump(exclude_none=True) == {k: v for k, v in head.items()} | {
            "inputs": [{k: v for k, v in t.items() if k != "data"} for t in head["inputs"]]}
        assert np.array_equal(tensors[0], x)
        r = client.post("/v2/models/iris/infer", content=body, headers={HEADER: str(size)} if size else {})
        InferResponse.model_validate(orjson.loads(r.content[:int(r.headers.get(HEADER, len(r.content)))]))
        assert _outputs(r)["probabilities"].shape == (2, 3)
    with pytest.raises(jsonschema.ValidationError):  # the schema itself can fail
        jsonschema.validate({"inputs": [{"name": "x", "shape": [1]}]}, REQUEST_SCHEMA)
    assert InferRequest.model_json_schema()["required"] == ["inputs"]


# ------------------------------------------------------------------------------ tables by column
def test_a_table_sent_one_tensor_per_column_answers_like_v1_records(env, client):
    records = [{"age": 31.0, "color": "red"}, {"age": 29.5, "color": "blue"}]
    v1 = client.post("/v1/models/people/predict", json={"inputs": records}, headers=env.headers()).json()
    columns = [_tensor([31.0, 29.5], [2], name="age"), _tensor(["red", "blue"], [2, 1], "BYTES", name="color")]
    r = _infer(client, "people", *columns)
    assert r.status_code == 200, r.text
    out = {o["name"]: o["data"] for o in r.json()["outputs"]}
    assert out["label"] == v1["outputs"]
    assert _close(np.reshape(out["probabilities"], (2, -1)), v1["probabilities"])
    # the same refusals as v1's records, in the protocol's error object
    assert "green" in _error(_infer(client, "people", columns[0], _tensor(["red", "green"], [2], "BYTES",
                                                                             name="color")), 400)
    assert "color" in _error(_infer(client, "people", columns[0]), 400)  # a missing column is named
    assert "same batch size" in _error(_infer(client, "people", columns[0], _tensor(["red"], [1], "BYTES",
                                                                                    name="color")), 400)
    assert "one input named 'input'" in _error(_infer(client, "people", _tensor([[1.0, 2.0]], [1, 2], name="age"),
                                                      _tensor(["red"], [1], "BYTES", name="color")), 400)
