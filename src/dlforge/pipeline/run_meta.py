"""``run.json``: when a run started and ended, from which code and which data, and how it ended.

:func:`train_run` writes it as the run starts (``status: running``) and again as it ends
(``finished``, or ``diverged`` when NanGuard stopped a non-finite loss; ``stopped`` when the
process is interrupted). The run index (:mod:`dlforge.runs.index`) reads it; nothing that
trains does. Writing it never fails a run: a missing ``git``, an unreadable data file or a
full disk leave a field empty (or the file absent), never an exception.

Fields: ``started``/``finished`` (UTC ISO times), ``status``, ``code_version`` (``git
rev-parse HEAD`` of the working directory with ``dirty`` when it has uncommitted changes,
else ``dlforge <version>``), ``data_fingerprint`` (``sha256:<hex>`` of the data file's
bytes, or of a folder's files; ``builtin:<name> rows=R columns=C`` for a built-in set),
``host`` and ``pid`` (the index tells a killed run from a running one with them),
``stop_reason`` and ``epochs_run`` once it ended.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> start_run_file(d, source="iris", rows=150, columns=(4,))["status"]
    'running'
    >>> finish_run_file(d, stop_reason=None, epochs_run=2)["status"]
    'finished'
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import dlforge
from dlforge.train.state_io import atomic_write

RUN_FILE = "run.json"
GIT_TIMEOUT_S = 5


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def code_version(cwd: str | Path | None = None) -> str:
    """``<commit>`` (``<commit>-dirty`` with uncommitted changes) when ``cwd`` is a git checkout,
    else ``dlforge <version>``.

    Example:
        >>> code_version("/").startswith("dlforge ")
        True
    """
    cwd = Path(cwd or os.getcwd())
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S)
        if head.returncode == 0 and head.stdout.strip():
            status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                    capture_output=True, text=True, timeout=GIT_TIMEOUT_S)
            dirty = status.returncode == 0 and bool(status.stdout.strip())
            return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):  # no git, or it hung
        pass
    return f"dlforge {dlforge.__version__}"


def _hash_file(path: Path, digest: Any) -> None:
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)


def data_fingerprint(source: str, *, rows: int | None = None, columns: Any = None, frame: Any = None) -> str | None:
    """``sha256:<hex>`` of a data file (a folder: its files' relative paths and bytes, in
    order; a DataFrame given instead of a file: its rows), else ``builtin:<source>`` with the
    rows and columns loaded.

    Example:
        >>> data_fingerprint("iris", rows=150, columns=(4,))
        'builtin:iris rows=150 columns=4'
    """
    digest = hashlib.sha256()
    if frame is not None:
        import pandas as pd

        digest.update(pd.util.hash_pandas_object(frame, index=True).values.tobytes())
        digest.update(json.dumps([str(c) for c in frame.columns]).encode())
        return f"sha256:{digest.hexdigest()}"
    path = Path(source)
    if path.is_file():
        _hash_file(path, digest)
        return f"sha256:{digest.hexdigest()}"
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(str(f.relative_to(path)).encode() + b"\0")
            _hash_file(f, digest)
        return f"sha256:{digest.hexdigest()}"
    cols = "x".join(str(c) for c in columns) if isinstance(columns, (tuple, list)) else columns
    return f"builtin:{source}" + (f" rows={rows}" if rows is not None else "") + (
        f" columns={cols}" if cols not in (None, "") else "")


def read_run_file(run_dir: str | Path) -> dict[str, Any]:
    """``run.json`` of ``run_dir`` as a dict; ``{}`` when absent or unreadable (an older run)."""
    try:
        data = json.loads((Path(run_dir) / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(run_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
    try:
        atomic_write(run_dir / RUN_FILE, json.dumps(record, indent=2).encode())
    except OSError:  # a full disk: the index infers what it can from the other files
        pass
    return record


def start_run_file(run_dir: str | Path, *, source: str, rows: int | None = None, columns: Any = None,
                   frame: Any = None) -> dict[str, Any]:
    """Write ``run.json`` as a run starts (a resumed run keeps its first start and counts resumes)."""
    run_dir = Path(run_dir)
    old = read_run_file(run_dir)
    try:
        fingerprint = data_fingerprint(source, rows=rows, columns=columns, frame=frame)
    except Exception:  # noqa: BLE001 (an unreadable data file must not stop the run it fed)
        fingerprint = None
    record = {"started": old.get("started") or now_iso(), "finished": None, "status": "running",
              "code_version": code_version(), "data_fingerprint": fingerprint,
              "host": socket.gethostname(), "pid": os.getpid()}
    if old:
        record["resumed"] = int(old.get("resumed") or 0) + 1
    return _write(run_dir, record)


def finish_run_file(run_dir: str | Path, *, stop_reason: str | None = None, epochs_run: int | None = None,
                    status: str | None = None) -> dict[str, Any]:
    """Update ``run.json`` as a run ends: ``diverged`` after a non-finite stop, else ``finished``
    (or the ``status`` given, e.g. ``stopped`` on an interrupt)."""
    run_dir = Path(run_dir)
    record = read_run_file(run_dir)
    record.update({"finished": now_iso(), "stop_reason": stop_reason, "epochs_run": epochs_run,
                   "status": status or ("diverged" if stop_reason == "non_finite" else "finished")})
    return _write(run_dir, record)


def start_training_run(run_dir: str | Path, source: str, prepared: Any, frame: Any = None) -> dict[str, Any]:
    """:func:`start_run_file` for :func:`~dlforge.pipeline.train_run`: rows and columns read from
    the prepared data. Never raises: a run is not stopped by its bookkeeping."""
    try:
        splits = [getattr(prepared, k, None) for k in ("train", "val", "test")]
        rows = sum(len(s) for s in splits if s is not None)
        return start_run_file(run_dir, source=source, rows=rows, columns=getattr(prepared, "input_shape", None),
                              frame=frame)
    except Exception:  # noqa: BLE001
        return {}
