"""The artifacts folder's disk plumbing: scratch folders that a restart sweeps, and full disks.

Registering copies an artifact into ``<artifacts>/.incoming/`` before the atomic rename into
place, and the server writes an upload into ``<artifacts>/.uploads/`` (the same disk, so a
full disk is one disk to watch and the rename never crosses file systems). A process killed
mid-copy (SIGKILL, OOM, power loss) cannot clean up, so :func:`sweep` runs when a registry
is opened. The rule:

- a scratch folder ``<area>/<name>/`` is created after its lock file ``<area>/<name>.lock``,
  on which its process holds an exclusive ``flock`` until the folder is removed; the kernel
  drops the locks of a process that ends, however it ends, so a lock file nobody holds
  belongs to a dead process and the sweep removes it with its folder. A live operation, in
  this process or any other (NFS included), is never touched, however long it takes;
- a folder without a lock file (left by a dlforge from before this rule, or on a system
  without ``flock``) is removed once it is older than ``UNLOCKED_AFTER_S`` (1 hour).

Example:
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> with Scratch(root / UPLOADS) as work:
    ...     _ = (work.path / "upload.tar.gz").write_bytes(b"...")
    ...     sweep(root)  # held by this process: kept
    []
    >>> sorted(p.name for p in (root / UPLOADS).iterdir())  # removed on exit
    []
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from dlforge.errors import StorageError

try:
    import fcntl
except ImportError:  # Windows: no flock, so scratch folders are swept by age only
    fcntl = None  # type: ignore[assignment]

INCOMING, UPLOADS = ".incoming", ".uploads"  # scratch areas under the artifacts folder
UNLOCKED_AFTER_S = 3600.0  # a scratch folder with no lock file is swept once it is this old
DISK_FULL = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
log = logging.getLogger("dlforge.registry")


def disk_full(err: BaseException) -> bool:
    """True for an OSError saying the disk is full or the user's disk quota is used up.

    Example:
        >>> disk_full(OSError(errno.ENOSPC, "No space left on device")), disk_full(PermissionError(errno.EACCES, ""))
        (True, False)
    """
    return isinstance(err, OSError) and err.errno in DISK_FULL


@contextmanager
def full_disk_as_storage_error(what: str, hint: str) -> Iterator[None]:
    """Turn a full-disk OSError raised in the block into ``StorageError`` (HTTP 507, exit 2).

    ``what`` names the operation, e.g. "storing the artifact in the registry"; it must hold
    no host path, since the server shows the message to clients.

    Example:
        >>> with full_disk_as_storage_error("writing", "free space"):  # doctest: +ELLIPSIS
        ...     raise OSError(errno.ENOSPC, "No space left on device")
        Traceback (most recent call last):
        ...
        dlforge.errors.StorageError: the disk is full (No space left on device) while writing; nothing was kept ...
    """
    try:
        yield
    except OSError as err:
        if not disk_full(err):
            raise
        raise StorageError(f"the disk is full ({err.strerror or 'no space left'}) while {what}; nothing was kept",
                           hint=hint) from None


class Scratch:
    """A private scratch folder ``path`` under ``area``, locked by this process until :meth:`remove`.

    Example:
        >>> with Scratch(artifacts / INCOMING) as tmp:  # doctest: +SKIP
        ...     shutil.copytree(src, tmp.path / "artifact")
    """

    def __init__(self, area: Path) -> None:
        area.mkdir(parents=True, exist_ok=True)
        name = f"{os.getpid()}-{uuid.uuid4().hex[:16]}"
        self._lock_path = area / f"{name}.lock"
        self._fd: int | None = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a fresh file: never held
            self.path = area / name
            self.path.mkdir()
        except BaseException:
            self._release()
            raise

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def remove(self) -> None:
        """Delete the folder, then its lock file (in that order, so no unlocked folder is ever left)."""
        shutil.rmtree(self.path, ignore_errors=True)
        self._release()

    def _release(self) -> None:
        if self._fd is not None:
            with suppress(OSError):
                self._lock_path.unlink()
            os.close(self._fd)
            self._fd = None


def sweep(artifacts: Path) -> list[Path]:
    """Remove the scratch folders under ``artifacts`` whose process has ended (see the module
    docstring for the rule); returns what was removed. Never raises: it is housekeeping."""
    removed = []
    for area in (artifacts / INCOMING, artifacts / UPLOADS):
        try:
            entries = sorted(area.iterdir())
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.suffix == ".lock":
                    if _remove_if_abandoned(entry):
                        removed.append(entry.with_suffix(""))
                elif entry.is_dir() and not entry.with_name(entry.name + ".lock").exists():
                    if time.time() - entry.stat().st_mtime > UNLOCKED_AFTER_S:
                        shutil.rmtree(entry)
                        removed.append(entry)
            except OSError as err:  # e.g. a read-only artifacts folder
                log.warning("could not remove the leftover scratch folder %s: %s", entry, err)
    if removed:
        log.info("removed %d scratch folder(s) left by processes that ended: %s", len(removed),
                 ", ".join(p.name for p in removed))
    return removed


def _remove_if_abandoned(lock_path: Path) -> bool:
    """Remove ``lock_path`` and its folder when no live process holds the lock."""
    if fcntl is None:
        if time.time() - lock_path.stat().st_mtime <= UNLOCKED_AFTER_S:
            return False
        shutil.rmtree(lock_path.with_suffix(""), ignore_errors=True)
        lock_path.unlink(missing_ok=True)
        return True
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except FileNotFoundError:  # its owner just finished
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: its process is alive
            return False
        shutil.rmtree(lock_path.with_suffix(""), ignore_errors=True)
        lock_path.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)
