"""One units contract: the same raw inputs give the same answers through the CLI (`dlforge
predict`), Python (`Artifact.encode` + `predict`), the pipeline (`load_data`, the encoding
training used) and the server (`POST /v1/models/{name}/predict`)."""

from __future__ import annotations

import base64
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch.testing import assert_close
from typer.testing import CliRunner

from dlforge.cli import app as cli_app
from dlforge.config import load_config
from dlforge.data import load_builtin, load_source, split_indices
from dlforge.pipeline import load_data
from dlforge.registry import load_artifact

SPLIT = {"val": 0.2, "test": 0.2, "stratify": True}
N = 12  # test samples sent down every path


def _train(tmp_path: Path, data: dict) -> tuple[Path, Path]:
    cfg = {"name": "paths", "seed": 0, "data": {**data, "split": SPLIT}, "model": {"arch": "mlp", "hidden": [32]},
           "optim": {"name": "adam", "lr": 0.01}, "train": {"epochs": 4, "batch_size": 32}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(cli_app, ["train", str(path), "--runs-dir", str(tmp_path / "runs"), "--json"])
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "runs").iterdir()
    return path, run


def _cli(run: Path, *inputs: Path) -> tuple[list[str], torch.Tensor]:
    result = CliRunner().invoke(cli_app, ["predict", str(run), *map(str, inputs), "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    probs = [[v for k, v in row.items() if k.startswith("p_")] for row in rows]
    return [row["prediction"] for row in rows], torch.tensor(probs)


def _server(serve_env, make_client, run: Path, name: str, inputs: list) -> tuple[list[str], torch.Tensor]:
    serve_env.registry.register(run, name)
    client = make_client()
    r = client.post(f"/v1/models/{name}/predict", json={"inputs": inputs}, headers=serve_env.headers())
    assert r.status_code == 200, r.text
    return r.json()["outputs"], torch.tensor(r.json()["probabilities"])


def _same(a: tuple[list[str], torch.Tensor], b: tuple[list[str], torch.Tensor], atol: float = 1e-5) -> None:
    assert a[0] == b[0]
    assert_close(a[1], b[1], atol=atol, rtol=0)


@pytest.mark.slow
def test_digits_raw_pixels_and_png_files_answer_alike_everywhere(tmp_path, serve_env, make_client):
    config, run = _train(tmp_path, {"source": "digits"})
    art = load_artifact(run)
    bundle = load_builtin("digits")
    _, _, test_idx = split_indices(bundle, **SPLIT, seed=0)
    idx = test_idx[:N]
    raw = np.round(bundle.x[idx, 0] * 16)  # (N, 8, 8): sklearn's own 0..16 pixels

    python = art.predict(art.encode(raw))
    python = (python["labels"], python["probabilities"])
    prepared_x = load_data(load_config(config)).test.tensors[0][:N]  # the pipeline's encoding of the same rows
    assert torch.equal(art.encode(raw), prepared_x)
    pipeline = art.predict(prepared_x)
    _same(python, (pipeline["labels"], pipeline["probabilities"]), atol=0)
    _same(python, _server(serve_env, make_client, run, "digits", raw.tolist()))

    # The same digits as 0..255 PNG files (rounded to whole levels): the CLI reads the files,
    # the server the same bytes in base64; both equal Python on the files, and the raw answers
    # up to the rounding.
    pngs = []
    for i, pixels in enumerate(raw):
        pngs.append(tmp_path / f"digit{i}.png")
        Image.fromarray(np.round(pixels * 255 / 16).astype(np.uint8)).save(pngs[-1])
    files = art.predict(art.encode(pngs))
    files = (files["labels"], files["probabilities"])
    _same(files, _cli(run, *pngs))
    b64 = [{"b64": base64.b64encode(p.read_bytes()).decode()} for p in pngs]
    _same(files, _server(serve_env, make_client, run, "digits-png", b64))
    _same(files, python, atol=0.02)


@pytest.mark.slow
def test_table_rows_answer_alike_everywhere(tmp_path, serve_env, make_client):
    rng = np.random.default_rng(0)
    source = tmp_path / "shapes.csv"
    lines = ["height,width,colour,label"]
    for i in range(120):
        h, w = rng.normal(size=2) * [10, 2] + [170, 5]
        lines.append(f"{h:.3f},{w:.3f},{['red', 'green', 'blue'][i % 3]},{'big' if h / 10 + w / 2 > 19.5 else 'small'}")
    source.write_text("\n".join(lines) + "\n")
    config, run = _train(tmp_path, {"source": str(source), "target": "label"})
    art = load_artifact(run)
    _, _, test_idx = split_indices(load_source(str(source), target="label"), **SPLIT, seed=0)
    rows = tmp_path / "rows.csv"
    rows.write_text("\n".join([lines[0], *(lines[1 + i] for i in test_idx[:N])]) + "\n")

    python = art.predict(art.encode(rows))
    python = (python["labels"], python["probabilities"])
    prepared_x = load_data(load_config(config)).test.tensors[0][:N]
    assert_close(art.encode(rows), prepared_x, atol=0, rtol=0)
    pipeline = art.predict(prepared_x)
    _same(python, (pipeline["labels"], pipeline["probabilities"]), atol=0)
    _same(python, _cli(run, rows))
    with rows.open() as f:
        records = [{"height": float(r["height"]), "width": float(r["width"]), "colour": r["colour"]}
                   for r in csv.DictReader(f)]
    _same(python, _server(serve_env, make_client, run, "shapes", records))
