"""A damaged SQLite registry and a full disk are clear errors (exit 2, HTTP 507), never tracebacks.

Before: ``dlforge registry list`` / ``register`` on a damaged database exited 1 with a
SQLAlchemy traceback (and register had copied the blob first); overwritten pages that no
query touched went unnoticed; a full disk while registering or uploading was an OSError
(a traceback, a bare 500) and ``dlforge train`` on a full disk exited 1 with a traceback.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from dlforge.cli import app
from dlforge.errors import RegistryError, StorageError
from dlforge.registry.disk import INCOMING, UPLOADS
from dlforge.registry.store import Registry
from dlforge.serve.main import create_app
from dlforge.train import callbacks
from tests.serve.conftest import make_serve_env, save_tiny_classifier
from tests.serve.test_admin import GZIP, targz
from tests.serve.test_security import assert_error_body

FULL = OSError(errno.ENOSPC, "No space left on device")


def cli(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def registry_files(tmp_path: Path) -> tuple[Path, Path]:
    """A closed SQLite registry of several pages (two versions, 40 keys) and its artifacts folder."""
    env = make_serve_env(tmp_path)
    for i in range(40):
        env.registry.create_key(label=f"key {i} " + "x" * 150)
    env.registry.close()  # the last connection checkpoints the WAL into the file
    return tmp_path / "registry.db", env.artifacts


def blobs(artifacts: Path) -> list[str]:
    return sorted(p.name for p in artifacts.glob("??/*"))


@pytest.mark.parametrize("damage", ["overwritten pages", "not a database"])
def test_a_damaged_database_is_reported_with_how_to_restore_it(tmp_path: Path, damage: str) -> None:
    db, artifacts = registry_files(tmp_path)
    data = bytearray(db.read_bytes())
    if damage == "overwritten pages":  # what a stray write or a bad disk does; the header stays valid
        middle = len(data) // 2
        data[middle:middle + 8192] = os.urandom(8192)
    else:
        data = bytearray(os.urandom(len(data)))
    db.write_bytes(bytes(data))
    before = blobs(artifacts)
    with pytest.raises(RegistryError, match="registry database registry.db is damaged") as caught:
        Registry(db, artifacts).models()
    assert ".recover" in caught.value.hint and "intact" in caught.value.hint
    for args in (["list"], ["register", tmp_path / "model-v1", "--name", "other"]):
        result = cli("registry", *args, "--registry", db, "--artifacts", artifacts)
        assert result.exit_code == 2, result.output  # before: 1, with a traceback
        assert "is damaged" in result.output and "Traceback" not in result.output
    assert blobs(artifacts) == before and not any((artifacts / INCOMING).glob("*"))  # nothing copied
    # The server says the same before uvicorn starts (before: "Application startup failed" and a traceback).
    result = cli("serve", "--registry", db, "--artifacts", artifacts, "--port", "0")
    assert result.exit_code == 2 and "is damaged" in result.output, result.output
    assert "Traceback" not in result.output


def test_a_full_disk_while_registering_keeps_nothing(tmp_path: Path, monkeypatch) -> None:
    url, artifacts = f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "artifacts"
    model = save_tiny_classifier(tmp_path / "model", seed=1)
    real = shutil.copytree

    def copy_until_full(src, dst, **kwargs):
        real(src, dst, **kwargs)  # half the work done, then the disk fills up
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(dst) / "model.safetensors"))

    monkeypatch.setattr("dlforge.registry.blobs.shutil.copytree", copy_until_full)
    with Registry(url, artifacts) as reg:
        revision = reg.revision()
        with pytest.raises(StorageError, match="disk is full") as caught:
            reg.register(model, "iris")
        assert str(tmp_path) not in str(caught.value)  # servers show it to clients
        assert (reg.models(), reg.revision(), blobs(artifacts)) == ([], revision, [])
        assert list((artifacts / INCOMING).iterdir()) == []
    result = cli("registry", "register", model, "--name", "iris", "--registry", url, "--artifacts", artifacts)
    assert result.exit_code == 2 and "disk is full" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("where", ["extracting", "registering"])
def test_a_full_disk_during_an_upload_is_507(tmp_path: Path, monkeypatch, where: str) -> None:
    env = make_serve_env(tmp_path)
    if where == "extracting":
        def extract(*args, **kwargs):
            raise FULL
        monkeypatch.setattr("dlforge.serve.routers.admin.extract_artifact_tar", extract)
    else:
        monkeypatch.setattr("dlforge.registry.blobs.shutil.copytree", lambda *a, **k: (_ for _ in ()).throw(FULL))
    before = (env.registry.versions("iris"), env.registry.revision(), blobs(env.artifacts))
    with TestClient(create_app(env.settings())) as client:
        response = client.post("/v1/models/iris/versions?alias=production", headers={**env.headers(admin=True), **GZIP},
                               content=targz(save_tiny_classifier(tmp_path / "v3", seed=3)))
        error = assert_error_body(response, 507, "insufficient_storage")  # before: a bare 500
        assert "disk is full" in error["message"] and error["hint"]
    assert (env.registry.versions("iris"), env.registry.revision(), blobs(env.artifacts)) == before
    assert [p for area in (INCOMING, UPLOADS) for p in (env.artifacts / area).glob("*")] == []
    env.registry.close()


def test_train_on_a_full_disk_exits_2_and_the_run_resumes(tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "name": "t", "seed": 0, "data": {"source": "spirals", "n_samples": 120},
        "model": {"arch": "mlp", "hidden": [8]}, "optim": {"name": "adam", "lr": 0.01},
        "train": {"epochs": 2, "batch_size": 32, "log_every_n_steps": 5}}))
    real, writes = callbacks.atomic_write, []

    def write_until_full(path, data):  # the first checkpoint fits, the second does not
        writes.append(path)
        if len(writes) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(callbacks, "atomic_write", write_until_full)
    runs = tmp_path / "runs"
    result = cli("train", config, "--runs-dir", runs, "--json")
    assert result.exit_code == 2, result.output  # before: 1, with a traceback
    [run] = list(runs.iterdir())
    assert "disk is full" in result.output and "Traceback" not in result.output
    assert f"dlforge resume {run}" in " ".join(result.output.split())
    monkeypatch.setattr(callbacks, "atomic_write", real)  # space freed
    resumed = cli("resume", run, "--json")
    assert resumed.exit_code == 0, resumed.output
    assert (run / "metrics.json").is_file()
