"""The dlforge command on text and time series: train, predict raw texts, list the sets."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from dlforge.cli import app

runner = CliRunner()
TINY_BERT = {"arch": "bert", "dim": 32, "num_layers": 1, "num_heads": 2, "ffn_dim": 64, "max_position": 32}


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def train(tmp_path, data: dict, name: str) -> str:
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump({"name": name, "data": data, "model": TINY_BERT,
                                      "optim": {"name": "adamw", "lr": 0.003},
                                      "train": {"epochs": 2, "batch_size": 64}}))
    result = invoke("train", config, "--runs-dir", tmp_path / "runs", "--json")
    assert result.exit_code == 0, result.output
    return next(p for p in (tmp_path / "runs").iterdir() if p.name.startswith(name))


def test_predict_classifies_raw_texts_from_txt_and_jsonl(tmp_path):
    run_dir = train(tmp_path, {"source": "stdlib_docs", "max_len": 32, "vocab_size": 600}, "docs")
    texts = ["Return the cosine of x (measured in radians).", "Remove a file (same as unlink())."]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n\n")
    (tmp_path / "texts.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    classes = {"collections", "datetime", "logging", "math", "os", "re"}
    for file in ("texts.txt", "texts.jsonl"):
        result = invoke("predict", run_dir, tmp_path / file, "--json")
        assert result.exit_code == 0, result.output
        rows = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
        assert len(rows) == 2 and {r["prediction"] for r in rows} <= classes
        assert all(abs(sum(v for k, v in r.items() if k.startswith("p_")) - 1) < 1e-5 for r in rows)


def test_a_masked_lm_model_refuses_to_predict_labels(tmp_path):
    run_dir = train(tmp_path, {"source": "pydoc_topics", "task": "mlm", "max_len": 32, "vocab_size": 400}, "mlm")
    (tmp_path / "texts.txt").write_text("some text\n")
    result = invoke("predict", run_dir, tmp_path / "texts.txt")
    assert result.exit_code == 2 and "masked-LM" in result.output and "Traceback" not in result.output


def test_datasets_lists_text_sets_and_series():
    result = invoke("datasets", "--json")
    assert result.exit_code == 0
    names = {e["name"]: e for e in json.loads(result.output)}
    assert names["stdlib_docs"]["n_classes"] == 6 and names["stdlib_docs"]["kind"] == "text"
    assert names["pydoc_topics"]["task"] == "mlm"
    assert names["sunspots"]["n_samples"] == 309 and names["co2"]["kind"] == "sequence"
