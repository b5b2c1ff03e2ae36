"""The registry's tables and database engines (SQLite with WAL and ``BEGIN IMMEDIATE``
writers, or any other SQLAlchemy URL); :mod:`dlforge.registry.store` uses them.

A SQLite file is checked when a registry opens it (``PRAGMA quick_check``: it reads every
page, milliseconds for a registry's few hundred KB), so overwritten pages are reported at
once with how to restore the file, instead of as a traceback from whichever query meets
them first. :func:`database_error` turns the driver's errors into dlforge errors.

Example:
    >>> engine, file = make_engine("sqlite://")  # in memory
    >>> metadata.create_all(engine); sorted(metadata.tables)[:3]
    ['alias_events', 'aliases', 'api_keys']
"""

from __future__ import annotations

import importlib.util
import sqlite3
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError
from sqlalchemy.pool import StaticPool

from dlforge.errors import DlforgeError, RegistryError, StorageError

SQLITE_TIMEOUT_S = 30  # how long a writer waits for another process's SQLite lock
WRITE = "dlforge_write"  # execution option: this transaction writes (SQLite: BEGIN IMMEDIATE)

metadata = sa.MetaData()
meta_t = sa.Table("meta", metadata, sa.Column("id", sa.Integer, primary_key=True),
                  sa.Column("revision", sa.Integer, nullable=False),
                  sa.Column("schema_version", sa.Integer, nullable=False))
models_t = sa.Table("models", metadata, sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("name", sa.String(128), nullable=False, unique=True),
                    sa.Column("created", sa.String(40), nullable=False),
                    sa.Column("next_version", sa.Integer, nullable=False),
                    sa.Column("traffic", sa.JSON, nullable=True))
versions_t = sa.Table("versions", metadata, sa.Column("id", sa.Integer, primary_key=True),
                      sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id"), nullable=False),
                      sa.Column("version", sa.Integer, nullable=False),
                      sa.Column("sha256", sa.String(64), nullable=False, index=True),
                      sa.Column("created", sa.String(40), nullable=False),
                      sa.Column("metrics", sa.JSON, nullable=False),
                      sa.Column("metadata", sa.JSON, nullable=False, key="meta"),
                      sa.UniqueConstraint("model_id", "version"))
aliases_t = sa.Table("aliases", metadata,
                     sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id"), primary_key=True),
                     sa.Column("alias", sa.String(128), primary_key=True),
                     sa.Column("version", sa.Integer, nullable=False))
events_t = sa.Table("alias_events", metadata, sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id"), nullable=False),
                    sa.Column("alias", sa.String(128), nullable=False),
                    sa.Column("from_version", sa.Integer, nullable=True),
                    sa.Column("to_version", sa.Integer, nullable=False),
                    sa.Column("at", sa.String(40), nullable=False),
                    sa.Column("undone", sa.Boolean, nullable=False, default=False))
keys_t = sa.Table("api_keys", metadata, sa.Column("id", sa.Integer, primary_key=True),
                  sa.Column("label", sa.String(200), nullable=False),
                  sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
                  sa.Column("admin", sa.Boolean, nullable=False),
                  sa.Column("created", sa.String(40), nullable=False),
                  sa.Column("revoked", sa.Boolean, nullable=False, default=False))
# the version counter of a model whose last version was deleted, so its numbers are never reused
retired_t = sa.Table("retired_models", metadata, sa.Column("name", sa.String(128), primary_key=True),
                     sa.Column("next_version", sa.Integer, nullable=False))



def make_engine(url: str) -> tuple[Engine, Path | None]:
    """An engine for ``url`` and the SQLite file it writes (None for other databases or in-memory SQLite)."""
    try:
        parsed = make_url(url)
        backend = parsed.get_backend_name()
    except ArgumentError:
        raise RegistryError(f"{url!r} is not a database URL or file path",
                            hint="use a path like registry/registry.db or postgresql+psycopg://user@host/db") from None
    if backend != "sqlite":
        if parsed.drivername == "postgresql" and not _importable("psycopg2") and _importable("psycopg"):
            parsed = parsed.set(drivername="postgresql+psycopg")  # the driver dlforge installs
        try:
            return sa.create_engine(parsed, pool_pre_ping=True), None
        except (NoSuchModuleError, ImportError) as err:
            raise RegistryError(f"{parsed.render_as_string(hide_password=True)!r} needs a database driver that "
                                f"is not installed ({err})",
                                hint="pip install 'psycopg[binary]' and use postgresql+psycopg://") from None
    memory = parsed.database in (None, "", ":memory:")
    file = None if memory else Path(parsed.database).expanduser().resolve()
    if file is not None:
        parsed = parsed.set(database=str(file))
    kwargs: dict[str, Any] = {"connect_args": {"timeout": SQLITE_TIMEOUT_S, "check_same_thread": False}}
    if memory:
        kwargs["poolclass"] = StaticPool  # one shared connection, else each would see its own empty database
    engine = sa.create_engine(parsed, **kwargs)

    # SQLAlchemy's "serializable isolation / savepoints" recipe for pysqlite: the driver
    # begins no transactions itself, and we choose BEGIN IMMEDIATE for writers so they
    # take the lock up front (waiting up to the timeout) instead of failing on upgrade.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        if not memory and cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE) else "BEGIN")

    return engine, file


def check_integrity(engine: Engine, file: Path | None) -> None:
    """RegistryError when the SQLite ``file`` is not a database or fails ``PRAGMA quick_check``.

    Other databases (``file`` None) check themselves; a locked or unreadable file is left
    to the first real query, which reports it.

    Example:
        >>> engine, file = make_engine("sqlite://"); check_integrity(engine, file)  # nothing to check
    """
    if file is None or not file.is_file() or file.stat().st_size == 0:
        return
    try:
        with engine.connect() as conn:
            rows = [row[0] for row in conn.exec_driver_sql("PRAGMA quick_check").all()]
    except OperationalError:
        return
    except DBAPIError as err:  # "file is not a database", "database disk image is malformed"
        raise damaged(file, str(err.orig)) from None
    if rows != ["ok"]:
        problems = [line for row in rows for line in str(row).splitlines() if not line.startswith("***")]
        more = f" and {len(problems) - 2} more problems" if len(problems) > 2 else ""
        raise damaged(file, "; ".join(problems[:2]) + more)


def damaged(file: Path | str, detail: str) -> RegistryError:
    """The error for a registry database whose pages are not what SQLite wrote."""
    name = Path(file).name  # no directories: servers show this to clients
    return RegistryError(
        f"the registry database {name} is damaged ({detail.strip()})",
        hint=f"restore it from a backup, or salvage what is readable: sqlite3 {name} \".recover\" | sqlite3 "
             "recovered.db, then use --registry recovered.db; the artifacts folder is content-addressed and "
             "intact, so every version whose row survives still loads")


def database_error(err: DBAPIError, file: Path | None) -> DlforgeError | None:
    """StorageError for a full disk, the damaged-database RegistryError for corrupt pages, else None."""
    text = str(err.orig).lower()
    if "database or disk is full" in text or "disk quota" in text:
        return StorageError("the disk holding the registry database is full; the change was not stored",
                            hint="free some space (or raise the quota) and try again")
    corrupt = type(err.orig) is sqlite3.DatabaseError or "malformed" in text or "not a database" in text
    return damaged(file or "database", str(err.orig)) if corrupt else None


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None
