"""The versioned model registry: named models, numbered versions, aliases and API keys.

The database (any SQLAlchemy URL: SQLite by default, PostgreSQL in production) holds the
names, versions, aliases and keys; the artifacts themselves are content-addressed folders
under ``<artifacts>/<sha[:2]>/<sha>/``, so registering the same artifact twice stores it once.

- Versions are numbered 1, 2, 3... per model and never reused: the next number is a counter,
  not ``max + 1``, and it survives deleting every version (a later registration under the
  same name continues the count).
- Registering never moves an alias; ``set_alias`` does, and ``rollback`` undoes the last move.
- Every change bumps one ``revision`` counter, so servers notice changes made by other
  processes with one cheap query.
- Writers are serialized: ``BEGIN IMMEDIATE`` on SQLite (WAL mode, 30 s lock wait), and the
  first statement of every write transaction updates the one ``meta`` row, whose row lock
  does the same on PostgreSQL. The model row is also locked (``FOR UPDATE``) and
  ``UNIQUE(model, version)`` stands behind both, with a retry.

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

import hashlib
import json
import math
import os
import random
import secrets
import shutil
import time
import uuid
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import (DatabaseError, DBAPIError, IntegrityError, OperationalError,
                            ProgrammingError)

from dlforge.errors import ArtifactError, ConflictError, DlforgeError, NotFoundError, RegistryError, UnavailableError
from dlforge.registry._db import (WRITE, aliases_t, check_integrity, database_error, events_t, keys_t, make_engine,
                                  meta_t, metadata, models_t, retired_t, versions_t)
from dlforge.registry.disk import INCOMING, UPLOADS, Scratch, full_disk_as_storage_error, sweep
from dlforge.registry.names import validate_name

DEFAULT_URL = "sqlite:///registry/registry.db"
DEFAULT_ARTIFACTS = "registry/artifacts"
SCHEMA_VERSION = 1
KEY_PREFIX = "dlf_"
KEY_BYTES = 24  # 192 random bits, 32 urlsafe characters after the prefix
RESERVED_METADATA = ("task", "arch", "class_names", "input_signature")  # always taken from model.json
_RETRIES = 8  # schema creation races
_WRITE_RETRIES = 4
_RETRY_SQLSTATES = ("40001", "40P01")  # serialization_failure, deadlock_detected
T = TypeVar("T")

@dataclass(frozen=True)
class ModelVersion:
    """One registered version of a model; ``path`` is loadable with ``load_artifact``."""

    name: str
    version: int
    sha256: str
    path: Path
    created: str
    metrics: dict[str, float]
    metadata: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (``path`` as a string).

        Example:
            >>> ModelVersion("m", 1, "ab", Path("/a"), "2024-01-01T00:00:00+00:00", {}, {}).to_dict()["path"]
            '/a'
        """
        return {"name": self.name, "version": self.version, "sha256": self.sha256, "path": str(self.path),
                "created": self.created, "metrics": dict(self.metrics), "metadata": dict(self.metadata)}


class _BlobGone(Exception):
    """The blob vanished between storing it and the insert (a concurrent delete): store it again."""


def content_hash(folder: str | Path) -> str:
    """sha256 over the sorted (relative path, bytes) of every file under ``folder``.

    Each path and file is length-prefixed, so moving bytes from one file into another, or
    renaming a file, changes the hash.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp()); _ = (d / "a.txt").write_text("hi")
        >>> len(content_hash(d))
        64
    """
    folder = Path(folder)
    files = sorted((p.relative_to(folder).as_posix(), p) for p in folder.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for rel, path in files:
        name = rel.encode("utf-8")
        h.update(len(name).to_bytes(8, "big") + name + path.stat().st_size.to_bytes(8, "big"))
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _listing(items: list[Any], limit: int = 20) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _check_version(version: Any) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise RegistryError(f"version must be a positive integer, got {version!r}", hint="versions are 1, 2, 3...")
    return version


def _check_alias(alias: str) -> str:
    alias = validate_name(alias, kind="alias")
    if alias.isdigit():  # keeps "3" meaning version 3 wherever a version or an alias may be given
        raise RegistryError(f"alias {alias!r} is all digits", hint="use a word such as production or staging")
    return alias


def _json_ready(value: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise RegistryError(f"{what} is not JSON-serializable: {err}",
                            hint="use strings, finite numbers, booleans, lists and objects") from None


def _clean_metrics(metrics: dict[str, Any], given: bool) -> dict[str, float]:
    """Given metrics must all be finite numbers; model.json's keep only those (a NaN
    metric such as ROC AUC on a one-class test set stays in model.json only)."""
    if not isinstance(metrics, dict):
        raise RegistryError(f"metrics must be a dict of numbers, got {type(metrics).__name__}")
    out: dict[str, float] = {}
    for key, value in metrics.items():
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if ok:
            out[str(key)] = float(value)
        elif given:
            raise RegistryError(f"metric {key!r} is {value!r}, not a finite number", hint="pass numbers only")
    return out


class Registry:
    """Named, versioned models in a database plus a content-addressed artifact folder.

    ``url`` is any SQLAlchemy URL or a plain file path (SQLite); default ``$DLFORGE_REGISTRY``,
    else ``sqlite:///registry/registry.db``. ``artifacts`` defaults to ``$DLFORGE_ARTIFACTS``,
    else ``registry/artifacts``. Relative paths are resolved against the current directory.

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
        self._engine, self._sqlite_file = make_engine(raw)
        self.url: str = self._engine.url.render_as_string(hide_password=True)
        self.artifacts = Path(artifacts or os.environ.get("DLFORGE_ARTIFACTS") or DEFAULT_ARTIFACTS)
        self.artifacts = self.artifacts.expanduser().resolve()
        self._ready = False

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry({self.url!r}, artifacts={str(self.artifacts)!r})"

    # ---------------------------------------------------------------- database plumbing

    def _ensure_schema(self) -> None:
        if self._ready:
            return
        if self._sqlite_file is not None:
            self._sqlite_file.parent.mkdir(parents=True, exist_ok=True)
        check_integrity(self._engine, self._sqlite_file)  # damaged pages: say so now, and how to restore
        for attempt in range(_RETRIES):
            try:
                with self._engine.connect() as conn:
                    conn.execution_options(**{WRITE: True})
                    with conn.begin():
                        metadata.create_all(conn)
                        row = conn.execute(sa.select(meta_t.c.schema_version)).first()
                        if row is None:
                            conn.execute(sa.insert(meta_t).values(id=1, revision=0, schema_version=SCHEMA_VERSION))
                        elif row[0] > SCHEMA_VERSION:
                            raise RegistryError(f"the registry has schema {row[0]}, this dlforge "
                                                f"reads schema {SCHEMA_VERSION}", hint="upgrade dlforge")
                break
            except (OperationalError, ProgrammingError, IntegrityError) as err:
                # Processes starting together all create the tables; the losers fail with
                # "already exists" (or a duplicate key in the catalog) and find them there.
                text = str(err.orig).lower()
                racing = isinstance(err, IntegrityError) or "already exists" in text or "locked" in text
                if not racing or attempt == _RETRIES - 1:
                    raise self._db_error(err) from None
                time.sleep(0.05 * (attempt + 1) * (1 + random.random()))
        self._ready = True
        sweep(self.artifacts)  # scratch folders of processes killed mid-copy or mid-upload (see registry.disk)

    def _db_error(self, err: DBAPIError) -> DlforgeError:
        known = database_error(err, self._sqlite_file)  # a full disk, or damaged pages
        if known is not None:
            return known
        # No URL and only the driver's first line: servers show this to clients (the CLI adds the URL),
        # and PostgreSQL puts the failing SQL on the lines after it.
        reason = (str(err.orig).strip().splitlines() or ["no reason given"])[0]
        return UnavailableError(f"the registry database failed: {reason}",
                                hint="check that the database server is up, the URL and credentials are right and "
                                     "a SQLite file is writable")

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        self._ensure_schema()
        try:
            with self._engine.connect() as conn:
                yield conn
        except DatabaseError as err:
            raise self._db_error(err) from None

    def _write(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in one write transaction that bumps the revision; retried on a unique-key race."""
        self._ensure_schema()
        for attempt in range(_WRITE_RETRIES):
            try:
                with self._engine.connect() as conn:
                    conn.execution_options(**{WRITE: True})
                    with conn.begin():
                        # first statement: the meta row lock serializes writers on PostgreSQL
                        conn.execute(sa.update(meta_t).where(meta_t.c.id == 1)
                                     .values(revision=meta_t.c.revision + 1))
                        return fn(conn)
            except (IntegrityError, OperationalError) as err:
                # a unique-key race, or a serialization failure / deadlock under a stricter
                # isolation level than PostgreSQL's default: run the transaction again
                retry = isinstance(err, IntegrityError) or getattr(err.orig, "sqlstate", None) in _RETRY_SQLSTATES
                if not retry or attempt == _WRITE_RETRIES - 1:
                    if isinstance(err, IntegrityError):
                        raise
                    raise self._db_error(err) from None
                time.sleep(0.02 * (attempt + 1) * (1 + random.random()))
            except DatabaseError as err:  # e.g. pages damaged since the check at open
                raise self._db_error(err) from None
        raise AssertionError("unreachable")

    def _model_row(self, conn: Connection, name: str, lock: bool = False) -> sa.Row:
        query = sa.select(models_t).where(models_t.c.name == name)
        row = conn.execute(query.with_for_update() if lock else query).first()
        if row is None:
            names = list(conn.execute(sa.select(models_t.c.name).order_by(models_t.c.name)).scalars())
            hint = (f"registered models: {_listing(names)}" if names else "the registry is empty; "
                    "add one with `dlforge registry register MODEL_DIR --name NAME`")
            raise NotFoundError(f"no model named {name!r}", hint=hint)
        return row

    def _version_numbers(self, conn: Connection, model_id: int) -> list[int]:
        return list(conn.execute(sa.select(versions_t.c.version).where(versions_t.c.model_id == model_id)
                                 .order_by(versions_t.c.version)).scalars())

    def _to_version(self, name: str, row: sa.Row) -> ModelVersion:
        return ModelVersion(name=name, version=row.version, sha256=row.sha256, path=self._blob_path(row.sha256),
                            created=row.created, metrics=dict(row.metrics or {}), metadata=dict(row.meta or {}))

    # ---------------------------------------------------------------- blobs

    def _blob_path(self, sha: str) -> Path:
        return self.artifacts / sha[:2] / sha

    def _store_blob(self, folder: Path) -> str:
        """Store ``folder`` under its content hash (once); returns the hash."""
        sha = content_hash(folder)
        if self._blob_path(sha).is_dir():
            return sha  # the same artifact registered before: share its blob
        with full_disk_as_storage_error("storing the artifact in the registry",
                                        hint="free some space on the artifacts folder's disk (or raise the "
                                             "quota) and register again"), Scratch(self.artifacts / INCOMING) as tmp:
            copy = tmp.path / "artifact"
            shutil.copytree(folder, copy)
            sha = content_hash(copy)  # hash what is stored, in case the source changed meanwhile
            dest = self._blob_path(sha)
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(copy, dest)  # atomic: readers see the whole folder or none
            except OSError:
                if not dest.is_dir():  # else another process stored the same content first
                    raise
            return sha

    def upload_folder(self) -> Scratch:
        """A scratch folder for an upload under ``<artifacts>/.uploads/``: on the artifacts' disk, and
        removed by the next start-up's sweep if this process dies before calling its ``remove()``.

        Example:
            >>> with reg.upload_folder() as work:  # doctest: +SKIP
            ...     (work.path / "upload.tar.gz").write_bytes(data)
        """
        return Scratch(self.artifacts / UPLOADS)

    def _trash_blob_if_unused(self, conn: Connection, sha: str) -> Path | None:
        """Inside a write transaction: move the blob aside when no version uses it (the
        caller removes it after the commit). Writers are serialized, so no concurrent
        registration can start using it in between."""
        used = conn.execute(sa.select(sa.func.count()).where(versions_t.c.sha256 == sha)).scalar_one()
        blob = self._blob_path(sha)
        if used or not blob.is_dir():
            return None
        trash = self.artifacts / ".trash" / f"{sha}-{uuid.uuid4().hex}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        os.rename(blob, trash)
        return trash

    def _drop_unused_blob(self, sha: str) -> None:
        trashed = self._write(lambda conn: self._trash_blob_if_unused(conn, sha))
        if trashed is not None:
            shutil.rmtree(trashed, ignore_errors=True)

    # ---------------------------------------------------------------- models and versions

    def register(self, model_dir: str | Path, name: str, *, metrics: dict[str, float] | None = None,
                 metadata: dict[str, Any] | None = None) -> ModelVersion:
        """Add the artifact in ``model_dir`` (or a run directory's ``model/``) as the next version of ``name``.

        ``metrics`` default to model.json's; ``metadata`` is added to task, arch, class
        names and input signature from model.json. No alias moves.

        Example:
            >>> reg.register("runs/iris-20240101/model", "iris", metadata={"owner": "ml-team"})  # doctest: +SKIP
        """
        from dlforge.registry.artifact import load_artifact
        from dlforge.registry.validate import check_artifact

        name = validate_name(name)
        self._ensure_schema()  # a damaged or unreachable database fails before the copy
        try:
            check_artifact(model_dir)  # what could not be served is refused before anything is stored
            art = load_artifact(model_dir)
        except ArtifactError as err:
            raise ArtifactError(f"cannot register {model_dir}: {err.message}",
                                hint=err.hint or "register a model/ folder written by save_artifact or a run "
                                                 "directory from `dlforge train`") from None
        user = _json_ready(metadata or {}, "metadata")
        if not isinstance(user, dict):
            raise RegistryError(f"metadata must be a JSON object, got {type(metadata).__name__}")
        clash = [k for k in RESERVED_METADATA if k in user]
        if clash:
            raise RegistryError(f"metadata keys {clash} are taken from model.json", hint="rename those keys")
        info = {k: art.meta.get(k) for k in RESERVED_METADATA} | user
        scores = _clean_metrics(metrics if metrics is not None else art.meta.get("metrics") or {}, metrics is not None)
        for _ in range(3):
            sha = self._store_blob(art.path)
            try:
                return self._write(lambda conn: self._insert_version(conn, name, sha, scores, info))
            except _BlobGone:
                continue  # a concurrent delete removed the shared blob: store it again
            except BaseException:
                with suppress(Exception):  # keep the original error if cleaning up fails too
                    self._drop_unused_blob(sha)
                raise
        raise RegistryError(f"could not register {name!r}: its artifact kept being deleted by another process",
                            hint="try again once concurrent deletes have finished")

    def _insert_version(self, conn: Connection, name: str, sha: str, metrics: dict, info: dict) -> ModelVersion:
        if not self._blob_path(sha).is_dir():
            raise _BlobGone
        row = conn.execute(sa.select(models_t.c.id, models_t.c.next_version)
                           .where(models_t.c.name == name).with_for_update()).first()
        if row is None:  # a new model, or one whose versions were all deleted: continue its count
            version = conn.execute(sa.select(retired_t.c.next_version).where(retired_t.c.name == name)).scalar() or 1
            conn.execute(sa.delete(retired_t).where(retired_t.c.name == name))
            model_id = conn.execute(sa.insert(models_t).values(name=name, created=_now(), next_version=version,
                                                               traffic=None)).inserted_primary_key[0]
        else:
            model_id, version = row
        created = _now()
        conn.execute(sa.insert(versions_t).values(model_id=model_id, version=version, sha256=sha, created=created,
                                                  metrics=metrics, meta=info))
        conn.execute(sa.update(models_t).where(models_t.c.id == model_id).values(next_version=version + 1))
        return ModelVersion(name=name, version=version, sha256=sha, path=self._blob_path(sha), created=created,
                            metrics=dict(metrics), metadata=dict(info))

    def models(self) -> list[dict[str, Any]]:
        """Every model: ``{"name", "latest_version", "versions", "aliases", "created"}``, sorted by name.

        Example:
            >>> Registry("sqlite://").models()
            []
        """
        with self._read() as conn:
            rows = conn.execute(
                sa.select(models_t.c.id, models_t.c.name, models_t.c.created,
                          sa.func.count(versions_t.c.id), sa.func.max(versions_t.c.version))
                .join(versions_t, versions_t.c.model_id == models_t.c.id)
                .group_by(models_t.c.id, models_t.c.name, models_t.c.created).order_by(models_t.c.name)).all()
            aliases: dict[int, dict[str, int]] = {}
            for model_id, alias, version in conn.execute(sa.select(aliases_t).order_by(aliases_t.c.alias)):
                aliases.setdefault(model_id, {})[alias] = version
        return [{"name": name, "latest_version": latest, "versions": n, "aliases": aliases.get(model_id, {}),
                 "created": created} for model_id, name, created, n, latest in rows]

    def versions(self, name: str) -> list[ModelVersion]:
        """The versions of ``name``, oldest first; NotFoundError for an unknown model."""
        name = validate_name(name)
        with self._read() as conn:
            model = self._model_row(conn, name)
            rows = conn.execute(sa.select(versions_t).where(versions_t.c.model_id == model.id)
                                .order_by(versions_t.c.version)).all()
        return [self._to_version(name, row) for row in rows]

    def get(self, name: str, version: int | None = None, alias: str | None = None) -> ModelVersion:
        """One version: ``version`` if given, else ``alias``, else alias "production" if set, else the latest.

        Example:
            >>> reg.get("iris", alias="staging").version  # doctest: +SKIP
            2
        """
        name = validate_name(name)
        if version is not None:
            version = _check_version(version)
        elif alias is not None:
            alias = _check_alias(alias)
        with self._read() as conn:
            model = self._model_row(conn, name)
            if version is None:
                aliases = dict(conn.execute(sa.select(aliases_t.c.alias, aliases_t.c.version)
                                            .where(aliases_t.c.model_id == model.id)).all())
                if alias is not None and alias not in aliases:
                    raise NotFoundError(f"model {name!r} has no alias {alias!r}",
                                        hint=f"its aliases: {_listing(sorted(aliases))}" if aliases
                                        else "it has no aliases; set one with `dlforge registry alias`")
                version = aliases.get(alias or "production")
            query = sa.select(versions_t).where(versions_t.c.model_id == model.id)
            query = (query.where(versions_t.c.version == version) if version is not None
                     else query.order_by(versions_t.c.version.desc()).limit(1))
            row = conn.execute(query).first()
            if row is None:
                raise NotFoundError(f"model {name!r} has no version {version}",
                                    hint=f"it has versions {_listing(self._version_numbers(conn, model.id))}")
        return self._to_version(name, row)

    def delete(self, name: str, version: int) -> None:
        """Delete one version (ConflictError while an alias points at it); its blob goes
        when no other version shares it, the model when it was the last version."""
        name, version = validate_name(name), _check_version(version)
        trashed: list[Path] = []

        def tx(conn: Connection) -> None:
            model = self._model_row(conn, name, lock=True)
            row = conn.execute(sa.select(versions_t.c.id, versions_t.c.sha256).where(
                versions_t.c.model_id == model.id, versions_t.c.version == version)).first()
            if row is None:
                raise NotFoundError(f"model {name!r} has no version {version}",
                                    hint=f"it has versions {_listing(self._version_numbers(conn, model.id))}")
            pointing = sorted(conn.execute(sa.select(aliases_t.c.alias).where(
                aliases_t.c.model_id == model.id, aliases_t.c.version == version)).scalars())
            if pointing:
                raise ConflictError(f"version {version} of model {name!r} is in use by alias(es) {', '.join(pointing)}",
                                    hint=f"point {pointing[0]!r} at another version (`dlforge registry alias`) "
                                         "or roll it back first")
            conn.execute(sa.delete(versions_t).where(versions_t.c.id == row.id))
            if not self._version_numbers(conn, model.id):  # the last version: the model goes too
                for table in (events_t, aliases_t):
                    conn.execute(sa.delete(table).where(table.c.model_id == model.id))
                conn.execute(sa.delete(models_t).where(models_t.c.id == model.id))
                conn.execute(sa.insert(retired_t).values(name=name, next_version=model.next_version))
            trash = self._trash_blob_if_unused(conn, row.sha256)  # last: nothing after it can fail
            if trash is not None:
                trashed.append(trash)

        try:
            self._write(tx)
        except BaseException:
            for trash in trashed:  # the commit failed after the blob was moved aside: put it back
                with suppress(OSError):
                    os.rename(trash, self._blob_path(trash.name.split("-")[0]))
            raise
        for trash in trashed:
            shutil.rmtree(trash, ignore_errors=True)

    # ---------------------------------------------------------------- aliases

    def aliases(self, name: str) -> dict[str, int]:
        """``{alias: version}`` for ``name``."""
        name = validate_name(name)
        with self._read() as conn:
            model = self._model_row(conn, name)
            return dict(conn.execute(sa.select(aliases_t.c.alias, aliases_t.c.version)
                                     .where(aliases_t.c.model_id == model.id).order_by(aliases_t.c.alias)).all())

    def set_alias(self, name: str, alias: str, version: int) -> int | None:
        """Point ``alias`` at an existing ``version``; returns the version it pointed at before (None if new).

        A version whose stored artifact no longer loads is refused (ConflictError) before anything is stored.

        Example:
            >>> reg.set_alias("iris", "production", 2)  # doctest: +SKIP
            1
        """
        name, alias, version = validate_name(name), _check_alias(alias), _check_version(version)
        self._refuse_unservable(self.get(name, version=version), alias)  # outside the write lock: it loads the model

        def tx(conn: Connection) -> int | None:
            model = self._model_row(conn, name, lock=True)
            numbers = self._version_numbers(conn, model.id)
            if version not in numbers:
                raise NotFoundError(f"model {name!r} has no version {version}",
                                    hint=f"it has versions {_listing(numbers)}")
            where = (aliases_t.c.model_id == model.id, aliases_t.c.alias == alias)
            before = conn.execute(sa.select(aliases_t.c.version).where(*where)).scalar()
            if before == version:
                return before  # nothing to change or to roll back later
            if before is None:
                conn.execute(sa.insert(aliases_t).values(model_id=model.id, alias=alias, version=version))
            else:
                conn.execute(sa.update(aliases_t).where(*where).values(version=version))
            conn.execute(sa.insert(events_t).values(model_id=model.id, alias=alias, from_version=before,
                                                    to_version=version, at=_now(), undone=False))
            return before

        return self._write(tx)

    def _refuse_unservable(self, mv: ModelVersion, alias: str) -> None:
        """ConflictError when the stored artifact of ``mv`` does not pass ``check_artifact`` (a damaged blob)."""
        from dlforge.registry.validate import check_artifact

        try:
            check_artifact(mv.path)
        except Exception as err:  # anything that fails here would fail the server's load too
            reason = err.message if isinstance(err, DlforgeError) else f"{type(err).__name__}: {err}"
            reason = reason.replace(f"{mv.path}/", "").replace(str(mv.path), "the artifact")  # no host paths
            raise ConflictError(f"alias {alias!r} of model {mv.name!r} cannot point at version {mv.version}: its "
                                f"stored artifact does not load ({reason})",
                                hint="point it at a version that loads, or register a good artifact as a new "
                                     f"version; `dlforge registry show {mv.name}` lists the versions") from None

    def rollback(self, name: str, alias: str) -> int:
        """Undo the last move of ``alias``: point it back at the version it had before; returns that version.

        Repeated rollbacks walk further back through the alias's history. A version whose stored
        artifact no longer loads is refused (ConflictError) before anything is stored.
        """
        name, alias = validate_name(name), _check_alias(alias)
        with self._read() as conn:
            planned = self._last_move(conn, self._model_row(conn, name).id, alias)
        if planned is not None and planned.from_version is not None:
            with suppress(NotFoundError):  # a deleted version: the transaction below says so
                self._refuse_unservable(self.get(name, version=planned.from_version), alias)

        def tx(conn: Connection) -> int:
            model = self._model_row(conn, name, lock=True)
            where = (aliases_t.c.model_id == model.id, aliases_t.c.alias == alias)
            current = conn.execute(sa.select(aliases_t.c.version).where(*where)).scalar()
            if current is None:
                known = list(conn.execute(sa.select(aliases_t.c.alias).where(aliases_t.c.model_id == model.id)
                                          .order_by(aliases_t.c.alias)).scalars())
                raise NotFoundError(f"model {name!r} has no alias {alias!r}",
                                    hint=f"its aliases: {_listing(known)}" if known else "it has no aliases")
            last = self._last_move(conn, model.id, alias)
            how = f"point it at another version with `dlforge registry alias {name} {alias} VERSION`"
            if last is None or last.from_version is None:
                raise RegistryError(f"alias {alias!r} of model {name!r} has nothing to roll back to: version "
                                    f"{current} is the first version it pointed at", hint=how)
            if last.from_version not in self._version_numbers(conn, model.id):
                raise RegistryError(f"alias {alias!r} of model {name!r} pointed at version {last.from_version} "
                                    "before, which has been deleted", hint=how)
            if planned is None or last.id != planned.id:  # moved by another process since the check above
                raise ConflictError(f"alias {alias!r} of model {name!r} changed during the rollback",
                                    hint="look at `dlforge registry show` and roll back again if still wanted")
            conn.execute(sa.update(aliases_t).where(*where).values(version=last.from_version))
            conn.execute(sa.update(events_t).where(events_t.c.id == last.id).values(undone=True))
            return last.from_version

        return self._write(tx)

    def _last_move(self, conn: Connection, model_id: int, alias: str) -> sa.Row | None:
        """The newest move of ``alias`` not rolled back yet."""
        return conn.execute(sa.select(events_t).where(
            events_t.c.model_id == model_id, events_t.c.alias == alias, events_t.c.undone.is_(False))
            .order_by(events_t.c.id.desc()).limit(1)).first()

    # ---------------------------------------------------------------- traffic and revision

    def traffic(self, name: str) -> dict[str, Any] | None:
        """The stored A/B traffic config of ``name`` (see ``dlforge.serve.routing``), None if unset."""
        name = validate_name(name)
        with self._read() as conn:
            return self._model_row(conn, name).traffic

    def set_traffic(self, name: str, config: dict[str, Any] | None) -> None:
        """Store (or with None clear) the traffic config of ``name``; the server validates its shape."""
        name = validate_name(name)
        if config is not None:
            config = _json_ready(config, "traffic config")
            if not isinstance(config, dict):
                raise RegistryError("traffic config must be a JSON object",
                                    hint='e.g. {"variants": [{"alias": "production", "weight": 0.9}, ...]}')

        def tx(conn: Connection) -> None:
            model = self._model_row(conn, name, lock=True)
            conn.execute(sa.update(models_t).where(models_t.c.id == model.id).values(traffic=config))

        self._write(tx)

    def revision(self) -> int:
        """A counter that every change (including key changes) increases: poll it to notice other processes' changes."""
        with self._read() as conn:
            return conn.execute(sa.select(meta_t.c.revision).where(meta_t.c.id == 1)).scalar() or 0

    # ---------------------------------------------------------------- API keys

    def create_key(self, *, admin: bool = False, label: str = "") -> str:
        """A new API key, ``"dlf_"`` + 32 urlsafe characters; only its hash is stored, so show it now.

        Example:
            >>> key = Registry("sqlite://").create_key(label="ci")
            >>> key.startswith("dlf_"), len(key)
            (True, 36)
        """
        if not isinstance(label, str) or len(label) > 200:
            raise RegistryError("key label must be a string of at most 200 characters")
        key = KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)
        self._write(lambda conn: conn.execute(sa.insert(keys_t).values(
            label=label, key_hash=_hash_key(key), admin=bool(admin), created=_now(), revoked=False)))
        return key

    def check_key(self, key: str) -> str | None:
        """``"admin"``, ``"predict"`` or None for an unknown or revoked key."""
        if not isinstance(key, str) or not key:
            return None
        with self._read() as conn:
            row = conn.execute(sa.select(keys_t.c.admin, keys_t.c.revoked)
                               .where(keys_t.c.key_hash == _hash_key(key))).first()
        if row is None or row.revoked:
            return None
        return "admin" if row.admin else "predict"

    def keys(self) -> list[dict[str, Any]]:
        """Every key's ``{"id", "label", "admin", "created", "revoked"}`` (never the hash)."""
        with self._read() as conn:
            rows = conn.execute(sa.select(keys_t.c.id, keys_t.c.label, keys_t.c.admin, keys_t.c.created,
                                          keys_t.c.revoked).order_by(keys_t.c.id)).all()
        return [dict(row._mapping) for row in rows]

    def revoke_key(self, key_id: int) -> None:
        """Revoke key ``key_id`` (revoking twice is harmless); NotFoundError for an unknown id."""

        def tx(conn: Connection) -> None:
            if conn.execute(sa.update(keys_t).where(keys_t.c.id == key_id).values(revoked=True)).rowcount == 0:
                ids = list(conn.execute(sa.select(keys_t.c.id).order_by(keys_t.c.id)).scalars())
                raise NotFoundError(f"no API key with id {key_id}",
                                    hint=f"key ids: {_listing(ids)}" if ids else "there are no keys; create one "
                                                                                 "with `dlforge keys create`")

        self._write(tx)

    def close(self) -> None:
        """Release the database connections."""
        self._engine.dispose()


def _hash_key(key: str) -> str:
    # A plain sha256 is the right tool here (as for GitHub tokens): keys are 192 random
    # bits, not passwords, so there is nothing for a slow salted hash to protect against,
    # and a deterministic hash lets the unique index find the key in one lookup.
    return hashlib.sha256(key.encode("utf-8")).hexdigest()
