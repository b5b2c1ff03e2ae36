"""Where tuning studies live: an Optuna RDB storage on SQLite (default) or any SQLAlchemy URL.

Several workers may share one storage; :func:`open_storage` makes that safe (SQLite lock
waits, stale-trial heartbeats, and the race of two workers creating a new database).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import optuna

from dlforge.errors import ConfigError

SQLITE_TIMEOUT_S = 60  # how long a worker waits for another's SQLite write lock
HEARTBEAT_S, GRACE_S = 60, 180  # a trial silent for GRACE_S is from a dead worker


def default_storage(runs_dir: str | Path, name: str) -> str:
    """``sqlite:///<runs_dir>/<name>-tune.db`` as an absolute URL (workers may start elsewhere)."""
    path = Path(runs_dir).resolve() / f"{name}-tune.db"
    return f"sqlite:///{path}"


def display_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (for reports and logs).

    Example:
        >>> display_url("postgresql://tuner:secret@db/studies")
        'postgresql://tuner:***@db/studies'
    """
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL is reported by open_storage; never echo it raw
        return "<invalid URL>"


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An RDB storage for ``url``: SQLite waits up to 60 s for a lock, others ping stale
    connections; a heartbeat marks trials of dead workers failed and queues them again.

    Example:
        >>> storage = open_storage("sqlite:///:memory:")
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, OperationalError

    try:
        backend = make_url(url).get_backend_name()
    except ArgumentError:
        raise ConfigError(f"tune.storage {display_url(url)!r} is not a SQLAlchemy database URL",
                          hint="use sqlite:///runs/study.db or postgresql://user@host/db") from None
    if backend == "sqlite":
        Path(make_url(url).database or ".").expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    retry = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):  # optuna >= 5
            retry["heartbeat_stale_trial_callback"] = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
        else:
            retry["failed_trial_callback"] = optuna.storages.RetryFailedTrialCallback(max_retry=1)
        for attempt in range(5):
            try:
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S,
                                                  grace_period=GRACE_S, **retry)
            except (NoSuchModuleError, ImportError) as err:
                raise ConfigError(f"tune.storage {display_url(url)!r} needs a database driver that is not "
                                  f"installed ({err})",
                                  hint="install it, e.g. pip install psycopg2-binary for postgresql://") from None
            except (OperationalError, IntegrityError) as err:
                # Two workers opening a new database both create its tables and stamp its
                # schema version; the slower one fails ("table ... already exists", a
                # duplicate key) and finds everything in place on a second try.
                racing = isinstance(err, IntegrityError) or "already exists" in str(err.orig)
                if racing and attempt < 4:
                    time.sleep(0.2 * (attempt + 1))
                    continue
                raise ConfigError(f"cannot open tune.storage {display_url(url)!r}: {err.orig}",
                                  hint="check the host, database name, credentials and that the server is up") from None
    raise AssertionError("unreachable")
