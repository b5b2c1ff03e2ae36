"""One encoder: the same raw inputs give bit-identical outputs through the CLI's predict
service (``predict_files``), the artifact (``Artifact.encode`` + ``predict``) and the server
(``POST /v1/models/{name}/predict``), for a table, an image, a text and a series window; and
all three refuse a masked-LM model with one message.

The artifacts are saved untrained (seeded weights): what is compared is the path from raw
inputs to outputs, not what a model learned.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from dlforge.data import load_source, prepare
from dlforge.data.text import text_encoding
from dlforge.data.tokenizer import load_tokenizer
from dlforge.errors import ArtifactError, DataError
from dlforge.models import build
from dlforge.pipeline.predict import predict_files
from dlforge.registry import load_artifact, save_artifact
from dlforge.serve.inputs import InputSpec, encode_inputs
from dlforge.serve.main import create_app
from tests.serve.conftest import ServeEnv, make_serve_env

IMAGE = {"encoding": {"kind": "image", "size": [3, 4], "mode": "RGB", "scale": 1 / 255},
         "standardize": {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.3, 0.25], "axis": "channel"}}
SERIES = {"encoding": {"kind": "sequence", "length": 5, "features": 1}, "standardize": None,
          "target_scale": {"mean": 50.0, "std": 20.0}}
TEXT_LEN = 12
MLM_REFUSAL = "is a masked-LM model: it predicts masked tokens, not labels"


def _save(folder: Path, spec: dict, shape: tuple[int, ...], task: str, preprocessing: dict,
          classes: list[str] | None) -> Path:
    torch.manual_seed(0)
    model = build(spec, input_shape=shape, num_outputs=len(classes) if classes else 1)
    return save_artifact(model, folder, task=task, class_names=classes, preprocessing=preprocessing)


ROWS = [{"height": 181.25, "width": 4.5, "colour": "blue"}, {"height": 150.0, "width": 7.125, "colour": "red"},
        {"height": 170.5, "width": 5.0, "colour": "green"}]


def _table(folder: Path) -> Path:
    """An artifact with the encoding of a CSV source (a category, a gap), and rows.csv holding ROWS."""
    rng = np.random.default_rng(0)
    lines = ["height,width,colour,label"]
    for i in range(40):
        h, w = rng.normal(size=2) * [10, 2] + [170, 5]
        lines.append(f"{h:.3f},{'' if i == 7 else f'{w:.3f}'},{['red', 'green', 'blue'][i % 3]},{'ab'[i % 2]}")
    (folder / "source.csv").write_text("\n".join(lines) + "\n")
    prepared = prepare(load_source(str(folder / "source.csv"), target="label"), val=0.0, test=0.0, stratify=False)
    art = _save(folder / "table", {"arch": "mlp", "hidden": [8]}, prepared.input_shape, "classification",
                prepared.preprocessing, prepared.class_names)
    (folder / "rows.csv").write_text("height,width,colour\n" + "".join(f"{r['height']},{r['width']},{r['colour']}\n"
                                                                      for r in ROWS))
    return art


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServeEnv, dict[str, Path], Path]]:
    folder = tmp_path_factory.mktemp("one-encoding")
    serve_env = make_serve_env(folder / "registry")
    encoding = text_encoding(load_tokenizer("minilm"), TEXT_LEN)
    text = {"arch": "transformer", "vocab_size": encoding["vocab_size"], "dim": 8, "num_heads": 2,
            "num_layers": 1, "ffn_dim": 8}
    mlp = {"arch": "mlp", "hidden": [8]}
    arts = {"table": _table(folder),
            "image": _save(folder / "image", mlp, (3, 3, 4), "classification", IMAGE, ["cat", "dog", "owl"]),
            "text": _save(folder / "text", text, (TEXT_LEN,), "classification", {"encoding": encoding}, ["neg", "pos"]),
            "series": _save(folder / "series", mlp, (5, 1), "regression", SERIES, None),
            "mlm": _save(folder / "mlm", text, (TEXT_LEN,), "mlm", {"encoding": encoding}, ["neg", "pos"])}
    for name, path in arts.items():
        serve_env.registry.register(path, name)
    yield serve_env, arts, folder
    serve_env.registry.close()


@pytest.fixture(scope="module")
def client(env) -> Iterator[TestClient]:
    serve_env = env[0]
    with TestClient(create_app(serve_env.settings()), raise_server_exceptions=False) as test_client:
        test_client.headers.update(serve_env.headers())
        yield test_client


def _artifact_outputs(art_dir: Path, raw) -> list:
    """Probabilities (classification) or values (regression) as Python floats."""
    art = load_artifact(art_dir)
    out = art.predict(art.encode(raw))
    return (out["probabilities"] if "probabilities" in out else out["values"]).tolist()


def _cli_outputs(art_dir: Path, files: list[Path]) -> list:
    result = predict_files(art_dir, files)
    if result.task == "classification":
        return [[v for k, v in row.items() if k.startswith("p_")] for row in result.rows]
    return [[v for k, v in row.items() if k != result.key] for row in result.rows]


def _server_outputs(client: TestClient, name: str, inputs: list) -> list:
    r = client.post(f"/v1/models/{name}/predict", json={"inputs": inputs})
    assert r.status_code == 200, r.text
    body = r.json()
    return body["probabilities"] if body.get("probabilities") is not None else [[v] for v in body["outputs"]]


def test_table_rows_answer_bit_identically_everywhere(env, client):
    _, arts, folder = env
    cli = _cli_outputs(arts["table"], [folder / "rows.csv"])
    assert cli == _artifact_outputs(arts["table"], folder / "rows.csv") == _artifact_outputs(arts["table"], ROWS)
    assert cli == _server_outputs(client, "table", ROWS)
    # numbers of the encoded width (one-hot columns, then numbers) get the same standardisation
    art = load_artifact(arts["table"])
    stats = art.preprocessing["standardize"]
    numbers = (art.encode(ROWS).double() * torch.tensor(stats["std"]) + torch.tensor(stats["mean"])).tolist()
    assert _server_outputs(client, "table", numbers) == _artifact_outputs(arts["table"], np.array(numbers))


def test_images_in_source_units_answer_bit_identically_everywhere(env, client):
    _, arts, folder = env
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (4, 3, 4, 3), dtype=np.uint8)  # (N, H, W, C), 0..255 as files hold them
    files = []
    for i, image in enumerate(pixels):
        files.append(folder / f"image{i}.png")
        Image.fromarray(image).save(files[-1])
    cli = _cli_outputs(arts["image"], files)
    assert cli == _artifact_outputs(arts["image"], files) == _artifact_outputs(arts["image"], pixels)
    assert cli == _server_outputs(client, "image", pixels.tolist())  # raw pixels, (H, W, C)
    assert cli == _server_outputs(client, "image", pixels.transpose(0, 3, 1, 2).tolist())  # (C, H, W)
    b64 = [{"b64": base64.b64encode(f.read_bytes()).decode()} for f in files]
    assert cli == _server_outputs(client, "image", b64)


def test_texts_answer_bit_identically_everywhere(env, client):
    _, arts, folder = env
    texts = ["a fine film", "one two three four five six seven eight nine ten eleven", "dull"]
    (folder / "texts.txt").write_text("\n".join(texts) + "\n")
    cli = _cli_outputs(arts["text"], [folder / "texts.txt"])
    assert cli == _artifact_outputs(arts["text"], texts) == _server_outputs(client, "text", texts)
    ids = load_artifact(arts["text"]).encode(texts).tolist()  # token ids are taken as they are
    assert cli == _server_outputs(client, "text", ids)


def test_series_windows_answer_bit_identically_everywhere(env, client):
    _, arts, folder = env
    windows = [[41.5, 38.0, 55.25, 60.0, 47.5], [10.0, 20.0, 30.0, 40.0, 50.0]]
    files = []
    for i, window in enumerate(windows):  # a series file: one step per row; the last 5 steps are the window
        files.append(folder / f"series{i}.csv")
        files[-1].write_text("value\n" + "".join(f"{v}\n" for v in [99.0, *window]))
    nested = [[[v] for v in window] for window in windows]  # (N, T, 1) in the series' own units
    cli = _cli_outputs(arts["series"], files)
    assert cli == _artifact_outputs(arts["series"], nested) == _artifact_outputs(arts["series"], files)
    assert cli == _server_outputs(client, "series", nested)


def test_series_files_too_short_or_not_numbers_say_why(env, tmp_path):
    art = load_artifact(env[1]["series"])
    (tmp_path / "short.csv").write_text("value\n1\n2\n")
    with pytest.raises(DataError, match="holds 2 steps.*last 5"):
        art.encode(tmp_path / "short.csv")
    (tmp_path / "words.csv").write_text("value\n1\n2\nthree\n4\n5\n")
    with pytest.raises(DataError, match="'three'.*row 4"):
        art.encode(tmp_path / "words.csv")


def test_a_masked_lm_model_is_refused_with_one_message_everywhere(env, client):
    _, arts, folder = env
    (folder / "mlm.txt").write_text("some text\n")
    with pytest.raises(ArtifactError, match=MLM_REFUSAL):
        predict_files(arts["mlm"], [folder / "mlm.txt"])
    art = load_artifact(arts["mlm"])
    with pytest.raises(ArtifactError, match=MLM_REFUSAL):
        art.encode(["some text"])
    with pytest.raises(ArtifactError, match=MLM_REFUSAL):  # the server's encoder, without HTTP
        encode_inputs(InputSpec.of(art), art, ["some text"])
    r = client.post("/v1/models/mlm/predict", json={"inputs": ["some text"]})
    assert r.status_code == 400 and MLM_REFUSAL in r.json()["error"]["message"]


def test_overflow_and_models_without_preprocessing_follow_the_servers_rules(tmp_path):
    """Before, only the server refused values that overflow once standardised (Python and the
    CLI answered NaN), and only the server took numbers for a model saved without preprocessing."""
    table = {"encoding": {"kind": "tabular", "columns": ["a", "b"], "categories": {}},
             "standardize": {"mean": [0.0, 0.0], "std": [0.5, 0.5], "axis": "feature"}}
    art_dir = _save(tmp_path / "t", {"arch": "mlp", "hidden": [4]}, (2,), "classification", table, ["x", "y"])
    with pytest.raises(DataError, match=r"inputs\[1\] \(a\): a value overflows float32"):
        load_artifact(art_dir).encode([{"a": 1, "b": 1}, {"a": 3e38, "b": 1}])
    (tmp_path / "rows.csv").write_text("a,b\n1,1\n-3e38,2\n")
    with pytest.raises(DataError, match="overflows float32"):
        predict_files(art_dir, [tmp_path / "rows.csv"])
    plain = load_artifact(_save(tmp_path / "p", {"arch": "mlp", "hidden": [4]}, (2,), "classification", {}, ["x", "y"]))
    assert torch.equal(plain.encode(np.array([[0.5, -2.0]])), torch.tensor([[0.5, -2.0]]))  # its own units
    with pytest.raises(DataError, match="saved without preprocessing"):
        plain.encode([{"a": 1}])


def test_docstring_examples() -> None:
    import doctest

    from dlforge import targets
    from dlforge.registry import encoding

    for module in (encoding, targets):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0 and result.failed == 0, module.__name__
