"""The server reads raw inputs in the source's own units, as Artifact.encode does, and
GET /v1/models/{name} describes them with an example body that predicts."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.testing import assert_close

from dlforge.data import load_builtin
from dlforge.models import build
from dlforge.registry import load_artifact, save_artifact
from dlforge.registry.reference import build_reference

DIGITS = {"encoding": {"kind": "image", "size": [8, 8], "mode": "L", "scale": 1 / 16},
          "standardize": {"mean": [0.3], "std": [0.4], "axis": "channel"}}
CATEGORIES = [f"c{i:02d}" for i in range(25)]
TABLE = {"encoding": {"kind": "tabular", "columns": ["age", "city"], "categories": {"city": CATEGORIES}},
         "standardize": {"mean": [40.0] + [0.04] * 25, "std": [0.5] + [0.2] * 25, "axis": "feature"}}


def _save(folder: Path, shape: tuple[int, ...], preprocessing: dict, classes: list[str]) -> Path:
    torch.manual_seed(0)
    model = build({"arch": "mlp", "hidden": [8]}, input_shape=shape, num_outputs=len(classes))
    return save_artifact(model, folder, task="classification", class_names=classes, preprocessing=preprocessing)


@pytest.fixture
def client(serve_env, make_client, tmp_path):
    serve_env.registry.register(_save(tmp_path / "digits", (1, 8, 8), DIGITS, [str(d) for d in range(10)]), "digits")
    serve_env.registry.register(_save(tmp_path / "people", (26,), TABLE, ["no", "yes"]), "people")
    client = make_client()
    client.headers.update(serve_env.headers())
    return client


def _predict(client, name: str, inputs: list):
    return client.post(f"/v1/models/{name}/predict", json={"inputs": inputs})


def _artifact(client, name: str):
    (model,) = client.app.state.pool.loaded(name).values()
    return model.artifact


def _png(pixels: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def test_digits_raw_pixels_in_every_layout_answer_as_artifact_encode(client):
    raw = np.round(load_builtin("digits").x[:6, 0] * 16)  # (6, 8, 8) in sklearn's 0..16 units
    art = _artifact(client, "digits")
    want = art.predict(art.encode(raw))
    for body in (raw.tolist(), raw[:, :, :, None].tolist(), raw[:, None].tolist()):
        r = _predict(client, "digits", body)
        assert r.status_code == 200, r.text
        assert r.json()["outputs"] == want["labels"]
        assert_close(torch.tensor(r.json()["probabilities"]), want["probabilities"])
    # Items of different layouts in one request go item by item, to the same answer.
    mixed = _predict(client, "digits", [raw[0].tolist(), raw[1][None].tolist()]).json()
    assert mixed["outputs"] == want["labels"][:2]


def test_base64_png_is_decoded_like_a_file(client, tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3))  # RGB, twice the size: converted and resized
    Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "x.png")
    art = _artifact(client, "digits")
    want = art.predict(art.encode([tmp_path / "x.png"]))
    r = _predict(client, "digits", [{"b64": _png(pixels)}])
    assert r.status_code == 200, r.text
    assert r.json()["outputs"] == want["labels"]
    assert_close(torch.tensor(r.json()["probabilities"]), want["probabilities"])


def test_bad_images_are_refused_clearly(client):
    fields = lambda r: [(f["path"], f["message"]) for f in r.json()["error"]["fields"]]  # noqa: E731
    r = _predict(client, "digits", [{"b64": "not base64!"}, {"b64": base64.b64encode(b"hello").decode()},
                                    [[0] * 28] * 28, {"url": "x"}])
    assert r.status_code == 422
    got = fields(r)
    assert got[0][0] == "body.inputs.0.b64" and "base64" in got[0][1]
    assert "not a recognised image format" in got[1][1]
    assert "shape [28, 28]" in got[2][1] and "0..16" in got[2][1] and "[8, 8]" in got[2][1]
    assert '"b64"' in got[3][1]
    buf = io.BytesIO()
    Image.new("L", (5000, 5000)).save(buf, "PNG")  # a decompression bomb: small on the wire
    r = _predict(client, "digits", [{"b64": base64.b64encode(buf.getvalue()).decode()}])
    assert r.status_code == 413 and "5000x5000" in r.json()["error"]["message"]


def test_huge_finite_values_are_a_422_not_null_probabilities(client):
    r = _predict(client, "digits", [[[3e38] * 8] * 8])  # 3e38 / 16 stays finite: answered, with finite numbers
    assert r.status_code == 200 and all(np.isfinite(r.json()["probabilities"][0]))
    # Standardised by a std of 0.5, 3e38 overflows float32: the model would answer NaN (null in JSON).
    r = _predict(client, "people", [{"age": 1, "city": "c01"}, {"age": 3e38, "city": "c01"}])
    assert r.status_code == 422 and [f["path"] for f in r.json()["error"]["fields"]] == ["body.inputs.1.age"]
    r = _predict(client, "people", [[3e38] + [0.0] * 25, [1.0] * 26, [-3e38] + [0.0] * 25])
    assert r.status_code == 422 and "overflows float32" in r.text
    assert [f["path"] for f in r.json()["error"]["fields"]] == ["body.inputs.0.0", "body.inputs.2.0"]


@pytest.mark.parametrize("name", ["digits", "people", "iris"])
def test_model_page_describes_inputs_with_an_example_that_predicts(client, name):
    detail = client.get(f"/v1/models/{name}").json()
    inputs = detail["versions"][-1]["inputs"]
    r = client.post(f"/v1/models/{name}/predict", json=inputs["example"])
    assert r.status_code == 200, r.text
    one = client.get(f"/v1/models/{name}/versions/{detail['latest_version']}").json()
    assert one["inputs"] == inputs and one["version"] == detail["latest_version"]


def test_model_page_names_columns_and_pixel_units(client):
    image = client.get("/v1/models/digits").json()["versions"][0]["inputs"]
    assert (image["kind"], image["size"], image["mode"], image["pixel_range"]) == ("image", [8, 8], "L", "0..16")
    table = client.get("/v1/models/people").json()["versions"][0]["inputs"]
    assert table["kind"] == "table"
    age, city = table["columns"]
    assert age == {"name": "age", "type": "number"}
    assert city["type"] == "category" and city["categories"] == CATEGORIES[:20] and city["categories_total"] == 25
    assert table["example"] == {"inputs": [{"age": 40.0, "city": "c00"}]}
    assert client.get("/v1/models/digits/versions/9").status_code == 404


def test_far_out_of_range_inputs_are_answered_with_warnings_and_counted(serve_env, make_client, tmp_path):
    bundle = load_builtin("digits")
    folder = _save(tmp_path / "ref", (1, 8, 8), DIGITS, [str(d) for d in range(10)])
    art = load_artifact(folder)
    x = art.encode(np.round(bundle.x[:300, 0] * 16))  # the training inputs, as the model saw them
    reference = build_reference(x, art.predict(x), "classification", art.preprocessing)
    save_artifact(art.model, folder, task="classification", class_names=art.class_names,
                  preprocessing=DIGITS, training={"reference": reference}, overwrite=True)
    serve_env.registry.register(folder, "digits")
    client = make_client()
    sixteenths = np.round(bundle.x[0, 0] * 16)
    r = client.post("/v1/models/digits/predict", headers=serve_env.headers(),
                    json={"inputs": [sixteenths.tolist(), (sixteenths * 255 / 16).tolist()]})  # 0..255: wrong units
    assert r.status_code == 200, r.text
    (warning,) = r.json()["warnings"]
    assert warning["input"] == 1 and warning["feature"] == "c0" and "training range" in warning["message"]
    lo, hi = warning["training_range"]
    assert warning["value"] > hi + 3 * (hi - lo)
    ok = client.post("/v1/models/digits/predict", headers=serve_env.headers(), json={"inputs": [sixteenths.tolist()]})
    assert ok.json()["warnings"] is None
    assert 'dlforge_out_of_range_inputs_total{model="digits"} 1.0' in client.get("/metrics").text
