"""dlforge evaluate / report / cv, and what dlforge train leaves in a run directory."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from typer.testing import CliRunner

from dlforge.cli import app

from .test_cli import make_csv, make_image_folder, only_run, write_config

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    cfg = write_config(root / "c.yaml", {"source": "digits"}, model={"arch": "cnn", "channels": [8, 16]},
                       train={"epochs": 3, "batch_size": 64, "log_every_n_steps": 2})
    result = invoke("train", cfg, "--runs-dir", root / "runs")
    assert result.exit_code == 0, result.output
    return only_run(root / "runs"), result


def test_train_writes_evaluation_diagnosis_and_report(digits_run):
    run, result = digits_run
    assert {"evaluation.json", "diagnosis.json", "report.html"} <= {p.name for p in run.iterdir()}
    evaluation = json.loads((run / "evaluation.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert evaluation["split"] == "test" and len(evaluation["confusion"]) == 10
    assert metrics["test_accuracy"] == evaluation["metrics"]["accuracy"]
    assert isinstance(json.loads((run / "diagnosis.json").read_text()), list)
    html = (run / "report.html").read_text()
    assert "data:image/png;base64," in html
    assert "report:" in result.output and "test_f1_macro" in result.output


def test_evaluate_run_dir_reproduces_test_metrics(digits_run):
    run, _ = digits_run
    before = json.loads((run / "metrics.json").read_text())
    result = invoke("evaluate", run, "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["accuracy"] == pytest.approx(before["test_accuracy"], abs=1e-6)
    assert metrics["f1_macro"] == pytest.approx(before["test_f1_macro"], abs=1e-6)


def test_evaluate_on_other_data_matches_labels_by_name(digits_run):
    run, _ = digits_run
    result = invoke("evaluate", run / "model", "--data", "digits", "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["accuracy"] > 0.5 and math.isfinite(metrics["log_loss"])


def test_evaluate_with_labels_the_model_does_not_know(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", {"source": str(make_csv(tmp_path / "a.csv")), "target": "label"})
    assert invoke("train", cfg, "--runs-dir", tmp_path / "runs", "--json").exit_code == 0
    other = tmp_path / "other.csv"
    other.write_text("height,width,colour,label\n0.1,0.2,red,huge\n0.3,0.1,blue,small\n")
    result = invoke("evaluate", only_run(tmp_path / "runs"), "--data", other, "--target", "label")
    assert result.exit_code == 2 and "huge" in result.output and "Traceback" not in result.output


def test_evaluate_image_model_on_an_image_folder(tmp_path):
    root = make_image_folder(tmp_path / "imgs")
    cfg = write_config(tmp_path / "c.yaml", {"source": str(root), "split": {"val": 0.25, "test": 0.25}},
                       model={"arch": "cnn", "channels": [4]})
    assert invoke("train", cfg, "--runs-dir", tmp_path / "runs", "--json").exit_code == 0
    result = invoke("evaluate", only_run(tmp_path / "runs"), "--data", root, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["n"] == 24


def test_report_command_rewrites_the_report(digits_run):
    run, _ = digits_run
    (run / "report.html").unlink()
    result = invoke("report", run)
    assert result.exit_code == 0 and (run / "report.html").is_file()
    assert invoke("report", run.parent / "nope").exit_code == 2


def test_cv_command_prints_folds_and_ratios(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", {"source": "iris", "split": {"val": 0.0, "test": 0.0}},
                       train={"epochs": 5, "batch_size": 16})
    out = tmp_path / "cv.json"
    result = invoke("cv", cfg, "--folds", "3", "--output", out)
    assert result.exit_code == 0, result.output
    assert "mean ± std" in result.output
    payload = json.loads(out.read_text())
    assert len(payload["folds"]) == 3 and len(payload["class_ratios"]) == 3
    for ratio in payload["class_ratios"]:
        assert ratio == pytest.approx(payload["overall_ratio"], abs=0.03)
    yaml.safe_dump(payload)  # plain data
