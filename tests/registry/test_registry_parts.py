"""The parts the Registry is made of work on their own, and the Registry keeps its API.

Before the split one 698-line class held database plumbing, blobs, versions, aliases and
keys; now :class:`~dlforge.registry.db.Database`, :class:`~dlforge.registry.blobs.BlobStore`,
:class:`~dlforge.registry.keys.KeyStore`, the version and alias stores are separate, and
``Registry`` composes them.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import sqlalchemy as sa

import dlforge.registry
from dlforge.errors import NotFoundError
from dlforge.registry import Registry
from dlforge.registry.blobs import BlobStore, content_hash
from dlforge.registry.db import Database, meta_t
from dlforge.registry.keys import KeyStore, hash_key

# Registry's public signatures as they were before the split (inspect.signature, string annotations)
API = {
    "__enter__": "(self) -> 'Registry'",
    "__exit__": "(self, *exc: 'Any') -> 'None'",
    "__init__": "(self, url: 'str | Path | None' = None, artifacts: 'str | Path | None' = None) -> 'None'",
    "__repr__": "(self) -> 'str'",
    "aliases": "(self, name: 'str') -> 'dict[str, int]'",
    "check_key": "(self, key: 'str') -> 'str | None'",
    "provision_key": "(self, key: 'str', *, admin: 'bool' = False, label: 'str' = 'provisioned') -> 'bool'",
    "close": "(self) -> 'None'",
    "create_key": "(self, *, admin: 'bool' = False, label: 'str' = '') -> 'str'",
    "delete": "(self, name: 'str', version: 'int') -> 'None'",
    "get": "(self, name: 'str', version: 'int | None' = None, alias: 'str | None' = None) -> 'ModelVersion'",
    "keys": "(self) -> 'list[dict[str, Any]]'",
    "models": "(self) -> 'list[dict[str, Any]]'",
    "register": "(self, model_dir: 'str | Path', name: 'str', *, metrics: 'dict[str, float] | None' = None, "
                "metadata: 'dict[str, Any] | None' = None) -> 'ModelVersion'",
    "revision": "(self) -> 'int'",
    "revoke_key": "(self, key_id: 'int') -> 'None'",
    "rollback": "(self, name: 'str', alias: 'str') -> 'int'",
    "set_alias": "(self, name: 'str', alias: 'str', version: 'int') -> 'int | None'",
    "set_traffic": "(self, name: 'str', config: 'dict[str, Any] | None') -> 'None'",
    "traffic": "(self, name: 'str') -> 'dict[str, Any] | None'",
    "upload_folder": "(self) -> 'Scratch'",
    "versions": "(self, name: 'str') -> 'list[ModelVersion]'",
}


def test_the_registry_keeps_its_public_api(tmp_path: Path) -> None:
    public = {name: str(inspect.signature(getattr(Registry, name))) for name in vars(Registry)
              if not name.startswith("_") or name in API}
    assert public == API
    reg = Registry(tmp_path / "r.db", artifacts=tmp_path / "a")
    assert (reg.url, reg.artifacts) == (f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "a")


def test_keys_need_only_a_database(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'keys.db'}")
    keys = KeyStore(db)
    admin, predict = keys.create(admin=True, label="ops"), keys.create()
    assert (keys.check(admin), keys.check(predict), keys.check("dlf_nope")) == ("admin", "predict", None)
    keys.revoke(2)
    assert [(k["label"], k["revoked"]) for k in keys.list()] == [("ops", False), ("", True)]
    with pytest.raises(NotFoundError, match="no API key with id 9"):
        keys.revoke(9)
    with db.read() as conn:
        assert conn.exec_driver_sql("SELECT key_hash FROM api_keys WHERE id = 1").scalar() == hash_key(admin)
    assert db.revision() == 3
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith("keys.db")] == []  # no artifacts folder


def test_a_failed_write_bumps_nothing_and_on_open_runs_once() -> None:
    opened: list[int] = []
    db = Database("sqlite://", on_open=lambda: opened.append(1))

    def fail(conn: sa.Connection) -> None:
        conn.execute(sa.update(meta_t).values(schema_version=2))
        raise NotFoundError("nothing here")

    with pytest.raises(NotFoundError):
        db.write(fail)
    assert db.write(lambda conn: "done") == "done"
    with db.read() as conn:
        assert conn.execute(sa.select(meta_t.c.revision, meta_t.c.schema_version)).one() == (1, 1)
    assert opened == [1]


def test_blobs_are_stored_once_and_trashed_restored_or_dropped(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "w.bin").write_bytes(b"\x00" * 10)
    blobs = BlobStore(tmp_path / "blobs")
    sha = blobs.store(src)
    assert blobs.store(src) == sha == content_hash(blobs.path(sha)) and blobs.path(sha).parent.name == sha[:2]
    assert sorted(p.name for p in (tmp_path / "blobs").glob("??/*")) == [sha]
    trash = blobs.trash(sha)
    assert trash is not None and not blobs.path(sha).exists() and trash.is_dir()
    blobs.restore(trash)
    assert blobs.path(sha).is_dir() and not trash.exists()
    blobs.drop(blobs.trash(sha))
    assert not blobs.path(sha).exists() and blobs.trash(sha) is None
    with blobs.upload_folder() as work:
        assert work.path.parent == tmp_path / "blobs" / ".uploads"
    assert list((tmp_path / "blobs" / ".uploads").iterdir()) == []


def test_the_store_modules_are_under_400_lines() -> None:
    package = Path(dlforge.registry.__file__).parent
    names = ["store.py", "db.py", "blobs.py", "versions.py", "aliases.py", "keys.py"]
    sizes = {name: len((package / name).read_text().splitlines()) for name in names}
    assert {name: n for name, n in sizes.items() if n >= 400} == {}, "store.py alone was 698 lines before the split"
