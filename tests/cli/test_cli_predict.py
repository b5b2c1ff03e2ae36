"""dlforge predict output people can use: whole file names, the user's ids, columns named
after the target."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from .test_cli import invoke, make_image_folder, only_run, write_config


def read_rows(path):
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def respondents_csv(path, n: int, seed: int, prefix: str = "R"):
    """Survey rows with a respondent ID column, two answers and a yes/no label."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    lines = ["respondent,a,b,answer"] + [
        f"{prefix}{i:04d},{a:.4f},{b:.4f},{'yes' if a + b > 0 else 'no'}" for i, (a, b) in enumerate(x)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_predict_keeps_the_id_column(tmp_path):
    train = respondents_csv(tmp_path / "survey.csv", 80, seed=0)
    cfg = write_config(tmp_path / "c.yaml", {"source": str(train), "target": "answer", "id_column": "respondent"})
    assert invoke("train", cfg, "--runs-dir", tmp_path / "runs", "--json").exit_code == 0
    model = only_run(tmp_path / "runs") / "model"
    new = tmp_path / "new.csv"
    new.write_text("b,respondent,a\n0.5,X17,0.9\n-1.0,X42,-2.0\n")  # reordered columns, new ids

    out = tmp_path / "pred.csv"
    assert invoke("predict", model, new, "-o", out).exit_code == 0
    rows = read_rows(out)
    assert list(rows[0])[:3] == ["respondent", "prediction", "confidence"]
    assert [r["respondent"] for r in rows] == ["X17", "X42"]
    result = invoke("predict", model, new, "--json")
    assert [json.loads(line)["respondent"] for line in result.stdout.splitlines()] == ["X17", "X42"]

    without_ids = tmp_path / "no_ids.csv"
    without_ids.write_text("a,b\n0.9,0.5\n-2.0,-1.0\n0.1,0.1\n")
    assert invoke("predict", model, without_ids, "-o", out).exit_code == 0
    assert [r["row"] for r in read_rows(out)] == ["1", "2", "3"]  # 1-based data rows


def test_regression_output_is_named_after_the_target(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 2))
    price = 200 + 40 * x[:, 0] - 25 * x[:, 1]
    train = tmp_path / "houses.csv"
    train.write_text("rooms,area,price\n" + "".join(f"{a:.4f},{b:.4f},{p:.2f}\n" for (a, b), p in zip(x, price)))
    cfg = write_config(tmp_path / "c.yaml", {"source": str(train), "target": "price"})
    assert invoke("train", cfg, "--runs-dir", tmp_path / "runs", "--json").exit_code == 0
    new = tmp_path / "new.csv"
    new.write_text("rooms,area\n0.1,0.2\n1.0,-1.0\n")

    out = tmp_path / "pred.csv"
    result = invoke("predict", only_run(tmp_path / "runs"), new, "-o", out)
    assert result.exit_code == 0, result.output
    rows = read_rows(out)
    assert list(rows[0]) == ["row", "price"] and [r["row"] for r in rows] == ["1", "2"]
    assert all(np.isfinite(float(r["price"])) for r in rows)
    table = invoke("predict", only_run(tmp_path / "runs"), new)
    assert "price" in table.output and "output_0" not in table.output


@pytest.fixture(scope="module")
def image_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("pets")
    images = make_image_folder(root / "imgs")
    cfg = write_config(root / "c.yaml", {"source": str(images), "split": {"val": 0.25, "test": 0.25}},
                       model={"arch": "cnn", "channels": [4]})
    assert invoke("train", cfg, "--runs-dir", root / "runs", "--json").exit_code == 0
    return only_run(root / "runs") / "model", images


def long_image_path(tmp_path, images):
    folder = tmp_path / "photos_from_the_field_trip_to_the_coast"
    folder.mkdir()
    path = folder / "a_rather_long_and_descriptive_name_for_this_dog.png"
    shutil.copy(images / "dogs" / "0.png", path)
    assert 100 < len(str(path)) < 160, len(str(path))
    return path


def test_long_image_paths_appear_whole_in_json_and_csv(image_model, tmp_path):
    model, images = image_model
    path = long_image_path(tmp_path, images)
    result = invoke("predict", model, path, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["input"] == str(path)
    out = tmp_path / "pred.csv"
    assert invoke("predict", model, path, "-o", out).exit_code == 0
    assert read_rows(out)[0]["input"] == str(path)


def test_long_image_paths_are_folded_never_cut_in_the_table(image_model, tmp_path, monkeypatch):
    model, images = image_model
    path = long_image_path(tmp_path, images)
    monkeypatch.setenv("COLUMNS", "200")  # rich reads the width of a non-terminal from COLUMNS
    wide = invoke("predict", model, path)
    assert wide.exit_code == 0 and str(path) in wide.output
    monkeypatch.setenv("COLUMNS", "60")
    narrow = invoke("predict", model, path)
    assert narrow.exit_code == 0 and "…" not in narrow.output
    # the first cell of every body line, joined, is the whole path folded over several lines
    cells = [line.split("│")[1].strip() for line in narrow.output.splitlines() if line.startswith("│")]
    assert "".join(cells) == str(path)
