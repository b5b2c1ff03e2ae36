"""From a CSV to a served prediction: ``dlforge train``, ``dlforge registry register``,
``dlforge keys create``, then the app answers with the artifact's own predictions (raw
column values standardised by the stored preprocessing) and reports drift against the
reference the training run stored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from fastapi.testclient import TestClient
from torch.testing import assert_close
from typer.testing import CliRunner

from dlforge.cli import app as cli
from dlforge.registry.artifact import load_artifact
from dlforge.serve.main import create_app
from dlforge.serve.settings import ServeSettings

runner = CliRunner()


def _invoke(*args: str) -> str:
    result = runner.invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.stdout


def _train(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(loc=[10.0, -3.0], scale=[2.0, 0.5], size=(160, 2))
    label = np.where(x[:, 0] - 10.0 + 4.0 * (x[:, 1] + 3.0) > 0, "yes", "no")
    lines = ["a,b,label"] + [f"{a:.4f},{b:.4f},{y}" for (a, b), y in zip(x, label)]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    cfg = {"name": "e2e", "seed": 0, "data": {"source": str(tmp_path / "d.csv"), "target": "label"},
           "model": {"arch": "mlp", "hidden": [16]}, "optim": {"name": "adam", "lr": 0.02},
           "train": {"epochs": 15, "batch_size": 16}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    _invoke("train", tmp_path / "c.yaml", "--runs-dir", tmp_path / "runs")
    (run,) = (tmp_path / "runs").iterdir()
    return run


def test_train_register_serve_predict_and_drift(tmp_path: Path) -> None:
    run = _train(tmp_path)
    reg = ["--registry", f"sqlite:///{tmp_path / 'reg.db'}", "--artifacts", str(tmp_path / "artifacts")]
    registered = json.loads(_invoke("registry", "register", run, "--name", "yesno", "--json", *reg))
    assert registered["version"] == 1
    _invoke("registry", "alias", "yesno", "production", "1", *reg)
    key = _invoke("keys", "create", "--label", "e2e", *reg).strip().splitlines()[-1]
    assert key.startswith("dlf_")

    settings = ServeSettings(registry=reg[1], artifacts=reg[3], drift_window=200)
    rows = [[10.5, -2.5], [8.0, -3.6], [12.0, -3.1]]  # raw column values, as in the CSV
    with TestClient(create_app(settings)) as client:
        headers = {"Authorization": f"Bearer {key}"}
        answer = client.post("/v1/models/yesno/predict", json={"inputs": rows}, headers=headers)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["version"], body["variant"]) == (1, "production")
        assert answer.headers["X-Request-Id"] == body["request_id"]
        art = load_artifact(run)
        want = art.predict(art.encode(np.array(rows)))
        assert body["outputs"] == want["labels"]
        assert_close(np.array(body["probabilities"]), want["probabilities"].numpy().astype(np.float64),
                     rtol=1e-5, atol=1e-6)

        drift = client.get("/v1/models/yesno/drift", headers=headers).json()
        (report,) = drift["versions"]  # one loaded version
        assert not report["available"] and "live" in report["reason"]  # too few live samples yet

        shifted = np.random.default_rng(1).normal(loc=[16.0, -3.0], scale=[2.0, 0.5], size=(120, 2))
        for chunk in np.array_split(shifted, 4):
            assert client.post("/v1/models/yesno/predict", json={"inputs": chunk.tolist()},
                               headers=headers).status_code == 200
        drift = client.get("/v1/models/yesno/drift", headers=headers).json()
        (report,) = drift["versions"]  # one loaded version
        assert report["available"]
        assert "a" in report["drifted"] and "b" not in report["drifted"], report


def test_quantize_int8_serves_an_int8_copy_close_to_fp32(serve_env, make_client) -> None:
    import torch

    from dlforge.compress import quantize_dynamic_int8

    inputs = torch.randn(16, 4, generator=torch.Generator().manual_seed(3))
    client = make_client({"quantize": "int8"})
    body = client.post("/v1/models/iris/predict", json={"inputs": inputs.tolist()}, headers=serve_env.headers()).json()
    loaded = client.app.state.pool.loaded("iris")[1]
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in loaded.artifact.model.modules())
    art = load_artifact(serve_env.registry.get("iris", version=1).path)
    want = quantize_dynamic_int8(art.model)(inputs).softmax(1)
    assert_close(torch.tensor(body["probabilities"]), want, rtol=1e-5, atol=1e-6)
    fp32 = art.predict(inputs)["probabilities"]
    assert (torch.tensor(body["probabilities"]) - fp32).abs().max() < 0.05


def test_an_exported_variant_registers_and_serves_in_onnxruntime(tmp_path: Path) -> None:
    # dlforge export -> the variant is an ordinary artifact: registered, then served by ONNX Runtime
    run = _train(tmp_path)
    exported = json.loads(_invoke("export", run, "--json"))
    reg = ["--registry", f"sqlite:///{tmp_path / 'reg.db'}", "--artifacts", str(tmp_path / "artifacts")]
    _invoke("registry", "register", exported["path"], "--name", "yesno", "--json", *reg)
    settings = ServeSettings(registry=reg[1], artifacts=reg[3], require_keys=False, runtime="onnxruntime")
    rows = [[10.5, -2.5], [8.0, -3.6], [12.0, -3.1]]
    with TestClient(create_app(settings)) as client:
        answer = client.post("/v1/models/yesno/predict", json={"inputs": rows})
        assert answer.status_code == 200, answer.text
        loaded = client.app.state.pool.loaded("yesno")[1]
        assert type(loaded.artifact.model).__name__ == "OrtModule"
    art = load_artifact(run)
    want = art.predict(art.encode(np.array(rows)))
    assert answer.json()["outputs"] == want["labels"]
    assert_close(np.array(answer.json()["probabilities"]), want["probabilities"].numpy().astype(np.float64),
                 rtol=1e-4, atol=1e-5)
