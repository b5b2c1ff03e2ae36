"""The versioned registry on SQLite and on a real PostgreSQL server.

Every public method is exercised on both backends (content addressing, version counters
that never reuse a number, alias history and rollback, keys stored as hashes, the revision
counter), and the failure paths leave nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa
import torch

from dlforge.errors import ArtifactError, ConflictError, NotFoundError, RegistryError
from dlforge.models import build
from dlforge.registry import ModelVersion, Registry, load_artifact, save_artifact
from dlforge.registry.blobs import content_hash
from dlforge.registry.db import keys_t, meta_t

X = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))


def _artifact(folder: Path, seed: int, accuracy: float = 0.5) -> Path:
    torch.manual_seed(seed)
    model = build({"arch": "mlp", "hidden": [8]}, input_shape=(4,), num_outputs=3)
    return save_artifact(model, folder, task="classification", class_names=["a", "b", "c"],
                         metrics={"accuracy": accuracy, "roc_auc": float("nan")})


@pytest.fixture(scope="module")
def arts(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three different artifacts (different weights)."""
    root = tmp_path_factory.mktemp("arts")
    return [_artifact(root / f"m{i}", seed=i, accuracy=0.5 + i / 10) for i in range(3)]


@pytest.fixture(params=["sqlite", "postgresql"])
def reg(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Registry]:
    """An empty registry: SQLite in a folder that does not exist yet, or a fresh PostgreSQL database."""
    sqlite = str(tmp_path / "db" / "registry.db")
    url = sqlite if request.param == "sqlite" else request.getfixturevalue("pg_registry_url")
    registry = Registry(url, artifacts=tmp_path / "store")
    yield registry
    registry.close()


def blobs(reg: Registry) -> list[Path]:
    return sorted(p for p in reg.artifacts.glob("??/*") if p.is_dir())


# ---------------------------------------------------------------- register, versions, get

def test_register_numbers_versions_and_copies_model_json_fields(reg: Registry, arts: list[Path]) -> None:
    v1 = reg.register(arts[0], "iris")
    v2 = reg.register(arts[1], "iris", metadata={"owner": "ml-team"})
    assert (v1.version, v2.version) == (1, 2)
    assert v1.sha256 == content_hash(arts[0]) and v1.path == reg.artifacts / v1.sha256[:2] / v1.sha256
    assert v1.metrics == {"accuracy": 0.5}  # the NaN ROC AUC stays in model.json only
    assert v1.metadata == {"task": "classification", "arch": "mlp", "class_names": ["a", "b", "c"],
                           "input_signature": {"shape": [None, 4], "dtype": "float32"}}
    assert v2.metadata["owner"] == "ml-team" and v2.metadata["task"] == "classification"
    assert datetime.fromisoformat(v1.created).utcoffset().total_seconds() == 0
    # the stored copy predicts exactly what the source artifact predicts
    torch.testing.assert_close(load_artifact(v2.path).predict(X)["probabilities"],
                               load_artifact(arts[1]).predict(X)["probabilities"], rtol=0, atol=0)
    assert reg.versions("iris") == [v1, v2]
    assert reg.get("iris", version=1) == v1
    assert json.loads(json.dumps(v2.to_dict()))["path"] == str(v2.path)


def test_register_accepts_a_run_directory(reg: Registry, arts: list[Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    _artifact(run / "model", seed=0)
    (run / "history.jsonl").write_text("{}\n")  # run files are not part of the artifact
    mv = reg.register(run, "iris")
    assert mv.sha256 == content_hash(run / "model")
    assert sorted(p.name for p in mv.path.iterdir()) == ["model.json", "model.safetensors"]


def test_explicit_metrics_replace_model_json_metrics(reg: Registry, arts: list[Path]) -> None:
    assert reg.register(arts[0], "iris", metrics={"f1": 0.75, "n": 3}).metrics == {"f1": 0.75, "n": 3.0}
    with pytest.raises(RegistryError, match="metric 'f1' is nan"):
        reg.register(arts[0], "iris", metrics={"f1": float("nan")})
    with pytest.raises(RegistryError, match=r"metadata keys \['task'\] are taken from model.json"):
        reg.register(arts[0], "iris", metadata={"task": "regression"})
    with pytest.raises(RegistryError, match="metadata is not JSON-serializable"):
        reg.register(arts[0], "iris", metadata={"when": datetime(2024, 1, 1)})
    assert [v.version for v in reg.versions("iris")] == [1]


def test_same_artifact_twice_shares_one_blob(reg: Registry, arts: list[Path]) -> None:
    a = reg.register(arts[0], "iris")
    b = reg.register(arts[0], "iris")
    c = reg.register(arts[0], "other")
    assert (a.version, b.version, c.version) == (1, 2, 1)
    assert a.sha256 == b.sha256 == c.sha256 and a.path == b.path == c.path
    assert blobs(reg) == [a.path]
    reg.delete("iris", 1)
    reg.delete("iris", 2)
    assert blobs(reg) == [a.path], "the blob is still used by other version 1"
    reg.delete("other", 1)
    assert blobs(reg) == []


def test_get_prefers_version_then_alias_then_production_then_latest(reg: Registry, arts: list[Path]) -> None:
    for art in arts:
        reg.register(art, "iris")
    assert reg.get("iris").version == 3  # no production alias: the latest
    reg.set_alias("iris", "production", 1)
    reg.set_alias("iris", "staging", 2)
    assert reg.get("iris").version == 1
    assert reg.get("iris", alias="staging").version == 2
    assert reg.get("iris", version=3, alias="staging").version == 3
    with pytest.raises(NotFoundError, match="model 'iris' has no version 9") as err:
        reg.get("iris", version=9)
    assert err.value.hint == "it has versions 1, 2, 3"
    with pytest.raises(NotFoundError, match="model 'iris' has no alias 'canary'") as err:
        reg.get("iris", alias="canary")
    assert err.value.hint == "its aliases: production, staging"
    with pytest.raises(NotFoundError, match="no model named 'rose'") as err:
        reg.get("rose")
    assert err.value.hint == "registered models: iris"
    with pytest.raises(RegistryError, match="version must be a positive integer"):
        reg.get("iris", version=0)


def test_versions_are_never_reused(reg: Registry, arts: list[Path]) -> None:
    for art in arts:
        reg.register(art, "iris")
    reg.delete("iris", 3)
    assert reg.register(arts[2], "iris").version == 4  # a counter, not max + 1
    for version in (1, 2, 4):
        reg.delete("iris", version)
    assert reg.models() == []
    with pytest.raises(NotFoundError):
        reg.versions("iris")
    assert reg.register(arts[0], "iris").version == 5  # the count survives deleting the model


def test_models_lists_counts_latest_and_aliases(reg: Registry, arts: list[Path]) -> None:
    assert reg.models() == []
    reg.register(arts[0], "iris")
    reg.register(arts[1], "iris")
    reg.register(arts[2], "digits")
    reg.set_alias("iris", "production", 2)
    listing = reg.models()
    assert [(m["name"], m["latest_version"], m["versions"], m["aliases"]) for m in listing] == [
        ("digits", 1, 1, {}), ("iris", 2, 2, {"production": 2})]
    assert all(datetime.fromisoformat(m["created"]) for m in listing)


# ---------------------------------------------------------------- aliases and rollback

def test_alias_history_and_rollback(reg: Registry, arts: list[Path]) -> None:
    for art in arts:
        reg.register(art, "iris")
    assert reg.set_alias("iris", "production", 1) is None
    assert reg.set_alias("iris", "production", 2) == 1
    assert reg.set_alias("iris", "production", 3) == 2
    assert reg.set_alias("iris", "production", 3) == 3  # no change, no history entry
    reg.register(arts[0], "iris")
    assert reg.aliases("iris") == {"production": 3}, "registering never moves an alias"
    assert reg.rollback("iris", "production") == 2
    assert reg.rollback("iris", "production") == 1
    with pytest.raises(RegistryError, match="nothing to roll back to: version 1 is the first") as err:
        reg.rollback("iris", "production")
    assert "dlforge registry alias iris production VERSION" in err.value.hint
    assert reg.set_alias("iris", "production", 4) == 1
    assert reg.rollback("iris", "production") == 1  # the new move is undone, not the old ones
    assert reg.aliases("iris") == {"production": 1}


def test_rollback_to_a_deleted_version_is_refused(reg: Registry, arts: list[Path]) -> None:
    reg.register(arts[0], "iris")
    reg.register(arts[1], "iris")
    reg.set_alias("iris", "production", 1)
    reg.set_alias("iris", "production", 2)
    reg.delete("iris", 1)
    with pytest.raises(RegistryError, match="pointed at version 1 before, which has been deleted"):
        reg.rollback("iris", "production")
    assert reg.aliases("iris") == {"production": 2}


def test_alias_errors_name_what_exists(reg: Registry, arts: list[Path]) -> None:
    reg.register(arts[0], "iris")
    with pytest.raises(NotFoundError, match="model 'iris' has no version 2") as err:
        reg.set_alias("iris", "production", 2)
    assert err.value.hint == "it has versions 1"
    with pytest.raises(NotFoundError, match="model 'iris' has no alias 'production'"):
        reg.rollback("iris", "production")
    with pytest.raises(RegistryError, match="alias '2' is all digits"):
        reg.set_alias("iris", "2", 1)
    with pytest.raises(RegistryError, match="alias 'a/b' is not allowed"):
        reg.set_alias("iris", "a/b", 1)
    assert reg.aliases("iris") == {}


def test_delete_refuses_an_aliased_version(reg: Registry, arts: list[Path]) -> None:
    reg.register(arts[0], "iris")
    reg.set_alias("iris", "production", 1)
    reg.set_alias("iris", "canary", 1)
    with pytest.raises(ConflictError, match="version 1 of model 'iris' is in use by alias.* canary, production"):
        reg.delete("iris", 1)
    with pytest.raises(NotFoundError, match="model 'iris' has no version 2"):
        reg.delete("iris", 2)
    assert [v.version for v in reg.versions("iris")] == [1] and len(blobs(reg)) == 1


# ---------------------------------------------------------------- traffic and revision

def test_traffic_config_roundtrip(reg: Registry, arts: list[Path]) -> None:
    reg.register(arts[0], "iris")
    assert reg.traffic("iris") is None
    config = {"variants": [{"alias": "production", "weight": 0.9}, {"alias": "canary", "weight": 0.1}],
              "sticky_header": "X-User-Id", "shadow": None}
    reg.set_traffic("iris", config)
    assert reg.traffic("iris") == config
    reg.set_traffic("iris", None)
    assert reg.traffic("iris") is None
    with pytest.raises(NotFoundError):
        reg.set_traffic("rose", config)
    with pytest.raises(RegistryError, match="traffic config must be a JSON object"):
        reg.set_traffic("iris", [1, 2])  # type: ignore[arg-type]


def test_every_change_bumps_the_revision_and_reads_do_not(reg: Registry, arts: list[Path]) -> None:
    seen = [reg.revision()]
    changes = [lambda: reg.register(arts[0], "iris"), lambda: reg.register(arts[1], "iris"),
               lambda: reg.set_alias("iris", "production", 1), lambda: reg.set_alias("iris", "production", 2),
               lambda: reg.rollback("iris", "production"), lambda: reg.delete("iris", 2),
               lambda: reg.set_traffic("iris", {"variants": []}), lambda: reg.create_key(),
               lambda: reg.revoke_key(1)]
    for change in changes:
        change()
        reg.models(), reg.versions("iris"), reg.get("iris"), reg.keys(), reg.traffic("iris")
        seen.append(reg.revision())
    assert seen == list(range(len(changes) + 1))
    with pytest.raises(ConflictError):
        reg.delete("iris", 1)
    assert reg.revision() == len(changes), "a refused change is rolled back with its bump"
    other = Registry(reg._db.engine.url.render_as_string(hide_password=False), reg.artifacts)
    try:  # a second process's view: the same counter and the same data
        assert other.revision() == len(changes) and other.aliases("iris") == {"production": 1}
    finally:
        other.close()


# ---------------------------------------------------------------- API keys

def test_keys_are_stored_hashed_and_checked(reg: Registry) -> None:
    admin = reg.create_key(admin=True, label="ops")
    predict = reg.create_key(label="frontend")
    assert re.fullmatch(r"dlf_[A-Za-z0-9_-]{32}", admin) and admin != predict
    assert (reg.check_key(admin), reg.check_key(predict)) == ("admin", "predict")
    assert reg.check_key("dlf_" + "x" * 32) is None and reg.check_key("") is None
    with reg._db.engine.connect() as conn:
        rows = conn.execute(sa.select(keys_t).order_by(keys_t.c.id)).all()
    assert [r.key_hash for r in rows] == [hashlib.sha256(k.encode()).hexdigest() for k in (admin, predict)]
    assert not any(admin in str(v) or predict in str(v) for r in rows for v in r), "a plaintext key is stored"
    listing = reg.keys()
    assert [(k["id"], k["label"], k["admin"], k["revoked"]) for k in listing] == [
        (1, "ops", True, False), (2, "frontend", False, False)]
    assert all(set(k) == {"id", "label", "admin", "created", "revoked"} for k in listing)
    reg.revoke_key(2)
    reg.revoke_key(2)  # twice is harmless
    assert reg.check_key(predict) is None and reg.check_key(admin) == "admin"
    assert reg.keys()[1]["revoked"] is True
    with pytest.raises(NotFoundError, match="no API key with id 7") as err:
        reg.revoke_key(7)
    assert err.value.hint == "key ids: 1, 2"


# ---------------------------------------------------------------- bad input leaves nothing behind

def test_a_folder_that_is_not_an_artifact_leaves_nothing(reg: Registry, tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("not a model")
    with pytest.raises(ArtifactError, match="cannot register .*junk.*model.json is missing") as err:
        reg.register(junk, "iris")
    assert "save_artifact" in err.value.hint
    (junk / "model.json").write_text("{not json")
    (junk / "model.safetensors").write_bytes(b"")
    with pytest.raises(ArtifactError, match="is not valid JSON"):
        reg.register(junk, "iris")
    assert not reg.artifacts.exists()
    assert reg.models() == [] and reg.revision() == 0


@pytest.mark.parametrize("bad", ["../iris", "a/b", "a%2Fb", "", "iris\n", "x" * 129])
def test_bad_names_are_refused_before_anything_is_written(reg: Registry, arts: list[Path], bad: str) -> None:
    with pytest.raises(RegistryError, match="model name .* is not allowed"):
        reg.register(arts[0], bad)
    with pytest.raises(RegistryError, match="model name .* is not allowed"):
        reg.get(bad)
    assert not reg.artifacts.exists() and reg.revision() == 0


def test_a_failed_insert_removes_the_new_blob(tmp_path: Path, arts: list[Path],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    reg = Registry(tmp_path / "r.db", artifacts=tmp_path / "store")
    kept = reg.register(arts[0], "iris")

    def broken(*args: object) -> None:
        raise RuntimeError("simulated database failure")

    monkeypatch.setattr(reg._versions, "_insert_version", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        reg.register(arts[1], "iris")
    with pytest.raises(RuntimeError, match="simulated"):
        reg.register(arts[0], "iris")
    assert blobs(reg) == [kept.path], "the unreferenced blob is gone, the referenced one stays"
    monkeypatch.undo()
    assert [v.version for v in reg.versions("iris")] == [1]


def test_a_blob_deleted_during_registration_is_stored_again(tmp_path: Path, arts: list[Path],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    reg = Registry(tmp_path / "r.db", artifacts=tmp_path / "store")
    store = reg._blobs.store
    calls = []

    def racing_delete(folder: Path) -> str:  # another process deletes the shared blob right after
        sha = store(folder)
        calls.append(sha)
        if len(calls) == 1:
            shutil.rmtree(reg.artifacts / sha[:2] / sha)
        return sha

    monkeypatch.setattr(reg._blobs, "store", racing_delete)
    mv = reg.register(arts[0], "iris")
    assert len(calls) == 2 and mv.path.is_dir() and content_hash(mv.path) == mv.sha256


# ---------------------------------------------------------------- URLs and SQLite setup

def test_default_locations_come_from_env_or_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DLFORGE_REGISTRY", raising=False)
    monkeypatch.delenv("DLFORGE_ARTIFACTS", raising=False)
    reg = Registry()
    assert reg.url == f"sqlite:///{tmp_path}/registry/registry.db"
    assert reg.artifacts == tmp_path / "registry" / "artifacts"
    assert reg.revision() == 0 and (tmp_path / "registry" / "registry.db").is_file()
    monkeypatch.setenv("DLFORGE_REGISTRY", "elsewhere/r.db")  # a plain path means SQLite
    monkeypatch.setenv("DLFORGE_ARTIFACTS", "blobs")
    reg = Registry()
    assert reg.url == f"sqlite:///{tmp_path}/elsewhere/r.db" and reg.artifacts == tmp_path / "blobs"


def test_sqlite_uses_wal_foreign_keys_and_a_lock_timeout(tmp_path: Path) -> None:
    reg = Registry(f"sqlite:///{tmp_path}/r.db", artifacts=tmp_path / "a")
    reg.revision()
    with reg._db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000


def test_in_memory_sqlite_works() -> None:
    reg = Registry("sqlite://", artifacts="/nonexistent-never-written")
    key = reg.create_key()
    assert reg.check_key(key) == "predict" and reg.revision() == 1


def test_url_errors_are_friendly() -> None:
    reg = Registry("postgresql+psycopg://user:s3cret@127.0.0.1:1/db")  # nothing listens on port 1
    assert reg.url == "postgresql+psycopg://user:***@127.0.0.1:1/db"
    with pytest.raises(RegistryError, match=r"the registry database failed: ") as err:
        reg.models()
    assert "s3cret" not in str(err.value) and "server is up" in err.value.hint
    assert "://" not in str(err.value)  # servers show this message to clients: no URL (the CLI adds it)
    with pytest.raises(RegistryError, match="needs a database driver"):
        Registry("mysql+nosuchdriver://u@h/db")
    with pytest.raises(RegistryError, match="not a database URL"):
        Registry("://")


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "r.db", artifacts=tmp_path / "a")
    reg.revision()
    with reg._db.engine.begin() as conn:
        conn.execute(sa.update(meta_t).values(schema_version=99))
    with pytest.raises(RegistryError, match="has schema 99") as err:
        Registry(tmp_path / "r.db", artifacts=tmp_path / "a").models()
    assert err.value.hint == "upgrade dlforge"


def test_model_version_is_frozen() -> None:
    mv = ModelVersion("m", 1, "ab", Path("/x"), "2024-01-01T00:00:00+00:00", {"acc": 1.0}, {})
    with pytest.raises(AttributeError):
        mv.version = 2  # type: ignore[misc]
    assert mv.to_dict() == {"name": "m", "version": 1, "sha256": "ab", "path": "/x",
                            "created": "2024-01-01T00:00:00+00:00", "metrics": {"acc": 1.0}, "metadata": {}}


def test_content_hash_frames_paths_and_bytes(tmp_path: Path) -> None:
    def folder(name: str, files: dict[str, bytes]) -> Path:
        d = tmp_path / name
        for rel, data in files.items():
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_bytes(data)
        return d

    base = content_hash(folder("a", {"x": b"12", "sub/y": b"3"}))
    assert content_hash(folder("b", {"sub/y": b"3", "x": b"12"})) == base  # same content elsewhere
    assert content_hash(folder("c", {"x": b"1", "sub/y": b"23"})) != base  # bytes moved between files
    assert content_hash(folder("d", {"z": b"12", "sub/y": b"3"})) != base  # a file renamed
    expected = hashlib.sha256()
    for rel, data in [("sub/y", b"3"), ("x", b"12")]:
        expected.update(len(rel).to_bytes(8, "big") + rel.encode() + len(data).to_bytes(8, "big") + data)
    assert base == expected.hexdigest()


def test_a_unique_key_race_is_retried(tmp_path: Path, arts: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    reg = Registry(tmp_path / "r.db", artifacts=tmp_path / "store")
    insert, calls = reg._versions._insert_version, []

    def lose_once(*args: object) -> ModelVersion:  # as if another writer took version 1 first
        calls.append(1)
        if len(calls) == 1:
            raise sa.exc.IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed"))
        return insert(*args)

    monkeypatch.setattr(reg._versions, "_insert_version", lose_once)
    assert reg.register(arts[0], "iris").version == 1 and len(calls) == 2
    assert reg.revision() == 1, "the failed attempt's revision bump was rolled back"
