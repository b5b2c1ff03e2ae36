"""The dlforge command on every data source and every bad input.

Bad input must exit non-zero with a message naming the problem, print no traceback,
and leave no run directory behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from dlforge.cli import app
from dlforge.data import write_idx

runner = CliRunner()

FAST_TRAIN = {"epochs": 3, "batch_size": 16, "log_every_n_steps": 5}


def write_config(path: Path, data: dict, model: dict | None = None, **sections) -> Path:
    cfg = {"name": "t", "seed": 0, "data": data, "model": model or {"arch": "mlp", "hidden": [16]},
           "optim": {"name": "adam", "lr": 0.01}, "train": dict(FAST_TRAIN), **sections}
    path.write_text(yaml.safe_dump(cfg))
    return path


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_clean_failure(result, runs: Path, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in: {text}"
    assert not runs.exists() or not any(runs.iterdir()), "a run directory was left behind"


def only_run(runs: Path) -> Path:
    (run,) = list(runs.iterdir())
    return run


# ---------------------------------------------------------------- data sources

def make_csv(path: Path, n: int = 60, nan_at: int | None = None) -> Path:
    rng = np.random.default_rng(0)
    lines = ["height,width,colour,label"]
    for i in range(n):
        h, w = rng.normal(size=2)
        colour = ["red", "green", "blue"][i % 3]
        label = "big" if h + w > 0 else "small"
        lines.append(f"{'nan' if i == nan_at else f'{h:.4f}'},{w:.4f},{colour},{label}")
    path.write_text("\n".join(lines) + "\n")
    return path


def make_image_folder(root: Path, sizes=((8, 8),), per_class: int = 12) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(["cats", "dogs"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            w, h = sizes[i % len(sizes)]
            pixels = (rng.random((h, w)) * 80 + 150 * c).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(root / name / f"{i}.png")
    return root


def test_train_on_csv_then_predict(tmp_path):
    csv_path = make_csv(tmp_path / "shapes.csv")
    cfg = write_config(tmp_path / "c.yaml", {"source": str(csv_path), "target": "label"})
    runs = tmp_path / "runs"
    result = invoke("train", cfg, "--runs-dir", runs, "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"test_loss", "test_accuracy"} <= set(metrics)
    run = only_run(runs)
    assert {"config.yaml", "history.jsonl", "checkpoints", "model", "metrics.json"} <= {p.name for p in run.iterdir()}
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["train"]["epochs"] == 3 and resolved["optim"]["weight_decay"] == 0.0

    new_rows = tmp_path / "new.csv"
    new_rows.write_text("width,height,colour\n0.5,0.9,red\n-1.0,-2.0,blue\n")  # reordered, no target
    out = tmp_path / "pred.csv"
    result = invoke("predict", run / "model", new_rows, "--output", out)
    assert result.exit_code == 0, result.output
    rows = out.read_text().splitlines()
    assert rows[0].startswith("row,prediction,confidence,p_big,p_small") and len(rows) == 3


def test_train_on_image_folder_then_predict_an_image(tmp_path):
    root = make_image_folder(tmp_path / "imgs")
    cfg = write_config(tmp_path / "c.yaml", {"source": str(root), "split": {"val": 0.25, "test": 0.25}},
                       model={"arch": "cnn", "channels": [4, 8]})
    runs = tmp_path / "runs"
    result = invoke("train", cfg, "--runs-dir", runs, "--json")
    assert result.exit_code == 0, result.output
    result = invoke("predict", only_run(runs), root / "dogs" / "0.png", root / "cats" / "1.png", "--json")
    assert result.exit_code == 0, result.output
    preds = [json.loads(line) for line in result.stdout.splitlines()]
    assert [p["input"].endswith(".png") for p in preds] == [True, True]
    assert {p["prediction"] for p in preds} <= {"cats", "dogs"}


def test_train_on_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20).astype(np.uint8)
    images = (rng.random((60, 6, 6)) * 60 + labels[:, None, None] * 60).astype(np.uint8)
    (tmp_path / "idx").mkdir()
    write_idx(images, labels, tmp_path / "idx" / "train-images-idx3-ubyte.gz", tmp_path / "idx" / "train-labels-idx1-ubyte.gz")
    cfg = write_config(tmp_path / "c.yaml", {"source": str(tmp_path / "idx")}, model={"arch": "cnn", "channels": [4]})
    result = invoke("train", cfg, "--runs-dir", tmp_path / "runs", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["test_accuracy"] > 0.5


def test_train_builtin_with_overrides_and_resume(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", {"source": "spirals", "n_samples": 200})
    runs = tmp_path / "runs"
    result = invoke("train", cfg, "--runs-dir", runs, "--set", "train.epochs=2", "--set", "model.hidden=[8, 8]", "--json")
    assert result.exit_code == 0, result.output
    run = only_run(runs)
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["model"]["hidden"] == [8, 8] and resolved["train"]["epochs"] == 2
    records = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["type"] == "epoch"]
    assert len(epochs) == 2
    # resuming a finished run trains nothing more and reproduces its metrics
    before = json.loads((run / "metrics.json").read_text())
    result = invoke("resume", run, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads((run / "metrics.json").read_text()) == before


def test_datasets_lists_the_catalog():
    result = invoke("datasets", "--json")
    assert result.exit_code == 0
    names = {d["name"] for d in json.loads(result.stdout)}
    assert {"digits", "breast_cancer", "wine", "iris", "xor", "circles", "spirals"} <= names
    table = invoke("datasets")
    assert "digits" in table.stdout and "1x8x8" in table.stdout


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize(
    "patch, fragments",
    [
        ({"train": {**FAST_TRAIN, "epoch": 3}}, ["unknown key 'train.epoch'", "epochs"]),
        ({"optim": {"name": "adam", "lr": "fast"}}, ["optim.lr"]),
        ({"optim": {"name": "adam", "lr": -0.1}}, ["optim.lr", "greater than 0"]),
        ({"optim": {"name": "lbfgs"}}, ["optim.name", "adam"]),
        ({"train": {**FAST_TRAIN, "batch_size": 0}}, ["train.batch_size"]),
        ({"model": {"arch": "mlp", "hiden": [4]}}, ["model.hiden", "hidden"]),
        ({"model": {"arch": "mlp", "activation": "swishy"}}, ["model.activation", "relu"]),
        ({"model": {"arch": "transformer9"}}, ["model.arch", "cnn"]),
        ({"model": {"arch": "mlp", "num_outputs": 3}}, ["model.num_outputs", "2 classes"]),
        ({"data": {"source": "spirals", "split": {"val": 0.6, "test": 0.5}}}, ["data.split"]),
        ({"data": {"source": "digitz"}}, ["digitz", "digits"]),
        ({"train": {**FAST_TRAIN, "early_stopping": {"monitor": "val_f1"}}}, ["val_f1", "val_loss"]),
        ({"seed": "zero"}, ["seed"]),
    ],
)
def test_bad_config_is_explained(tmp_path, patch, fragments):
    cfg = {"name": "t", "seed": 0, "data": {"source": "spirals", "n_samples": 100}, "model": {"arch": "mlp"},
           "optim": {"name": "adam"}, "train": dict(FAST_TRAIN)}
    cfg.update(patch)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    runs = tmp_path / "runs"
    assert_clean_failure(invoke("train", path, "--runs-dir", runs), runs, *fragments)


def test_bad_override_is_explained(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", {"source": "xor"})
    runs = tmp_path / "runs"
    assert_clean_failure(invoke("train", cfg, "--runs-dir", runs, "--set", "train.epochs"), runs, "--set", "=")
    assert_clean_failure(invoke("train", cfg, "--runs-dir", runs, "--set", "train.epochs=many"), runs, "train.epochs")


def test_missing_config_file(tmp_path):
    runs = tmp_path / "runs"
    assert_clean_failure(invoke("train", tmp_path / "nope.yaml", "--runs-dir", runs), runs, "nope.yaml", "does not exist")


@pytest.mark.parametrize(
    "make, data, fragments",
    [
        (lambda d: d / "missing.csv", {"target": "label"}, ["missing.csv"]),
        (lambda d: make_csv(d / "a.csv"), {"target": "kind"}, ["kind", "label"]),
        (lambda d: make_csv(d / "a.csv", nan_at=4), {"target": "label", "missing": "error"}, ["height"]),
        (lambda d: make_csv(d / "a.csv"), {"target": "label", "categorical": "reject"}, ["colour"]),
        (lambda d: make_csv(d / "a.csv", n=6), {"target": "label", "split": {"val": 0.1, "test": 0.1}}, ["split"]),
        (lambda d: make_image_folder(d / "imgs", sizes=((8, 8), (9, 7))), {}, ["data.image_size"]),
    ],
)
def test_bad_data_is_explained(tmp_path, make, data, fragments):
    source = make(tmp_path)
    cfg = write_config(tmp_path / "c.yaml", {"source": str(source), **data})
    runs = tmp_path / "runs"
    assert_clean_failure(invoke("train", cfg, "--runs-dir", runs), runs, *fragments)


def test_predict_errors_are_explained(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", {"source": str(make_csv(tmp_path / "a.csv")), "target": "label"})
    runs = tmp_path / "runs"
    assert invoke("train", cfg, "--runs-dir", runs, "--json").exit_code == 0
    model = only_run(runs) / "model"
    bad = tmp_path / "bad.csv"
    bad.write_text("height,colour\n1.0,red\n")
    result = invoke("predict", model, bad)
    assert result.exit_code == 2 and "width" in result.output and "Traceback" not in result.output
    result = invoke("predict", tmp_path / "no-model", bad)
    assert result.exit_code == 2 and "missing" in result.output


def test_console_script_is_installed():
    exe = Path(sys.executable).with_name("dlforge")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "quickstart" in out.stdout and "predict" in out.stdout


@pytest.mark.slow
def test_quickstart_reaches_97_percent(tmp_path):
    result = invoke("quickstart", "--runs-dir", tmp_path / "runs", "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["test_accuracy"] >= 0.97


@pytest.mark.parametrize("example", sorted(Path(__file__).parents[2].joinpath("examples").glob("*.yaml")), ids=lambda p: p.stem)
def test_example_configs_train(tmp_path, example):
    extra = ["--set", "data.max_len=32"] if example.stem.startswith(("text_", "mlm_")) else []
    if example.stem == "text_finetune_scratch":  # starts from the MLM pretraining example's run
        pre = invoke("train", example.with_name("mlm_pretrain.yaml"), "--runs-dir", tmp_path / "pre",
                     "--set", "train.epochs=1", *extra, "--json")
        assert pre.exit_code == 0, pre.output
        extra += ["--set", f"model.pretrained={next((tmp_path / 'pre').iterdir())}"]
    result = invoke("train", example, "--runs-dir", tmp_path / "runs", "--set", "train.epochs=1", *extra, "--json")
    assert result.exit_code == 0, result.output
    assert "test_loss" in json.loads(result.stdout.strip().splitlines()[-1])


def test_no_validation_split_trains_without_val_metrics(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", {"source": "xor", "split": {"val": 0.0, "test": 0.2}})
    result = invoke("train", cfg, "--runs-dir", tmp_path / "runs", "--json")
    assert result.exit_code == 0, result.output
    run = only_run(tmp_path / "runs")
    assert not (run / "checkpoints" / "best.safetensors").exists()
    assert "test_accuracy" in json.loads(result.stdout.strip().splitlines()[-1])


def test_messages_with_square_brackets_print_literally(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", {"source": "digits"}, model={"arch": "cnn", "input_shape": [1, 28, 28]})
    result = invoke("train", cfg, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2
    assert "[1, 28, 28]" in result.output and "[1, 8, 8]" in result.output  # not eaten as markup


def test_diverged_run_reports_and_exits_1(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", {"source": "breast_cancer"}, model={"arch": "mlp", "hidden": [32, 32]},
                       optim={"name": "sgd", "lr": 100000.0})
    result = invoke("train", cfg, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "training stopped" in text and "non_finite" in text and "bad_layers=[" in text
    run = only_run(tmp_path / "runs")
    assert (run / "nan_report.json").is_file() and (run / "report.html").is_file()
