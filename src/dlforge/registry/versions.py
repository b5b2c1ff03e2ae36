"""Named models and their numbered versions; :mod:`~dlforge.registry.aliases` points names at them.

The rows live in the registry database (:class:`~dlforge.registry.db.Database`); each
version's artifact is a blob in a :class:`~dlforge.registry.blobs.BlobStore`, shared by
every version with the same content.

- Versions are numbered 1, 2, 3... per model and never reused: the next number is a counter,
  not ``max + 1``, and it survives deleting every version (a later registration under the
  same name continues the count).
- Deleting a version refuses while an alias points at it; its blob goes once no version uses it.
- The model row is locked (``FOR UPDATE``) by every change to a model, and
  ``UNIQUE(model, version)`` stands behind it, with a retry.

Example:
    >>> import tempfile
    >>> from dlforge.registry.blobs import BlobStore
    >>> from dlforge.registry.db import Database
    >>> store = VersionStore(Database("sqlite://"), BlobStore(Path(tempfile.mkdtemp())))
    >>> store.models()
    []
"""

from __future__ import annotations

import json
import math
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dlforge.errors import ArtifactError, ConflictError, NotFoundError, RegistryError
from dlforge.registry.blobs import BlobStore
from dlforge.registry.db import Database, aliases_t, events_t, listing, models_t, now, retired_t, versions_t
from dlforge.registry.names import validate_name

# Always taken from model.json; "run" is the name of the run directory that wrote the artifact
# (absent for artifacts saved outside a run, or before runs recorded it): the run index finds a
# run's versions by it, so a caller cannot set it.
RESERVED_METADATA = ("task", "arch", "class_names", "input_signature", "run")


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

    @property
    def run(self) -> str | None:
        """The run directory (its name) that wrote this version's artifact, or None when unknown.

        Example:
            >>> ModelVersion("m", 1, "ab", Path("/a"), "", {}, {"run": "iris-20240101-120000"}).run
            'iris-20240101-120000'
        """
        run = self.metadata.get("run")
        return run if isinstance(run, str) else None  # older registries may hold anything a user set

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


class VersionStore:
    """The models and versions in ``db``, with their artifacts in ``blobs``.

    :class:`~dlforge.registry.store.Registry` documents each method with an example.
    """

    def __init__(self, db: Database, blobs: BlobStore) -> None:
        self._db = db
        self._blobs = blobs

    # ---------------------------------------------------------------- models and versions

    def register(self, model_dir: str | Path, name: str, *, metrics: dict[str, float] | None = None,
                 metadata: dict[str, Any] | None = None) -> ModelVersion:
        """Add the artifact in ``model_dir`` as the next version of ``name``; no alias moves."""
        from dlforge.registry.artifact import load_artifact  # torch: only commands that load a model import it
        from dlforge.registry.validate import check_artifact

        name = validate_name(name)
        self._db.ensure_schema()  # a damaged or unreachable database fails before the copy
        try:
            check_artifact(model_dir)  # what could not be served is refused before anything is stored
            art = load_artifact(model_dir)
        except ArtifactError as err:
            raise ArtifactError(f"cannot register {model_dir}: {err.message}",
                                hint=err.hint or "register a model/ folder written by save_artifact or a run "
                                                 "directory from `dlforge train`") from None
        user = json_ready(metadata or {}, "metadata")
        if not isinstance(user, dict):
            raise RegistryError(f"metadata must be a JSON object, got {type(metadata).__name__}")
        clash = [k for k in RESERVED_METADATA if k in user]
        if clash:
            why = "; run is the name of the run directory that wrote the artifact" if "run" in clash else ""
            raise RegistryError(f"metadata keys {clash} are taken from model.json", hint=f"rename those keys{why}")
        run = run_of(art.meta)
        info = {k: art.meta.get(k) for k in RESERVED_METADATA if k != "run"} | ({"run": run} if run else {}) | user
        scores = _clean_metrics(metrics if metrics is not None else art.meta.get("metrics") or {}, metrics is not None)
        for _ in range(3):
            sha = self._blobs.store(art.path)
            try:
                return self._db.write(lambda conn: self._insert_version(conn, name, sha, scores, info))
            except _BlobGone:
                continue  # a concurrent delete removed the shared blob: store it again
            except BaseException:
                with suppress(Exception):  # keep the original error if cleaning up fails too
                    self._blobs.drop(self._db.write(lambda conn: self._trash_if_unused(conn, sha)))
                raise
        raise RegistryError(f"could not register {name!r}: its artifact kept being deleted by another process",
                            hint="try again once concurrent deletes have finished")

    def _insert_version(self, conn: Connection, name: str, sha: str, metrics: dict, info: dict) -> ModelVersion:
        if not self._blobs.path(sha).is_dir():
            raise _BlobGone
        row = conn.execute(sa.select(models_t.c.id, models_t.c.next_version)
                           .where(models_t.c.name == name).with_for_update()).first()
        if row is None:  # a new model, or one whose versions were all deleted: continue its count
            version = conn.execute(sa.select(retired_t.c.next_version).where(retired_t.c.name == name)).scalar() or 1
            conn.execute(sa.delete(retired_t).where(retired_t.c.name == name))
            model_id = conn.execute(sa.insert(models_t).values(name=name, created=now(), next_version=version,
                                                               traffic=None)).inserted_primary_key[0]
        else:
            model_id, version = row
        created = now()
        conn.execute(sa.insert(versions_t).values(model_id=model_id, version=version, sha256=sha, created=created,
                                                  metrics=metrics, meta=info))
        conn.execute(sa.update(models_t).where(models_t.c.id == model_id).values(next_version=version + 1))
        return ModelVersion(name=name, version=version, sha256=sha, path=self._blobs.path(sha), created=created,
                            metrics=dict(metrics), metadata=dict(info))

    def models(self) -> list[dict[str, Any]]:
        """Every model: ``{"name", "latest_version", "latest_run", "versions", "aliases", "created"}``,
        sorted by name (``latest_run``: the run that wrote the latest version, or None)."""
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(models_t.c.id, models_t.c.name, models_t.c.created,
                          sa.func.count(versions_t.c.id), sa.func.max(versions_t.c.version))
                .join(versions_t, versions_t.c.model_id == models_t.c.id)
                .group_by(models_t.c.id, models_t.c.name, models_t.c.created).order_by(models_t.c.name)).all()
            aliases: dict[int, dict[str, int]] = {}
            for model_id, alias, version in conn.execute(sa.select(aliases_t).order_by(aliases_t.c.alias)):
                aliases.setdefault(model_id, {})[alias] = version
            latest_t = (sa.select(versions_t.c.model_id, sa.func.max(versions_t.c.version).label("version"))
                        .group_by(versions_t.c.model_id).subquery())
            runs = {model_id: (meta or {}).get("run") for model_id, meta in conn.execute(
                sa.select(versions_t.c.model_id, versions_t.c.meta).join(latest_t, sa.and_(
                    versions_t.c.model_id == latest_t.c.model_id, versions_t.c.version == latest_t.c.version)))}
        return [{"name": name, "latest_version": latest, "latest_run": runs.get(model_id), "versions": n,
                 "aliases": aliases.get(model_id, {}), "created": created}
                for model_id, name, created, n, latest in rows]

    def versions(self, name: str) -> list[ModelVersion]:
        """The versions of ``name``, oldest first; NotFoundError for an unknown model."""
        name = validate_name(name)
        with self._db.read() as conn:
            model = model_row(conn, name)
            rows = conn.execute(sa.select(versions_t).where(versions_t.c.model_id == model.id)
                                .order_by(versions_t.c.version)).all()
        return [self._to_version(name, row) for row in rows]

    def get(self, name: str, version: int | None = None, alias: str | None = None) -> ModelVersion:
        """One version: ``version`` if given, else ``alias``, else alias "production" if set, else the latest."""
        name = validate_name(name)
        if version is not None:
            version = check_version(version)
        elif alias is not None:
            alias = check_alias(alias)
        with self._db.read() as conn:
            model = model_row(conn, name)
            if version is None:
                aliases = dict(conn.execute(sa.select(aliases_t.c.alias, aliases_t.c.version)
                                            .where(aliases_t.c.model_id == model.id)).all())
                if alias is not None and alias not in aliases:
                    raise NotFoundError(f"model {name!r} has no alias {alias!r}",
                                        hint=f"its aliases: {listing(sorted(aliases))}" if aliases
                                        else "it has no aliases; set one with `dlforge registry alias`")
                version = aliases.get(alias or "production")
            query = sa.select(versions_t).where(versions_t.c.model_id == model.id)
            query = (query.where(versions_t.c.version == version) if version is not None
                     else query.order_by(versions_t.c.version.desc()).limit(1))
            row = conn.execute(query).first()
            if row is None:
                raise NotFoundError(f"model {name!r} has no version {version}",
                                    hint=f"it has versions {listing(version_numbers(conn, model.id))}")
        return self._to_version(name, row)

    def delete(self, name: str, version: int) -> None:
        """Delete one version (ConflictError while an alias points at it); its blob goes
        when no other version shares it, the model when it was the last version."""
        name, version = validate_name(name), check_version(version)
        trashed: list[Path] = []

        def tx(conn: Connection) -> None:
            model = model_row(conn, name, lock=True)
            row = conn.execute(sa.select(versions_t.c.id, versions_t.c.sha256).where(
                versions_t.c.model_id == model.id, versions_t.c.version == version)).first()
            if row is None:
                raise NotFoundError(f"model {name!r} has no version {version}",
                                    hint=f"it has versions {listing(version_numbers(conn, model.id))}")
            pointing = sorted(conn.execute(sa.select(aliases_t.c.alias).where(
                aliases_t.c.model_id == model.id, aliases_t.c.version == version)).scalars())
            if pointing:
                raise ConflictError(f"version {version} of model {name!r} is in use by alias(es) {', '.join(pointing)}",
                                    hint=f"point {pointing[0]!r} at another version (`dlforge registry alias`) "
                                         "or roll it back first")
            conn.execute(sa.delete(versions_t).where(versions_t.c.id == row.id))
            if not version_numbers(conn, model.id):  # the last version: the model goes too
                for table in (events_t, aliases_t):
                    conn.execute(sa.delete(table).where(table.c.model_id == model.id))
                conn.execute(sa.delete(models_t).where(models_t.c.id == model.id))
                conn.execute(sa.insert(retired_t).values(name=name, next_version=model.next_version))
            trash = self._trash_if_unused(conn, row.sha256)  # last: nothing after it can fail
            if trash is not None:
                trashed.append(trash)

        try:
            self._db.write(tx)
        except BaseException:
            for trash in trashed:  # the commit failed after the blob was moved aside: put it back
                self._blobs.restore(trash)
            raise
        for trash in trashed:
            self._blobs.drop(trash)

    def _trash_if_unused(self, conn: Connection, sha: str) -> Path | None:
        """Inside a write transaction: move the blob aside when no version uses it (the
        caller drops it after the commit). Writers are serialized, so no concurrent
        registration can start using it in between."""
        used = conn.execute(sa.select(sa.func.count()).where(versions_t.c.sha256 == sha)).scalar_one()
        return None if used else self._blobs.trash(sha)

    def _to_version(self, name: str, row: sa.Row) -> ModelVersion:
        return ModelVersion(name=name, version=row.version, sha256=row.sha256, path=self._blobs.path(row.sha256),
                            created=row.created, metrics=dict(row.metrics or {}), metadata=dict(row.meta or {}))


# ---------------------------------------------------------------- rows and checks

def model_row(conn: Connection, name: str, lock: bool = False) -> sa.Row:
    """The ``models`` row of ``name`` (locked FOR UPDATE with ``lock``); NotFoundError listing the names."""
    query = sa.select(models_t).where(models_t.c.name == name)
    row = conn.execute(query.with_for_update() if lock else query).first()
    if row is None:
        names = list(conn.execute(sa.select(models_t.c.name).order_by(models_t.c.name)).scalars())
        hint = (f"registered models: {listing(names)}" if names else "the registry is empty; "
                "add one with `dlforge registry register MODEL_DIR --name NAME`")
        raise NotFoundError(f"no model named {name!r}", hint=hint)
    return row


def version_numbers(conn: Connection, model_id: int) -> list[int]:
    """The version numbers of model ``model_id``, ascending."""
    return list(conn.execute(sa.select(versions_t.c.version).where(versions_t.c.model_id == model_id)
                             .order_by(versions_t.c.version)).scalars())


def check_version(version: Any) -> int:
    """``version`` if it is a positive integer, else RegistryError.

    Example:
        >>> check_version(3)
        3
    """
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise RegistryError(f"version must be a positive integer, got {version!r}", hint="versions are 1, 2, 3...")
    return version


def check_alias(alias: str) -> str:
    """``alias`` if it is a valid name and not all digits (so "3" always means version 3).

    Example:
        >>> check_alias("production")
        'production'
    """
    alias = validate_name(alias, kind="alias")
    if alias.isdigit():
        raise RegistryError(f"alias {alias!r} is all digits", hint="use a word such as production or staging")
    return alias


def run_of(meta: dict[str, Any]) -> str | None:
    """The name of the run directory that wrote an artifact, from its model.json (None when
    the artifact was saved outside a run, or by a dlforge from before runs recorded it).

    Example:
        >>> run_of({"training": {"run": "iris-20240101-120000"}})
        'iris-20240101-120000'
        >>> run_of({"training": {}}) is None
        True
    """
    training = meta.get("training")
    run = training.get("run") if isinstance(training, dict) else None
    return run if isinstance(run, str) and run else None


def json_ready(value: Any, what: str) -> Any:
    """``value`` as it reads back from JSON; RegistryError naming ``what`` when it is not JSON (or not finite)."""
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
