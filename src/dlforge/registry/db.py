"""The registry's database: its tables, its engine and :class:`Database`, the one object the
stores (:mod:`~dlforge.registry.versions`, :mod:`~dlforge.registry.keys`) read and write through.

Any SQLAlchemy URL works: SQLite (WAL, ``BEGIN IMMEDIATE`` writers, 30 s lock wait) or
PostgreSQL, where the first statement of every write transaction updates the one ``meta``
row, whose row lock serializes writers the same way. Every write bumps ``meta.revision``,
so servers notice changes made by other processes with one cheap query.

A SQLite file is checked when a registry opens it (``PRAGMA quick_check``: it reads every
page, milliseconds for a registry's few hundred KB), so overwritten pages are reported at
once with how to restore the file, instead of as a traceback from whichever query meets
them first. :meth:`Database.error` turns the driver's errors into dlforge errors.

Example:
    >>> db = Database("sqlite://")  # in memory
    >>> db.write(lambda conn: conn.execute(sa.select(meta_t.c.schema_version)).scalar())
    1
    >>> db.revision(), sorted(metadata.tables)[:3]
    (1, ['alias_events', 'aliases', 'api_keys'])
"""

from __future__ import annotations

import importlib.util
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import (ArgumentError, DatabaseError, DBAPIError, IntegrityError, NoSuchModuleError,
                            OperationalError, ProgrammingError)
from sqlalchemy.pool import StaticPool

from dlforge.errors import DlforgeError, RegistryError, StorageError, UnavailableError

SCHEMA_VERSION = 1
SQLITE_TIMEOUT_S = 30  # how long a writer waits for another process's SQLite lock
WRITE = "dlforge_write"  # execution option: this transaction writes (SQLite: BEGIN IMMEDIATE)
_SCHEMA_RETRIES = 8  # processes starting together all create the tables
_WRITE_RETRIES = 4
_RETRY_SQLSTATES = ("40001", "40P01")  # serialization_failure, deadlock_detected
T = TypeVar("T")

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


class Database:
    """The registry database at ``url`` (a SQLAlchemy URL): schema on first use, read and
    write transactions, the revision counter, and driver errors as dlforge errors.

    ``on_open`` runs once, after the schema is first found or made (the registry sweeps
    leftover scratch folders there).

    Example:
        >>> db = Database("sqlite://")
        >>> with db.read() as conn:
        ...     conn.execute(sa.select(sa.func.count()).select_from(models_t)).scalar()
        0
    """

    def __init__(self, url: str, on_open: Callable[[], Any] | None = None) -> None:
        self.engine, self.file = make_engine(url)  # file: the SQLite file, None for other databases
        self.url: str = self.engine.url.render_as_string(hide_password=True)
        self._on_open = on_open
        self._ready = False

    def ensure_schema(self) -> None:
        """Check a SQLite file's pages, create missing tables and refuse a newer schema; once per object."""
        if self._ready:
            return
        if self.file is not None:
            self.file.parent.mkdir(parents=True, exist_ok=True)
        check_integrity(self.engine, self.file)  # damaged pages: say so now, and how to restore
        for attempt in range(_SCHEMA_RETRIES):
            try:
                with self.engine.connect() as conn:
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
                # The losers of a creation race fail with "already exists" (or a duplicate
                # key in the catalog) and find the tables there.
                text = str(err.orig).lower()
                racing = isinstance(err, IntegrityError) or "already exists" in text or "locked" in text
                if not racing or attempt == _SCHEMA_RETRIES - 1:
                    raise self.error(err) from None
                time.sleep(0.05 * (attempt + 1) * (1 + random.random()))
        self._ready = True
        if self._on_open is not None:
            self._on_open()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reading; database failures leave it as dlforge errors."""
        self.ensure_schema()
        try:
            with self.engine.connect() as conn:
                yield conn
        except DatabaseError as err:
            raise self.error(err) from None

    def write(self, fn: Callable[[Connection], T], *, bump: bool = True) -> T:
        """Run ``fn`` in one write transaction that bumps the revision; retried on a unique-key race.

        ``bump=False`` leaves the revision alone (A/B records: servers need not reload for them).

        ``fn`` may run more than once, so it must only touch the database (or undo its
        other effects itself). An IntegrityError that outlasts the retries is raised as is.

        Example:
            >>> db = Database("sqlite://")
            >>> db.write(lambda conn: None), db.revision()
            (None, 1)
        """
        self.ensure_schema()
        for attempt in range(_WRITE_RETRIES):
            try:
                with self.engine.connect() as conn:
                    conn.execution_options(**{WRITE: True})
                    with conn.begin():
                        if bump:  # first statement: the meta row lock serializes writers on PostgreSQL
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
                    raise self.error(err) from None
                time.sleep(0.02 * (attempt + 1) * (1 + random.random()))
            except DatabaseError as err:  # e.g. pages damaged since the check at open
                raise self.error(err) from None
        raise AssertionError("unreachable")

    def revision(self) -> int:
        """The counter every write increases (0 for a new database)."""
        with self.read() as conn:
            return conn.execute(sa.select(meta_t.c.revision).where(meta_t.c.id == 1)).scalar() or 0

    def error(self, err: DBAPIError) -> DlforgeError:
        """The dlforge error for a driver error: a full disk, damaged pages, else UnavailableError."""
        known = database_error(err, self.file)
        if known is not None:
            return known
        # No URL and only the driver's first line: servers show this to clients (the CLI adds the URL),
        # and PostgreSQL puts the failing SQL on the lines after it.
        reason = (str(err.orig).strip().splitlines() or ["no reason given"])[0]
        return UnavailableError(f"the registry database failed: {reason}",
                                hint="check that the database server is up, the URL and credentials are right and "
                                     "a SQLite file is writable")

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()


def now() -> str:
    """The time as the registry stores it: ISO 8601, UTC, whole seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def listing(items: list[Any], limit: int = 20) -> str:
    """``items`` for a hint, at most ``limit`` of them: ``listing([1, 2]) == "1, 2"``."""
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


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
