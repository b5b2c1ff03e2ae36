"""A segmentation model served through the same /v1 predict route as every other model.

A tiny 2D UNet artifact (1 channel, windows of 16x16, classes background/nucleus) is saved
with the preprocessing keys a real ``dlforge train`` run writes, registered next to the iris
classifier of the shared fixtures, and driven with the app's TestClient: PNG in / PNG out,
JSON pixels in / RLE out, two sizes in one request, the served masks equal to
``Artifact.segment`` on the same image, each bad image a 422 naming ``inputs[i]``, oversized
images a 413, the model page, drift (skipped) and metrics (counted).
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image, ImageSequence

from dlforge.models import build
from dlforge.registry import check_artifact, load_artifact, save_artifact
from dlforge.registry.segment import class_areas, mask_rle, rle_decode, rle_encode
from dlforge.serve.main import create_app
from tests.serve.conftest import ServeEnv, make_serve_env

NAME = "nuclei"
CLASSES = ["background", "nucleus"]
PREPROCESSING = {  # the keys a real run's model.json holds (see /tmp/segruns/*/model/model.json)
    "encoding": {"kind": "segmentation", "mode": "L", "scale": 1 / 255, "size": [32, 32],
                 "normalize": {"method": "percentile", "low": 1.0, "high": 99.8}, "window": [16, 16],
                 "spatial_dims": 2},
    "standardize": None,
    "postprocess": {"remove_small": None, "fill_holes": False, "keep_largest": False},
}


def save_tiny_segmenter(folder: Path, dims: int = 2) -> Path:
    """The 2D model of the module doc, or a 3D one (windows of 8x8x8) with ``dims=3``."""
    torch.manual_seed(0 if dims == 2 else 2)  # seeds whose untrained weights predict both classes on image()
    window = [16, 16] if dims == 2 else [8, 8, 8]
    model = build({"arch": "unet", "widths": [4, 8]}, input_shape=(1, *window), num_outputs=len(CLASSES))
    prep = {**PREPROCESSING, "encoding": {**PREPROCESSING["encoding"], "window": window, "spatial_dims": dims}}
    return save_artifact(model, folder, task="segmentation", class_names=CLASSES, preprocessing=prep)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServeEnv, Path]]:
    """The shared iris registry plus the segmentation model ``nuclei`` (v1)."""
    folder = tmp_path_factory.mktemp("seg")
    serve_env = make_serve_env(folder)
    path = save_tiny_segmenter(folder / "seg-model")
    serve_env.registry.register(path, NAME)  # runs check_artifact: the smoke prediction must pass
    serve_env.registry.register(save_tiny_segmenter(folder / "seg3d-model", dims=3), "volume")
    yield serve_env, path
    serve_env.registry.close()


def _client(serve_env: ServeEnv, **settings: Any) -> Iterator[TestClient]:
    with TestClient(create_app(serve_env.settings(**settings)), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def client(env) -> Iterator[TestClient]:
    yield from _client(env[0])


@pytest.fixture(scope="module")
def art(env):
    return load_artifact(env[1])


def image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A uint8 grayscale image with bright blobs on a dark background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    out = rng.integers(0, 40, size=(h, w))
    for _ in range(3):
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        out[(yy - cy) ** 2 + (xx - cx) ** 2 < 9] = 220
    return out.astype(np.uint8)


def png_b64(pixels: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def predict(client: TestClient, env, body: dict[str, Any] | str, name: str = NAME):
    kwargs = {"content": body} if isinstance(body, str) else {"json": body}
    return client.post(f"/v1/models/{name}/predict", headers={**env[0].headers(), "Content-Type": "application/json"},
                       **kwargs)


# ------------------------------------------------------------------------------ RLE
def test_rle_is_coco_column_major_and_round_trips() -> None:
    assert rle_encode(np.array([[0, 1], [1, 1]])) == {"size": [2, 2], "counts": [1, 3]}  # down column 0 first
    assert rle_encode(np.array([[1, 1], [0, 0]])) == {"size": [2, 2], "counts": [0, 1, 1, 1, 1]}
    rng = np.random.default_rng(0)
    for shape in [(7, 5), (1, 1), (3, 4, 6)]:  # 3D: size [D, H, W], the first axis fastest
        labels = rng.integers(0, 3, size=shape)
        rles = mask_rle(labels, ["a", "b", "c"])
        assert all(sum(r["counts"]) == labels.size for r in rles.values())
        rebuilt = sum(i * rle_decode(rles[name]).astype(int) for i, name in enumerate(["a", "b", "c"]))
        np.testing.assert_array_equal(rebuilt, labels)


def test_rle_decode_refuses_counts_that_do_not_fill_the_mask() -> None:
    with pytest.raises(Exception, match="do not fill a mask of size"):
        rle_decode({"size": [2, 2], "counts": [1, 2]})


# ------------------------------------------------------------------------ registry
def test_the_artifact_passes_the_registry_gate(env) -> None:
    check_artifact(env[1])  # smoke prediction of (N, K, *patch) logits
    assert env[0].registry.versions(NAME)[0].version == 1


# ------------------------------------------------------------------------- predict
def test_png_in_png_out_equals_artifact_segment(client, env, art) -> None:
    pixels = image(20, 24)
    r = predict(client, env, {"inputs": [{"b64": png_b64(pixels)}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model"], body["version"], body["class_names"]) == (NAME, 1, CLASSES)
    (out,) = body["outputs"]
    assert out["shape"] == [20, 24] and out["mask"]["format"] == "png"
    served = np.asarray(Image.open(io.BytesIO(base64.b64decode(out["mask"]["b64"])))) // 255  # binary: 0/255
    expected = art.segment([pixels])[0]
    assert expected.any() and not expected.all()  # both classes occur: the comparison means something
    np.testing.assert_array_equal(served, expected)
    assert out["areas"] == class_areas(expected, CLASSES) and sum(out["areas"].values()) == 20 * 24


def test_json_pixels_in_rle_out_two_sizes_in_one_request(client, env, art) -> None:
    a, b = image(20, 24, seed=1), image(13, 9, seed=2)
    r = predict(client, env, {"inputs": [a.tolist(), [b.tolist()]], "mask_format": "rle"})  # (H, W) and (C, H, W)
    assert r.status_code == 200, r.text
    for out, pixels in zip(r.json()["outputs"], (a, b)):
        h, w = pixels.shape
        assert out["shape"] == [h, w] and out["mask"]["format"] == "rle" and out["mask"]["b64"] is None
        classes = out["mask"]["classes"]
        assert all(rle["size"] == [h, w] for rle in classes.values())
        served = sum(i * rle_decode(classes[c]).astype(np.int64) for i, c in enumerate(CLASSES))
        np.testing.assert_array_equal(served, art.segment([pixels])[0])
        assert sum(out["areas"].values()) == h * w
        assert out["areas"] == {c: int(rle_decode(classes[c]).sum()) for c in CLASSES}


def test_3d_volumes_come_back_as_multi_page_tiffs_or_3d_run_lengths(client, env) -> None:
    art3d = load_artifact(env[0].registry.versions("volume")[0].path)
    volume = np.stack([image(10, 9, seed=s) for s in range(6)])  # (D, H, W)
    expected = art3d.segment([volume])[0]
    assert expected.any() and not expected.all()
    r = predict(client, env, {"inputs": [volume.tolist()]}, name="volume")
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert out["shape"] == [6, 10, 9] and out["mask"]["format"] == "tiff"
    pages = Image.open(io.BytesIO(base64.b64decode(out["mask"]["b64"])))
    served = np.stack([np.asarray(p) for p in ImageSequence.Iterator(pages)]) // 255  # binary: 0/255
    np.testing.assert_array_equal(served, expected)
    r = predict(client, env, {"inputs": [[volume.tolist()]], "mask_format": "rle"}, name="volume")  # (C, D, H, W)
    classes = r.json()["outputs"][0]["mask"]["classes"]
    assert classes["nucleus"]["size"] == [6, 10, 9]
    np.testing.assert_array_equal(rle_decode(classes["nucleus"]), expected == 1)


@pytest.mark.parametrize(("item", "field", "why"), [
    ({"b64": "not base64!"}, "body.inputs.0.b64", "not valid base64"),
    ({"b64": base64.b64encode(b"hello").decode()}, "body.inputs.0.b64", "cannot decode the image bytes"),
    ({"b64": "", "size": 3}, "body.inputs.0", "with that one key"),
    ([[1, 2], [3]], "body.inputs.0", "not a rectangular nested list"),
    ([[True, False], [False, True]], "body.inputs.0", "found booleans"),
    ([[1, True], [0, 2]], "body.inputs.0", "found booleans"),
    ([["a", "b"]], "body.inputs.0", "not numbers"),
    ([[]], "body.inputs.0", "is empty"),
    ([], "body.inputs.0", "does not fit this model"),
    ([[[1, 2], [3, 4]]] * 3, "body.inputs.0", "1-channel 2D images"),  # 3 channels
    ([[[[1, 2], [3, 4]]]], "body.inputs.0", "1-channel 2D images"),  # 4 dims
    ("abc", "body.inputs.0", "expected an image"),
])
def test_bad_images_are_422_naming_the_field(client, env, item, field: str, why: str) -> None:
    r = predict(client, env, {"inputs": [item]})
    assert r.status_code == 422, r.text
    fields = r.json()["error"]["fields"]
    assert fields[0]["path"] == field and why in fields[0]["message"], fields


def test_nan_pixels_and_bad_items_after_good_ones_are_named(client, env) -> None:
    good = image(4, 4).tolist()
    body = json.dumps({"inputs": [good, [[1.0, float("nan")], [0.0, 1.0]], good, 7]})  # json writes NaN
    r = predict(client, env, body)
    assert r.status_code == 422, r.text
    fields = {f["path"]: f["message"] for f in r.json()["error"]["fields"]}
    assert "NaN" in fields["body.inputs.1"] and "expected an image" in fields["body.inputs.3"]
    assert set(fields) == {"body.inputs.1", "body.inputs.3"}


def test_images_over_the_pixel_cap_are_413(env) -> None:
    for small in _client(env[0], max_image_pixels=100):
        for item in (image(11, 10).tolist(), {"b64": png_b64(image(11, 10))}):
            r = predict(small, env, {"inputs": [image(10, 10).tolist(), item]})
            assert r.status_code == 413, r.text
            error = r.json()["error"]
            assert error["code"] == "payload_too_large" and "inputs[1]" in error["message"]
            assert "11x10" in error["message"]
        assert predict(small, env, {"inputs": [image(10, 10).tolist()]}).status_code == 200


def test_mask_format_is_refused_for_other_models(client, env) -> None:
    r = predict(client, env, {"inputs": [[0, 0, 0, 0]], "mask_format": "rle"}, name="iris")
    assert r.status_code == 422 and r.json()["error"]["fields"][0]["path"] == "body.mask_format"
    assert predict(client, env, {"inputs": [image(4, 4).tolist()], "mask_format": "jpeg"}).status_code == 422


# ------------------------------------------------------------- describe, drift, metrics
def test_the_model_page_describes_images_of_any_size_and_its_example_works(client, env) -> None:
    r = client.get(f"/v1/models/{NAME}", headers=env[0].headers())
    assert r.status_code == 200, r.text
    inputs = r.json()["versions"][0]["inputs"]
    assert (inputs["kind"], inputs["size"], inputs["channels"], inputs["spatial_dims"]) == ("segmentation", "any", 1, 2)
    assert "images of any size with 1 channel(s)" in inputs["forms"][0]
    answer = predict(client, env, inputs["example"])
    assert answer.status_code == 200 and answer.json()["outputs"][0]["shape"] == [16, 16]


def test_drift_is_skipped_and_requests_are_counted(client, env) -> None:
    for _ in range(3):
        assert predict(client, env, {"inputs": [image(8, 8).tolist()]}).status_code == 200
    (report,) = client.get(f"/v1/models/{NAME}/drift", headers=env[0].headers()).json()["versions"]
    assert not report["available"] and "segmentation" in report["reason"] and report["n_live"] == 0
    metrics = client.get("/metrics").text
    line = next(x for x in metrics.splitlines()
                if x.startswith("dlforge_requests_total{") and f'model="{NAME}"' in x and 'status="200"' in x)
    assert float(line.rsplit(" ", 1)[1]) >= 3
