"""dlforge compress / export on a BERT text run: heads and FFN pruned, a BERT student
distilled with hidden-state and attention matching, and ONNX with a dynamic sequence length."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from dlforge.cli import app
from dlforge.compress.measure import parameter_count
from dlforge.registry import load_artifact

runner = CliRunner()
BERT = {"arch": "bert", "dim": 32, "num_layers": 2, "num_heads": 4, "ffn_dim": 64, "max_position": 32}
TEXTS = ["Return the cosine of x (measured in radians).", "Remove a file (same as unlink()).",
         "Return a new datetime object.", "Log a message with severity ERROR on the root logger."]


def ok(*args) -> dict:
    result = runner.invoke(app, [str(a) for a in (*args, "--json")])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bert")
    config = root / "docs.yaml"
    config.write_text(yaml.safe_dump({"name": "docs", "data": {"source": "stdlib_docs", "max_len": 32, "vocab_size": 600},
                                      "model": BERT, "optim": {"name": "adamw", "lr": 0.003},
                                      "train": {"epochs": 2, "batch_size": 64}}))
    ok("train", config, "--runs-dir", root / "runs")
    return next((root / "runs").iterdir())


def test_bert_heads_and_ffn_pruned_into_a_smaller_artifact(run):
    record = ok("compress", run, "--method", "prune-structured", "--amount", "0.5")
    art = load_artifact(record["path"])
    assert art.meta["spec"]["num_heads"] == 2 and art.meta["spec"]["ffn_dim"] == 32
    assert parameter_count(art.meta["spec"]) == record["parameters_after"] < record["parameters_before"]
    assert len(art.predict(art.encode(TEXTS))["labels"]) == len(TEXTS)


def test_bert_student_distilled_with_intermediate_matching(run):
    student = "{arch: bert, dim: 32, num_layers: 1, num_heads: 4, ffn_dim: 64, max_position: 32}"
    record = ok("compress", run, "--method", "distill", "--student", student, "--intermediate", "--epochs", "1")
    art = load_artifact(record["path"])
    assert art.meta["spec"]["num_layers"] == 1 and record["settings"]["intermediate"] is True
    assert art.meta["spec"]["vocab_size"] == load_artifact(run).meta["spec"]["vocab_size"]


def test_bert_onnx_runs_any_sequence_length_like_torch(run):
    record = ok("export", run)
    assert record["parity"]["argmax_agreement"] == 1.0 and record["parity"]["max_abs_diff"] < 1e-4
    torch_art, ort_art = load_artifact(record["path"]), load_artifact(record["path"], runtime="onnxruntime")
    x = torch_art.encode(TEXTS)
    torch.testing.assert_close(ort_art.predict(x)["probabilities"], torch_art.predict(x)["probabilities"],
                               atol=1e-5, rtol=1e-4)
    short = x[:, :8]  # the exported graph takes another sequence length
    torch.testing.assert_close(ort_art.model(short), torch_art.model(short), atol=1e-4, rtol=1e-4)
