"""A/B experiment records in the registry database, so that every server replica sees all traffic.

Each answered request leaves one row (model, the server's request id, the client's
correlation id, variant, version, predictions, predicted class indices, latency, time, and
later the feedback label with how many samples it judged and how many were right). Three parts:

- :class:`ExperimentStore` (``Registry.experiments``): the table's reads and writes. The table
  is made on first use, apart from the registry's own schema (which stays the one older dlforge
  versions share during a rolling upgrade); its writes do not bump the registry's revision:
  servers reload on revision changes, and a record is no reason to reload.
- :class:`ExperimentWriter`: the batched writes, off the request path. ``append`` queues a row
  in memory (at most ``max_pending``; beyond, the oldest is dropped and counted); ``flush``
  (the server's background task calls it every ~0.25 s, or sooner once ``batch_rows`` are
  queued) writes them in one transaction per batch (one multi-row INSERT) and prunes each
  model to its last ``keep`` rows once a tenth of ``keep`` has been written. A failed flush is logged once per distinct error and retried at the next one; it never
  raises.
- :class:`SharedRecords`: one model's records as the record store of an
  :class:`~dlforge.serve.routing.Experiment`. A request still queued in this process is flushed
  before it is looked up; one found nowhere is looked for again for up to ``wait_s`` (another
  replica may not have flushed it yet).

Example:
    >>> from dlforge.registry.db import Database
    >>> store = ExperimentStore(Database("sqlite://"))
    >>> writer = ExperimentWriter(store, keep=100)
    >>> writer.append(dict(model="iris", request_id="r1", variant="production", version=1,
    ...                    predictions=["setosa"], latency_s=0.004))
    >>> writer.flush(), store.counts("iris")
    (1, {'production': 1})
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from dlforge.errors import DlforgeError
from dlforge.registry.db import WRITE, Database

log = logging.getLogger("dlforge.registry")
BATCH_ROWS = 500  # rows per write transaction (and the queue length that asks for an early flush)
MAX_PENDING = 20_000  # rows queued at most while the database is unreachable; the oldest go first
KEEP = 10_000  # records kept per model (the latest)
WAIT_S = 0.5  # how long a lookup waits for a request another replica served and has not flushed yet
_RECORD = ("variant", "version", "predictions", "indices", "latency_s", "correlation_id", "feedback", "correct",
           "label", "at")
_CREATE_RETRIES = 8  # replicas starting together all create the table

experiments_metadata = sa.MetaData()  # not the registry's metadata: see the module docstring
experiments_t = sa.Table("experiment_records", experiments_metadata, sa.Column("id", sa.Integer, primary_key=True),
                         sa.Column("model", sa.String(128), nullable=False),
                         sa.Column("request_id", sa.String(80), nullable=False),  # the server's id of the request
                         sa.Column("correlation_id", sa.String(80), nullable=True),  # the client's X-Request-Id
                         sa.Column("variant", sa.String(160), nullable=False),
                         sa.Column("version", sa.Integer, nullable=False),
                         sa.Column("predictions", sa.JSON, nullable=False),
                         sa.Column("indices", sa.JSON, nullable=True),  # predicted class indices
                         sa.Column("latency_s", sa.Float, nullable=False),
                         sa.Column("at", sa.Float, nullable=False),  # unix time of the answer
                         sa.Column("label", sa.JSON, nullable=True),  # the feedback's true label(s)
                         sa.Column("feedback", sa.Integer, nullable=False),  # samples labelled
                         sa.Column("correct", sa.Integer, nullable=False),  # samples predicted right
                         sa.UniqueConstraint("model", "request_id"),
                         sa.Index("ix_experiment_records_model_id", "model", "id"))


class StatsRow(NamedTuple):
    """What the A/B statistics read of one record."""

    variant: str
    version: int
    latency_s: float
    feedback: int
    correct: int


class ExperimentStore:
    """The experiment records of every model in ``db``.

    Example:
        >>> store = ExperimentStore(Database("sqlite://"))
        >>> store.record_batch([dict(model="m", request_id="r1", variant="a", version=1, predictions=[0],
        ...                          indices=[0], latency_s=0.01)])
        1
        >>> store.feedback("m", "r1", label=0, feedback=1, correct=1), store.record_of("m", "r1")["correct"]
        (True, 1)
        >>> store.stats_rows("m")
        [StatsRow(variant='a', version=1, latency_s=0.01, feedback=1, correct=1)]
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._ready = False
        self._unpruned: dict[str, int] = {}  # model -> rows this object wrote since it last pruned it

    def _ensure_table(self) -> None:
        """Create the table if it is missing; once per object."""
        if self._ready:
            return
        self._db.ensure_schema()
        for attempt in range(_CREATE_RETRIES):
            try:
                with self._db.engine.connect() as conn:
                    conn.execution_options(**{WRITE: True})
                    with conn.begin():
                        experiments_metadata.create_all(conn)
                break
            except (OperationalError, ProgrammingError, IntegrityError) as err:
                # the losers of a creation race fail with "already exists" and find the table there
                if attempt == _CREATE_RETRIES - 1:
                    raise self._db.error(err) from None
                time.sleep(0.05 * (attempt + 1) * (1 + random.random()))
        self._ready = True

    def record_batch(self, rows: list[dict[str, Any]], *, keep: int | None = None) -> int:
        """Insert ``rows`` in one transaction (a request id already stored is skipped), and keep
        each model's last ``keep`` records (None: keep all; up to a tenth more between two prunes,
        which run once ``keep // 10`` rows of a model have been written); returns ``len(rows)``.

        A row has ``model``, ``request_id``, ``variant``, ``version``, ``predictions``,
        ``latency_s`` and optionally ``indices``, ``correlation_id`` and ``at`` (unix time; default now).
        """
        if not rows:
            return 0
        now = time.time()
        values = [{"model": r["model"], "request_id": r["request_id"], "variant": r["variant"],
                   "version": int(r["version"]), "predictions": list(r["predictions"]),
                   "indices": None if r.get("indices") is None else list(r["indices"]),
                   "latency_s": float(r["latency_s"]), "correlation_id": r.get("correlation_id"),
                   "at": float(r.get("at") or now), "feedback": 0, "correct": 0} for r in rows]

        due: list[str] = []
        if keep is not None:  # a prune reads ``keep`` index entries: once per keep/10 rows, not per flush
            for v in values:
                self._unpruned[v["model"]] = self._unpruned.get(v["model"], 0) + 1
            due = sorted(m for m, n in self._unpruned.items() if n >= max(1, keep // 10))

        def tx(conn: Connection) -> None:
            _insert_rows(conn, values)
            for model in due:
                _prune(conn, model, keep)

        self._ensure_table()
        self._db.write(tx, bump=False)
        for model in due:
            self._unpruned[model] = 0
        return len(values)

    def record_of(self, model: str, request_id: str) -> dict[str, Any] | None:
        """The record of ``request_id`` (None if unknown or pruned): variant, version, predictions,
        indices, latency_s, correlation_id, feedback, correct, label and at."""
        self._ensure_table()
        with self._db.read() as conn:
            row = conn.execute(sa.select(*(experiments_t.c[c] for c in _RECORD))
                               .where(experiments_t.c.model == model, experiments_t.c.request_id == request_id)).first()
        return None if row is None else dict(row._mapping)

    def feedback(self, model: str, request_id: str, *, label: Any, feedback: int, correct: int) -> bool:
        """Store a request's true ``label`` and its judgement (samples judged, samples right),
        replacing earlier feedback; False if the record is unknown or pruned."""
        def tx(conn: Connection) -> bool:
            return conn.execute(sa.update(experiments_t)
                                .where(experiments_t.c.model == model, experiments_t.c.request_id == request_id)
                                .values(label=label, feedback=int(feedback), correct=int(correct))).rowcount > 0

        self._ensure_table()
        return self._db.write(tx, bump=False)

    def stats_rows(self, model: str, limit: int = KEEP) -> list[StatsRow]:
        """The variant, version, latency and feedback of ``model``'s last ``limit`` records, oldest first."""
        c = experiments_t.c
        self._ensure_table()
        with self._db.read() as conn:
            rows = conn.execute(sa.select(c.variant, c.version, c.latency_s, c.feedback, c.correct)
                                .where(c.model == model).order_by(c.id.desc()).limit(limit)).all()
        return [StatsRow(*row) for row in reversed(rows)]

    def counts(self, model: str) -> dict[str, int]:
        """Records per variant of ``model`` (every stored one)."""
        c = experiments_t.c
        self._ensure_table()
        with self._db.read() as conn:
            rows = conn.execute(sa.select(c.variant, sa.func.count()).where(c.model == model)
                                .group_by(c.variant).order_by(c.variant)).all()
        return {variant: n for variant, n in rows}

    def prune(self, model: str, keep: int) -> int:
        """Delete all but ``model``'s last ``keep`` records; returns how many went."""
        self._ensure_table()
        return self._db.write(lambda conn: _prune(conn, model, keep), bump=False)


class ExperimentWriter:
    """Rows queued by the request path and written in batches by ``flush`` (see the module docstring).

    ``on_full`` is called (from ``append``'s thread) when ``batch_rows`` rows are queued, to ask
    for an early flush. ``written``, ``dropped`` and ``failures`` count rows stored, rows lost
    and flushes that failed.
    """

    def __init__(self, store: ExperimentStore, *, keep: int = KEEP, batch_rows: int = BATCH_ROWS,
                 max_pending: int = MAX_PENDING, on_full: Callable[[], Any] | None = None) -> None:
        if min(keep, batch_rows, max_pending) < 1:
            raise ValueError(f"keep, batch_rows and max_pending must be at least 1, got {keep}, {batch_rows}, "
                             f"{max_pending}")
        self.store, self.keep, self.batch_rows, self.max_pending = store, keep, batch_rows, max_pending
        self.on_full = on_full
        self.written = self.dropped = self.failures = 0
        self._queue: deque[dict[str, Any]] = deque()
        self._pending: set[tuple[str, str]] = set()  # (model, request id) queued or being written
        self._lock = threading.Lock()  # the queue and counters
        self._flushing = threading.Lock()  # one flush at a time: rows land in order
        self._last_error: str | None = None

    def append(self, row: dict[str, Any]) -> None:
        """Queue one row (see :meth:`ExperimentStore.record_batch`); never blocks on the database."""
        with self._lock:
            self._queue.append(row)
            self._pending.add((row["model"], row["request_id"]))
            self._trim()
            full = len(self._queue) == self.batch_rows
        if full and self.on_full is not None:
            self.on_full()

    def pending(self, model: str, request_id: str) -> bool:
        """True while the row of ``request_id`` is queued here or being written."""
        with self._lock:
            return (model, request_id) in self._pending

    def __len__(self) -> int:
        return len(self._queue)

    def flush(self) -> int:
        """Write the rows queued now, in batches; returns how many were written. Never raises:
        a database error leaves the rows queued for the next flush (logged once per distinct error).

        Rows queued while it writes wait for the next flush: taking them too kept a busy server's
        flusher writing a transaction of a few dozen rows after another (each with its commit)."""
        written = 0
        with self._flushing:
            with self._lock:
                remaining = len(self._queue)
            while remaining > 0:
                with self._lock:
                    batch = [self._queue.popleft() for _ in range(min(self.batch_rows, remaining, len(self._queue)))]
                remaining -= len(batch)
                if not batch:
                    break
                try:
                    self.store.record_batch(batch, keep=self.keep)
                except DlforgeError as err:  # unreachable, full or locked: retried at the next flush
                    with self._lock:
                        self._queue.extendleft(reversed(batch))
                        self._trim()
                        self.failures += 1
                    if str(err) != self._last_error:
                        log.error("cannot store %d A/B records, kept for the next try (logged again only when "
                                  "the error changes): %s", len(self._queue), err)
                    self._last_error = str(err)
                    break
                except Exception:  # rows the database refuses: dropped, or they would block every later row
                    log.exception("dropping %d A/B records the database refused", len(batch))
                    self._done(batch, dropped=True)
                    continue
                self._done(batch)
                written += len(batch)
                self._last_error = None
        return written

    def _done(self, batch: list[dict[str, Any]], dropped: bool = False) -> None:
        with self._lock:
            self._pending -= {(r["model"], r["request_id"]) for r in batch}
            if dropped:
                self.dropped += len(batch)
            else:
                self.written += len(batch)

    def _trim(self) -> None:
        """Drop the oldest rows beyond ``max_pending`` (under ``_lock``)."""
        while len(self._queue) > self.max_pending:
            old = self._queue.popleft()
            self._pending.discard((old["model"], old["request_id"]))
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("%d A/B records dropped so far: the database has not taken them", self.dropped)


class SharedRecords:
    """The records of ``model`` in the database, written through ``writer``: the record store of a
    shared :class:`~dlforge.serve.routing.Experiment`.

    Example:
        >>> from dlforge.registry.db import Database
        >>> records = SharedRecords(ExperimentWriter(ExperimentStore(Database("sqlite://"))), "iris")
        >>> records.add("r1", dict(variant="a", version=1, predictions=["x"], indices=None, latency_s=0.1))
        >>> records.get("r1")["variant"], records.get("nope")
        ('a', None)
    """

    def __init__(self, writer: ExperimentWriter, model: str, *, wait_s: float = WAIT_S) -> None:
        self.writer, self.model, self.wait_s = writer, model, wait_s

    def add(self, request_id: str, record: dict[str, Any]) -> None:
        """Queue a request's record (written at the next flush)."""
        self.writer.append({**record, "model": self.model, "request_id": request_id, "at": time.time()})

    def get(self, request_id: str, *, wait: bool = False) -> dict[str, Any] | None:
        """The stored record of ``request_id``; with ``wait``, looked for again for up to ``wait_s``
        seconds while not found (another replica's flush may still be on its way)."""
        if self.writer.pending(self.model, request_id):
            self.writer.flush()
        deadline = time.monotonic() + (self.wait_s if wait else 0.0)
        while True:
            record = self.writer.store.record_of(self.model, request_id)
            if record is not None or time.monotonic() >= deadline:
                return record
            time.sleep(0.05)

    def set_feedback(self, request_id: str, label: Any, feedback: int, correct: int) -> bool:
        """Store the feedback of a stored record; False if it is unknown or pruned."""
        return self.writer.store.feedback(self.model, request_id, label=label, feedback=feedback, correct=correct)

    def rows(self) -> list[StatsRow]:
        """Every replica's stored records of the model (this one's queued rows are flushed first)."""
        self.writer.flush()
        return self.writer.store.stats_rows(self.model, self.writer.keep)


def _insert_ignoring_duplicates(dialect: str) -> sa.Insert:
    """An INSERT that skips rows whose (model, request_id) is stored (a flush retried after its commit)."""
    if dialect == "postgresql":
        return postgresql.insert(experiments_t).on_conflict_do_nothing(index_elements=["model", "request_id"])
    if dialect == "sqlite":
        return sqlite.insert(experiments_t).on_conflict_do_nothing(index_elements=["model", "request_id"])
    return sa.insert(experiments_t)


_COLUMNS = ("model", "request_id", "variant", "version", "predictions", "indices", "latency_s", "correlation_id", "at",
            "feedback", "correct")
_JSON_COLUMNS = {"predictions", "indices"}


def _insert_rows(conn: Connection, values: list[dict[str, Any]]) -> None:
    """Insert ``values`` with one multi-row statement per 500 rows (SQLite and PostgreSQL).

    An executemany of the same rows costs one GIL hand-off per row (the driver releases it
    around every step): in a server whose event loop holds the GIL, a flush of 1,800 rows then
    took 0.9 s and cost every request about 80 µs of CPU. One statement hands off once.
    """
    dialect = conn.dialect.name
    if dialect not in ("sqlite", "postgresql"):
        conn.execute(_insert_ignoring_duplicates(dialect), values)
        return
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    cell = [f"CAST({mark} AS JSON)" if c in _JSON_COLUMNS and dialect == "postgresql" else mark for c in _COLUMNS]
    row_sql = "(" + ", ".join(cell) + ")"
    for i in range(0, len(values), 500):  # 500 x 11 parameters stays below every driver's limit
        chunk = values[i : i + 500]
        params = tuple(json.dumps(v[c]) if c in _JSON_COLUMNS and v[c] is not None else v[c]
                       for v in chunk for c in _COLUMNS)
        conn.exec_driver_sql(f"INSERT INTO {experiments_t.name} ({', '.join(_COLUMNS)}) VALUES "
                             f"{', '.join([row_sql] * len(chunk))} ON CONFLICT (model, request_id) DO NOTHING", params)


def _prune(conn: Connection, model: str, keep: int) -> int:
    """Delete all but the last ``keep`` records of ``model`` (two index lookups)."""
    c = experiments_t.c
    cutoff = conn.execute(sa.select(c.id).where(c.model == model).order_by(c.id.desc())
                          .offset(keep).limit(1)).scalar()
    if cutoff is None:
        return 0
    return conn.execute(sa.delete(experiments_t).where(c.model == model, c.id <= cutoff)).rowcount
