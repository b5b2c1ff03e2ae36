"""dlforge evaluate / report / cv, and what dlforge train leaves in a run directory."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import accuracy_score, mean_squared_error
from typer.testing import CliRunner

from dlforge.cli import app
from dlforge.registry import load_artifact

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


# ---------------------------------------------------------------- evaluate --data: read as the model was trained

def weights_csv(path, n: int, seed: int):
    """An integer regression target in its own units (pounds, ~100..220), as people record it."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(2, n))
    weight = np.round(160 + 25 * a + 15 * b + rng.normal(0, 3, n)).astype(int)
    path.write_text("a,b,weight\n" + "".join(f"{x:.4f},{z:.4f},{w}\n" for x, z, w in zip(a, b, weight)))
    return path, weight


def assert_rmse(rmse: float, y: np.ndarray, predictions: np.ndarray) -> None:
    """dlforge's RMSE equals scikit-learn's on the artifact's predictions (float32 outputs: rtol 1e-6)."""
    expected = mean_squared_error(y, predictions) ** 0.5
    torch.testing.assert_close(torch.tensor(rmse, dtype=torch.float64),
                               torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=0)


@pytest.fixture(scope="module")
def weight_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    train_csv, _ = weights_csv(root / "weights.csv", 240, seed=0)
    cfg = write_config(root / "c.yaml", {"source": str(train_csv), "target": "weight", "task": "regression"})
    result = invoke("train", cfg, "--runs-dir", root / "runs", "--json")
    assert result.exit_code == 0, result.output
    return only_run(root / "runs"), root


def test_evaluate_data_scores_an_integer_target_as_regression_in_its_units(weight_run):
    run, root = weight_run
    new_csv, weight = weights_csv(root / "new_weights.csv", 50, seed=1)
    own = {name: (run / name).read_bytes() for name in ("evaluation.json", "report.html")}
    result = invoke("evaluate", run, "--data", new_csv)
    assert result.exit_code == 0, result.output

    art = load_artifact(run / "model")
    predictions = art.predict(art.encode(new_csv))["values"][:, 0].double().numpy()
    (folder,) = (run / "evaluations").iterdir()
    assert folder.name.startswith("new_weights-") and f"wrote: {folder}" in result.output
    saved = json.loads((folder / "evaluation.json").read_text())
    assert saved["task"] == "regression" and saved["data"] == str(new_csv) and saved["metrics"]["n"] == 50
    assert_rmse(saved["metrics"]["rmse"], weight, predictions)
    assert (folder / "report.html").is_file()
    assert {name: (run / name).read_bytes() for name in own} == own  # the run's test evaluation is untouched


def test_evaluate_data_prints_the_same_rmse_and_an_artifact_alone_writes_only_under_out(weight_run, tmp_path):
    run, root = weight_run
    new_csv, weight = weights_csv(tmp_path / "later.csv", 30, seed=2)
    result = invoke("evaluate", run / "model", "--data", new_csv, "--json")  # run/model: still the run's
    assert result.exit_code == 0, result.output
    art = load_artifact(run / "model")
    predictions = art.predict(art.encode(new_csv))["values"][:, 0].double().numpy()
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    assert_rmse(printed["rmse"], weight, predictions)

    alone = tmp_path / "alone"
    shutil.copytree(run / "model", alone)
    result = invoke("evaluate", alone, "--data", new_csv)
    assert result.exit_code == 0 and "nothing written" in result.output
    assert sorted(p.name for p in alone.iterdir()) == ["model.json", "model.safetensors"]
    result = invoke("evaluate", alone, "--data", new_csv, "--out", tmp_path / "scores")
    assert result.exit_code == 0, result.output
    (folder,) = (tmp_path / "scores").iterdir()
    assert folder.name.startswith("later-") and (folder / "evaluation.json").is_file()


def test_evaluate_data_names_a_missing_target_column(weight_run, tmp_path):
    run, _ = weight_run
    unlabelled = tmp_path / "unlabelled.csv"
    unlabelled.write_text("a,b\n0.1,0.2\n0.3,0.4\n")
    before = sorted((run / "evaluations").glob("*")) if (run / "evaluations").exists() else []
    result = invoke("evaluate", run, "--data", unlabelled)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "'weight'" in result.output and "--target" in result.output
    after = sorted((run / "evaluations").glob("*")) if (run / "evaluations").exists() else []
    assert after == before  # a failed evaluation leaves no folder behind


def grades_csv(path, n: int, seed: int, labels=None):
    """Class labels written as integers (1, 2, 3), separable from the two features."""
    rng = np.random.default_rng(seed)
    grade = rng.integers(1, 4, n) if labels is None else np.asarray(labels)
    x = rng.normal(size=(n, 2)) * 0.3 + grade[:, None].astype(float)
    path.write_text("p,q,grade\n" + "".join(f"{p:.4f},{q:.4f},{g}\n" for (p, q), g in zip(x, grade)))
    return path


def test_evaluate_data_matches_integer_labels_by_class_name(tmp_path):
    train_csv = grades_csv(tmp_path / "grades.csv", 150, seed=0)
    cfg = write_config(tmp_path / "c.yaml", {"source": str(train_csv), "target": "grade"})
    assert invoke("train", cfg, "--runs-dir", tmp_path / "runs", "--json").exit_code == 0
    run = only_run(tmp_path / "runs")
    assert load_artifact(run).class_names == ["1", "2", "3"]
    # one batch of grade-3 rows, written the way another tool writes integers
    new_csv = grades_csv(tmp_path / "grade3.csv", 20, seed=1, labels=[3] * 20)
    new_csv.write_text(new_csv.read_text().replace(",3\n", ",3.0\n", 5))
    result = invoke("evaluate", run, "--data", new_csv, "--json")
    assert result.exit_code == 0, result.output
    art = load_artifact(run)
    predicted = art.predict(art.encode(new_csv))["labels"]
    accuracy = json.loads(result.stdout.strip().splitlines()[-1])["accuracy"]  # torchmetrics counts in float32
    torch.testing.assert_close(torch.tensor(accuracy), torch.tensor(accuracy_score(["3"] * 20, predicted)))
