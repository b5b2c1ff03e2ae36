"""`dlforge train` on odd sizes and devices: it trains, or exits 2 with a message and no run folder."""

from __future__ import annotations

import pytest
import torch

from .test_cli import assert_clean_failure, invoke, make_csv, only_run, write_config

BN_MLP = {"arch": "mlp", "hidden": [16], "batch_norm": "before"}


def csv_config(tmp_path, rows: int = 60, split: dict | None = None, model: dict | None = None, **train):
    data = {"source": str(make_csv(tmp_path / "shapes.csv", n=rows)), "target": "label",
            "split": split or {"val": 0.0, "test": 0.25}}
    return write_config(tmp_path / "c.yaml", data, model, train={"epochs": 2, "batch_size": 16, **train})


@pytest.mark.parametrize("device", ["cuda", "gpu", "cuda:{n}"])
def test_an_unavailable_device_exits_2_without_a_run_folder(tmp_path, device):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this torch has CUDA")
    device = device.format(n=torch.cuda.device_count())  # one past the last GPU
    runs = tmp_path / "runs"
    result = invoke("train", csv_config(tmp_path), "--runs-dir", runs, "--set", f"train.device={device}")
    assert_clean_failure(result, runs, f"train.device is '{device}'", "hint:", "auto, cpu")


def test_batch_norm_with_a_last_batch_of_one_trains_and_says_so(tmp_path):
    runs = tmp_path / "runs"  # 45 training rows in batches of 44: the last would hold one row
    result = invoke("train", csv_config(tmp_path, model=BN_MLP, batch_size=44), "--runs-dir", runs)
    assert result.exit_code == 0, result.output
    assert "joins the batch before it (45 samples)" in " ".join(result.output.split())
    assert (only_run(runs) / "model" / "model.json").is_file()


def test_batch_norm_with_one_training_row_exits_2_without_a_run_folder(tmp_path):
    runs = tmp_path / "runs"
    cfg = csv_config(tmp_path, rows=4, split={"val": 0.0, "test": 0.7, "stratify": False}, model=BN_MLP)
    result = invoke("train", cfg, "--runs-dir", runs)
    assert_clean_failure(result, runs, "1 sample", "batch norm")


def test_a_batch_larger_than_the_data_trains_and_says_so_once(tmp_path):
    runs = tmp_path / "runs"
    result = invoke("train", csv_config(tmp_path, batch_size=1000), "--runs-dir", runs)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert text.count("train.batch_size 1000 is larger than the 45 training samples") == 1
    assert only_run(runs).is_dir()
