"""Artifact round trip and every way a model folder can be broken."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from dlforge.errors import ArtifactError
from dlforge.models import build
from dlforge.registry import load_artifact, save_artifact


def _model(arch="cnn"):
    torch.manual_seed(0)
    if arch == "cnn":
        return build({"arch": "cnn", "channels": [4, 8], "dropout": 0.1}, input_shape=(1, 8, 8), num_outputs=3)
    return build({"arch": "mlp", "hidden": [16, 8], "batch_norm": "before"}, input_shape=(5,), num_outputs=1)


@pytest.mark.parametrize("arch", ["cnn", "mlp"])
def test_round_trip_gives_identical_outputs(tmp_path, arch):
    model = _model(arch).eval()
    x = torch.randn(6, *model.config.input_shape)
    folder = save_artifact(model, tmp_path / "m", task="classification" if arch == "cnn" else "regression",
                           class_names=["a", "b", "c"] if arch == "cnn" else None,
                           preprocessing={"standardize": None}, metrics={"val_loss": 0.5})
    art = load_artifact(folder)
    torch.testing.assert_close(art.model(x), model(x), rtol=0, atol=0)
    meta = json.loads((folder / "model.json").read_text())
    assert meta["arch"] == arch and meta["metrics"] == {"val_loss": 0.5}
    assert meta["input_signature"] == {"shape": [None, *model.config.input_shape], "dtype": "float32"}
    assert {"dlforge", "torch", "numpy", "python"} <= set(meta["versions"])
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.safetensors"]


def test_predict_returns_labels_and_probabilities(tmp_path):
    art = load_artifact(save_artifact(_model(), tmp_path / "m", task="classification", class_names=["a", "b", "c"]))
    out = art.predict(torch.randn(4, 1, 8, 8))
    assert out["probabilities"].shape == (4, 3)
    torch.testing.assert_close(out["probabilities"].sum(dim=1), torch.ones(4))
    assert all(label in {"a", "b", "c"} for label in out["labels"])
    with pytest.raises(ArtifactError, match="per-sample shape"):
        art.predict(torch.randn(4, 64))


def test_existing_folder_is_not_overwritten_by_default(tmp_path):
    save_artifact(_model(), tmp_path / "m", task="classification")
    with pytest.raises(ArtifactError, match="already exists"):
        save_artifact(_model(), tmp_path / "m", task="classification")


def test_missing_files_are_named(tmp_path):
    folder = save_artifact(_model(), tmp_path / "m", task="classification")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ArtifactError, match="model.safetensors is missing"):
        load_artifact(folder)
    with pytest.raises(ArtifactError, match="model.json is missing"):
        load_artifact(tmp_path / "nowhere")


def test_unknown_arch_is_a_clear_error(tmp_path):
    folder = save_artifact(_model(), tmp_path / "m", task="classification")
    meta = json.loads((folder / "model.json").read_text())
    meta["spec"]["arch"] = "capsnet"
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="capsnet"):
        load_artifact(folder)


def test_shape_mismatch_names_the_tensor(tmp_path):
    folder = save_artifact(_model(), tmp_path / "m", task="classification")
    other = build({"arch": "cnn", "channels": [4, 16]}, input_shape=(1, 8, 8), num_outputs=3)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(folder / "model.safetensors"))
    with pytest.raises(ArtifactError, match="do not match"):
        load_artifact(folder)


def test_pickle_file_posing_as_weights_is_refused(tmp_path):
    folder = save_artifact(_model(), tmp_path / "m", task="classification")
    torch.save(_model().state_dict(), folder / "model.safetensors")  # a pickle, not safetensors
    with pytest.raises(ArtifactError, match="safetensors"):
        load_artifact(folder)


def test_not_json_is_a_clear_error(tmp_path):
    folder = save_artifact(_model(), tmp_path / "m", task="classification")
    (folder / "model.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_artifact(folder)


def test_predict_answers_in_the_targets_units(tmp_path):
    model = _model("mlp").eval()
    stats = {"mean": [152000.0], "std": [77000.0]}
    folder = save_artifact(model, tmp_path / "m", task="regression",
                           preprocessing={"standardize": None, "target_standardize": stats})
    x = torch.randn(7, 5)
    values = load_artifact(folder).predict(x)["values"]
    with torch.no_grad():
        expected = 152000.0 + 77000.0 * model(x)
    torch.testing.assert_close(values, expected)
    assert values.shape == (7, 1)
