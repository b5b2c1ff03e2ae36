"""dlforge compress / export / variants on a real run (digits CNN), end to end.

Every variant must be an artifact that load_artifact, evaluate and predict use unchanged,
record what made it, and score close to its parent on the run's own test split; bad
input exits 2 and leaves no folder behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dlforge.cli import app
from dlforge.compress.measure import parameter_count, zero_share
from dlforge.pipeline.evaluation import run_prepared
from dlforge.pipeline.run import first_samples
from dlforge.registry import load_artifact

from .test_cli import only_run, write_config

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def ok(*args) -> dict:
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("compress")
    cfg = write_config(root / "c.yaml", {"source": "digits"}, model={"arch": "cnn", "channels": [16, 32]},
                       train={"epochs": 4, "batch_size": 64})
    result = invoke("train", cfg, "--runs-dir", root / "runs")
    assert result.exit_code == 0, result.output
    return only_run(root / "runs")


@pytest.fixture(scope="module")
def held_out(run):
    parent = load_artifact(run)
    return first_samples(run_prepared(run, parent).test, 270)[0]


def test_static_int8_variant_is_an_artifact_close_to_its_parent(run, held_out):
    record = ok("compress", run, "--method", "quantize-static")
    assert record["method"] == "quantize-static" and record["parent"] == str(run / "model")
    art, parent = load_artifact(record["path"]), load_artifact(run)
    assert art.meta["quantization"]["kind"] == "static_int8"
    agree = (art.predict(held_out)["indices"] == parent.predict(held_out)["indices"]).float().mean().item()
    assert agree >= 0.97
    assert record["metrics"]["accuracy"] >= record["parent_metrics"]["accuracy"] - 0.02
    evaluated = ok("evaluate", record["path"], "--data", "digits", "--out", run / "ev")
    assert evaluated["accuracy"] > 0.8


def test_structured_pruning_shrinks_parameters_and_file(run):
    record = ok("compress", run, "--method", "prune-structured", "--amount", "0.5", "--epochs", "1")
    art = load_artifact(record["path"])
    assert art.meta["spec"]["channels"] == [8, 16]
    assert parameter_count(art.meta["spec"]) == record["parameters_after"] < record["parameters_before"]
    size = (run / "model" / "model.safetensors").stat().st_size
    assert (load_artifact(record["path"]).path / "model.safetensors").stat().st_size < 0.5 * size


def test_magnitude_pruning_with_retraining_keeps_the_zeros(run):
    record = ok("compress", run, "--method", "prune", "--amount", "0.8", "--scope", "global", "--epochs", "1")
    assert record["sparsity"] == pytest.approx(0.8, abs=0.01)
    art = load_artifact(record["path"])
    assert zero_share(art.model) == pytest.approx(0.8, abs=0.01)  # retraining did not refill them
    assert parameter_count(art.meta["spec"]) == parameter_count(load_artifact(run).meta["spec"])


def test_distilled_student_takes_the_student_spec(run):
    record = ok("compress", run, "--method", "distill", "--student", "{arch: mlp, hidden: [32]}", "--epochs", "3")
    art = load_artifact(record["path"])
    assert art.meta["spec"]["arch"] == "mlp" and record["teacher_spec"]["arch"] == "cnn"
    assert record["settings"]["temperature"] == 4.0 and record["metrics"]["accuracy"] > 0.5


def test_onnx_export_parity_and_runtime(run, held_out, tmp_path):
    record = ok("export", run, "--format", "onnx")
    assert record["file"] == "model.onnx" and record["parity"]["argmax_agreement"] == 1.0
    assert record["parity"]["max_abs_diff"] < 1e-4 and record["parity"]["n"] == len(held_out)
    torch_art = load_artifact(record["path"])
    ort_art = load_artifact(record["path"], runtime="onnxruntime")
    torch.testing.assert_close(ort_art.predict(held_out)["probabilities"], torch_art.predict(held_out)["probabilities"],
                               atol=1e-5, rtol=1e-4)


def test_onnx_dynamic_int8_is_smaller(run):
    fp32 = ok("export", run, "--format", "onnx")
    int8 = ok("export", run, "--quantize", "dynamic")
    assert int8["quantize"] == "dynamic" and int8["parity"]["argmax_agreement"] >= 0.95
    assert (Path(int8["path"]) / "model.onnx").stat().st_size < (Path(fp32["path"]) / "model.onnx").stat().st_size


def test_variants_report_measures_every_variant(run, chromium, tmp_path):
    ok("compress", run, "--method", "quantize-dynamic")
    ok("export", run, "--format", "onnx")
    page = tmp_path / "variants.html"
    result = ok("variants", run, "--calls", "3", "--out", page)
    rows = result["rows"]
    assert rows[0]["name"] == "parent" and rows[0]["parent"]
    assert {"torch", "onnxruntime"} <= {r["runtime"] for r in rows}
    for row in rows:
        assert {(t["threads"], t["batch"]) for t in row["timings"]} == {(1, 1), (1, 32), (2, 1), (2, 32)}
        assert all(t["p50_ms"] <= t["p99_ms"] for t in row["timings"])
        assert row["metric"] is None or 0 <= row["metric"] <= 1
    from tests.evaluate.test_report_browser import run_chromium
    from tests.evaluate.test_report import parse

    body = parse(run_chromium(chromium, page, tmp_path, "--dump-dom")).body
    assert body.get("data-figures") == "1" and body.get("data-figures-loaded") == "1"
    assert body.get("data-errors") == ""


@pytest.mark.parametrize("args, message", [
    (["--method", "shrink"], "unknown compression method"),
    (["--method", "quantize-dynamic", "--amount", "0.5"], "has no setting amount"),
    (["--method", "distill"], "needs a student model spec"),
    (["--method", "distill", "--student", "{arch: mlp, hidden: [0]}"], "hidden"),
])
def test_bad_compress_input_exits_2_and_writes_nothing(run, args, message):
    before = sorted(p.name for p in (run / "variants").iterdir()) if (run / "variants").exists() else []
    result = invoke("compress", run, *args)
    assert result.exit_code == 2 and message in result.output
    after = sorted(p.name for p in (run / "variants").iterdir()) if (run / "variants").exists() else []
    assert after == before


def test_missing_run_and_taken_out_folder(run, tmp_path):
    missing = invoke("compress", tmp_path / "nope", "--method", "quantize-dynamic")
    assert missing.exit_code == 2 and "does not exist" in missing.output
    (tmp_path / "taken").mkdir()
    taken = invoke("export", run, "--out", tmp_path / "taken")
    assert taken.exit_code == 2 and "already exists" in taken.output
    assert list((tmp_path / "taken").iterdir()) == []
