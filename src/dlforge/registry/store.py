"""The versioned model registry: named models, numbered versions, aliases and API keys.

The database (any SQLAlchemy URL: SQLite by default, PostgreSQL in production) holds the
names, versions, aliases and keys; the artifacts themselves are content-addressed folders
under ``<artifacts>/<sha[:2]>/<sha>/``, so registering the same artifact twice stores it once.

:class:`Registry` is the one object callers use; it composes four parts over one
:class:`~dlforge.registry.db.Database` (engine, schema, transactions, the revision counter):

- :class:`~dlforge.registry.blobs.BlobStore` (``blobs.py``): the content-addressed folders;
- :class:`~dlforge.registry.versions.VersionStore` (``versions.py``): models and versions,
  numbered 1, 2, 3... per model and never reused;
- :class:`~dlforge.registry.aliases.AliasStore` (``aliases.py``): aliases, their history
  (``rollback``) and A/B traffic configs;
- :class:`~dlforge.registry.keys.KeyStore` (``keys.py``): the server's API keys, stored hashed;
- :class:`~dlforge.registry.experiments.ExperimentStore` (``experiments.py``, ``Registry.experiments``):
  the A/B records every server replica writes (their writes leave the revision alone).

Every change bumps one ``revision`` counter, so servers notice changes made by other
processes with one cheap query.

Example:
    >>> import tempfile
    >>> from dlforge.models import build
    >>> from dlforge.registry import save_artifact
    >>> root = tempfile.mkdtemp()
    >>> folder = save_artifact(build({"arch": "mlp", "hidden": [8]}, input_shape=(4,), num_outputs=3),
    ...                        f"{root}/model", task="classification", class_names=["a", "b", "c"])
    >>> reg = Registry(f"{root}/registry.db", artifacts=f"{root}/artifacts")
    >>> reg.register(folder, "iris").version
    1
    >>> reg.set_alias("iris", "production", 1) is None
    True
    >>> reg.get("iris").version
    1
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dlforge.registry.aliases import AliasStore
from dlforge.registry.blobs import BlobStore
from dlforge.registry.db import Database
from dlforge.registry.disk import Scratch
from dlforge.registry.experiments import ExperimentStore
from dlforge.registry.keys import KeyStore
from dlforge.registry.versions import ModelVersion, VersionStore

DEFAULT_URL = "sqlite:///registry/registry.db"
DEFAULT_ARTIFACTS = "registry/artifacts"

__all__ = ["DEFAULT_ARTIFACTS", "DEFAULT_URL", "ModelVersion", "Registry"]


class Registry:
    """Named, versioned models in a database plus a content-addressed artifact folder.

    ``url`` is any SQLAlchemy URL or a plain file path (SQLite); default ``$DLFORGE_REGISTRY``,
    else ``sqlite:///registry/registry.db``. ``artifacts`` defaults to ``$DLFORGE_ARTIFACTS``,
    else ``registry/artifacts``. Relative paths are resolved against the current directory.
    Nothing is opened until the first call; the first one checks the database and creates
    its tables.

    Example:
        >>> import tempfile
        >>> root = tempfile.mkdtemp()
        >>> with Registry(f"sqlite:///{root}/r.db", artifacts=f"{root}/a") as reg:
        ...     reg.models(), reg.revision()
        ([], 0)
    """

    def __init__(self, url: str | Path | None = None, artifacts: str | Path | None = None) -> None:
        raw = str(url or os.environ.get("DLFORGE_REGISTRY") or DEFAULT_URL)
        if "://" not in raw:
            raw = f"sqlite:///{Path(raw).expanduser().resolve()}"
        self.artifacts = Path(artifacts or os.environ.get("DLFORGE_ARTIFACTS") or DEFAULT_ARTIFACTS)
        self.artifacts = self.artifacts.expanduser().resolve()
        self._blobs = BlobStore(self.artifacts)
        # on first use: the scratch folders of processes killed mid-copy or mid-upload (see registry.disk)
        self._db = Database(raw, on_open=self._blobs.sweep)
        self.url: str = self._db.url
        self._versions = VersionStore(self._db, self._blobs)
        self._aliases = AliasStore(self._db, self._versions)
        self._keys = KeyStore(self._db)
        # A/B records: record_batch, record_of, feedback, stats_rows, counts, prune (see registry/experiments.py)
        self.experiments = ExperimentStore(self._db)

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry({self.url!r}, artifacts={str(self.artifacts)!r})"

    def close(self) -> None:
        """Release the database connections."""
        self._db.close()

    def revision(self) -> int:
        """A counter that every change (including key changes) increases: poll it to notice other processes' changes."""
        return self._db.revision()

    # ---------------------------------------------------------------- models and versions

    def register(self, model_dir: str | Path, name: str, *, metrics: dict[str, float] | None = None,
                 metadata: dict[str, Any] | None = None) -> ModelVersion:
        """Add the artifact in ``model_dir`` (or a run directory's ``model/``) as the next version of ``name``.

        ``metrics`` default to model.json's; ``metadata`` is added to task, arch, class
        names and input signature from model.json. No alias moves.

        Example:
            >>> reg.register("runs/iris-20240101/model", "iris", metadata={"owner": "ml-team"})  # doctest: +SKIP
        """
        return self._versions.register(model_dir, name, metrics=metrics, metadata=metadata)

    def models(self) -> list[dict[str, Any]]:
        """Every model: ``{"name", "latest_version", "versions", "aliases", "created"}``, sorted by name.

        Example:
            >>> Registry("sqlite://").models()
            []
        """
        return self._versions.models()

    def versions(self, name: str) -> list[ModelVersion]:
        """The versions of ``name``, oldest first; NotFoundError for an unknown model."""
        return self._versions.versions(name)

    def get(self, name: str, version: int | None = None, alias: str | None = None) -> ModelVersion:
        """One version: ``version`` if given, else ``alias``, else alias "production" if set, else the latest.

        Example:
            >>> reg.get("iris", alias="staging").version  # doctest: +SKIP
            2
        """
        return self._versions.get(name, version=version, alias=alias)

    def delete(self, name: str, version: int) -> None:
        """Delete one version (ConflictError while an alias points at it); its blob goes
        when no other version shares it, the model when it was the last version."""
        self._versions.delete(name, version)

    def upload_folder(self) -> Scratch:
        """A scratch folder for an upload under ``<artifacts>/.uploads/``: on the artifacts' disk, and
        removed by the next start-up's sweep if this process dies before calling its ``remove()``.

        Example:
            >>> with reg.upload_folder() as work:  # doctest: +SKIP
            ...     (work.path / "upload.tar.gz").write_bytes(data)
        """
        return self._blobs.upload_folder()

    # ---------------------------------------------------------------- aliases and traffic

    def aliases(self, name: str) -> dict[str, int]:
        """``{alias: version}`` for ``name``."""
        return self._aliases.aliases(name)

    def set_alias(self, name: str, alias: str, version: int) -> int | None:
        """Point ``alias`` at an existing ``version``; returns the version it pointed at before (None if new).

        A version whose stored artifact no longer loads is refused (ConflictError) before anything is stored.

        Example:
            >>> reg.set_alias("iris", "production", 2)  # doctest: +SKIP
            1
        """
        return self._aliases.set_alias(name, alias, version)

    def rollback(self, name: str, alias: str) -> int:
        """Undo the last move of ``alias``: point it back at the version it had before; returns that version.

        Repeated rollbacks walk further back through the alias's history. A version whose stored
        artifact no longer loads is refused (ConflictError) before anything is stored.
        """
        return self._aliases.rollback(name, alias)

    def traffic(self, name: str) -> dict[str, Any] | None:
        """The stored A/B traffic config of ``name`` (see ``dlforge.serve.routing``), None if unset."""
        return self._aliases.traffic(name)

    def set_traffic(self, name: str, config: dict[str, Any] | None) -> None:
        """Store (or with None clear) the traffic config of ``name``; the server validates its shape."""
        self._aliases.set_traffic(name, config)

    # ---------------------------------------------------------------- API keys

    def create_key(self, *, admin: bool = False, label: str = "") -> str:
        """A new API key, ``"dlf_"`` + 32 urlsafe characters; only its hash is stored, so show it now.

        Example:
            >>> key = Registry("sqlite://").create_key(label="ci")
            >>> key.startswith("dlf_"), len(key)
            (True, 36)
        """
        return self._keys.create(admin=admin, label=label)

    def provision_key(self, key: str, *, admin: bool = False, label: str = "provisioned") -> bool:
        """Make a key chosen elsewhere (e.g. a Kubernetes Secret) valid; idempotent (see KeyStore.provision)."""
        return self._keys.provision(key, admin=admin, label=label)

    def check_key(self, key: str) -> str | None:
        """``"admin"``, ``"predict"`` or None for an unknown or revoked key."""
        return self._keys.check(key)

    def keys(self) -> list[dict[str, Any]]:
        """Every key's ``{"id", "label", "admin", "created", "revoked"}`` (never the hash)."""
        return self._keys.list()

    def revoke_key(self, key_id: int) -> None:
        """Revoke key ``key_id`` (revoking twice is harmless); NotFoundError for an unknown id."""
        self._keys.revoke(key_id)
