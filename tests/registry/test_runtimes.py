"""Runtimes: an artifact's model.onnx in ONNX Runtime predicts what its PyTorch model does
(the reference), and the session takes dlforge's thread and optimisation settings."""

from __future__ import annotations

import onnxruntime as ort
import pytest
import torch
from torch.testing import assert_close

from dlforge.compress.onnx_export import export_onnx
from dlforge.errors import ArtifactError, ConfigError
from dlforge.models import build
from dlforge.registry.artifact import load_artifact, save_artifact
from dlforge.registry.runtimes import RUNTIMES, OrtModule, ort_session, runtime_model

CASES = {
    "mlp": ({"arch": "mlp", "hidden": [16]}, (6,)),
    "cnn": ({"arch": "cnn", "channels": [4, 8]}, (1, 8, 8)),
}


def _artifact_with_onnx(tmp_path, arch: str):
    spec, shape = CASES[arch]
    torch.manual_seed(0)
    model = build(spec, input_shape=shape, num_outputs=3).eval()
    onnx_path = export_onnx(model, torch.randn(2, *shape), tmp_path / "export.onnx")
    folder = save_artifact(model, tmp_path / "model", task="classification", class_names=["a", "b", "c"],
                           onnx={"file": "model.onnx"}, files={"model.onnx": onnx_path})
    return folder, shape


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_onnxruntime_artifact_predicts_as_torch(tmp_path, arch) -> None:
    folder, shape = _artifact_with_onnx(tmp_path, arch)
    x = torch.randn(40, *shape)
    ref = load_artifact(folder).predict(x)
    art = load_artifact(folder, runtime="onnxruntime")
    assert isinstance(art.model, OrtModule) and list(art.model.parameters()) == []
    got = art.predict(x, batch_size=16)  # several ORT calls, one of them short
    assert_close(got["probabilities"], ref["probabilities"], atol=1e-4, rtol=0)
    assert got["labels"] == ref["labels"] and torch.equal(got["indices"], ref["indices"])


def test_a_missing_onnx_file_says_how_to_export(tmp_path) -> None:
    folder, _ = _artifact_with_onnx(tmp_path, "mlp")
    (folder / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match="model.onnx is missing") as info:
        load_artifact(folder, runtime="onnxruntime")
    assert info.value.hint is not None and "dlforge export RUN --format onnx" in info.value.hint
    with pytest.raises(ArtifactError, match="not a file in the artifact"):  # a name that leaves the folder
        runtime_model(folder, {"onnx": {"file": "../export.onnx"}}, "onnxruntime")


def test_an_unknown_runtime_lists_the_known_ones(tmp_path) -> None:
    folder, _ = _artifact_with_onnx(tmp_path, "mlp")
    with pytest.raises(ConfigError, match="runtime 'tensorrt' is unknown") as info:
        load_artifact(folder, runtime="tensorrt")
    assert all(name in info.value.hint for name in RUNTIMES)


def test_the_default_file_name_is_model_onnx(tmp_path) -> None:
    folder, shape = _artifact_with_onnx(tmp_path, "mlp")
    module = runtime_model(folder, {}, "onnxruntime")  # no "onnx" record: model.onnx
    assert module.path == folder / "model.onnx"
    assert module(torch.randn(3, *shape)).dtype == torch.float32


def test_session_settings(tmp_path) -> None:
    folder, _ = _artifact_with_onnx(tmp_path, "mlp")
    options = ort_session(folder / "model.onnx", threads=1, optimization="basic").get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert ort_session(folder / "model.onnx").get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(ConfigError, match="optimization 'max' is unknown"):
        ort_session(folder / "model.onnx", optimization="max")
    with pytest.raises(ConfigError, match="threads is 0"):
        ort_session(folder / "model.onnx", threads=0)
    (tmp_path / "broken.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(ArtifactError, match="ONNX Runtime cannot load"):
        ort_session(tmp_path / "broken.onnx")


def test_token_ids_reach_onnxruntime_as_int64(tmp_path) -> None:
    spec = {"arch": "bert", "vocab_size": 30, "dim": 8, "num_layers": 1, "num_heads": 2, "ffn_dim": 16}
    model = build(spec, input_shape=(10,), num_outputs=2).eval()
    path = export_onnx(model, torch.randint(1, 30, (2, 10)), tmp_path / "b.onnx")
    x = torch.randint(1, 30, (3, 10), dtype=torch.int32)  # any integer dtype
    with torch.no_grad():
        assert_close(OrtModule(path)(x), model(x.long()), atol=1e-5, rtol=1e-4)
