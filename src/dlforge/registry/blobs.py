"""Content-addressed artifact folders: ``<root>/<sha[:2]>/<sha>/``, so the same artifact is stored once.

A blob is stored by copying into a scratch folder (``<root>/.incoming/``, see
:mod:`dlforge.registry.disk`) and renaming it into place, so readers see a whole folder or
none. Removing one is two steps around the database transaction that stops using it:
:meth:`BlobStore.trash` moves it aside inside the transaction, then :meth:`BlobStore.drop`
deletes it after the commit, or :meth:`BlobStore.restore` puts it back if the commit failed.
Which blobs are in use is the database's business (:mod:`dlforge.registry.versions`).

Example:
    >>> import tempfile
    >>> src = Path(tempfile.mkdtemp()); _ = (src / "model.json").write_text("{}")
    >>> blobs = BlobStore(Path(tempfile.mkdtemp()))
    >>> sha = blobs.store(src)
    >>> blobs.path(sha).is_dir(), sha == content_hash(src)
    (True, True)
    >>> blobs.drop(blobs.trash(sha)); blobs.path(sha).exists()
    False
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from contextlib import suppress
from pathlib import Path

from dlforge.registry.disk import INCOMING, UPLOADS, Scratch, full_disk_as_storage_error, sweep

TRASH = ".trash"  # blobs moved aside by a transaction that has not committed yet


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


class BlobStore:
    """The artifact folders under ``root``, each named by its :func:`content_hash`.

    Example:
        >>> BlobStore(Path("/srv/artifacts")).path("ab12")
        PosixPath('/srv/artifacts/ab/ab12')
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha: str) -> Path:
        """Where the blob ``sha`` lives (whether or not it is stored)."""
        return self.root / sha[:2] / sha

    def store(self, folder: Path) -> str:
        """Store ``folder`` under its content hash (once); returns the hash.

        A full disk is a StorageError, and nothing is left behind.
        """
        sha = content_hash(folder)
        if self.path(sha).is_dir():
            return sha  # the same artifact stored before: share its blob
        with full_disk_as_storage_error("storing the artifact in the registry",
                                        hint="free some space on the artifacts folder's disk (or raise the "
                                             "quota) and register again"), Scratch(self.root / INCOMING) as tmp:
            copy = tmp.path / "artifact"
            shutil.copytree(folder, copy)
            sha = content_hash(copy)  # hash what is stored, in case the source changed meanwhile
            dest = self.path(sha)
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(copy, dest)  # atomic: readers see the whole folder or none
            except OSError:
                if not dest.is_dir():  # else another process stored the same content first
                    raise
            return sha

    def trash(self, sha: str) -> Path | None:
        """Move the blob aside (None when it is not stored); then :meth:`drop` or :meth:`restore` it."""
        blob = self.path(sha)
        if not blob.is_dir():
            return None
        trash = self.root / TRASH / f"{sha}-{uuid.uuid4().hex}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        os.rename(blob, trash)
        return trash

    def restore(self, trash: Path) -> None:
        """Put a trashed blob back (best effort: the commit that would have deleted it failed)."""
        with suppress(OSError):
            os.rename(trash, self.path(trash.name.split("-")[0]))

    def drop(self, trash: Path | None) -> None:
        """Delete a trashed blob for good (nothing for None)."""
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    def upload_folder(self) -> Scratch:
        """A scratch folder for an upload under ``<root>/.uploads/``: on the blobs' disk, and removed by
        the next start-up's :meth:`sweep` if this process dies before calling its ``remove()``."""
        return Scratch(self.root / UPLOADS)

    def sweep(self) -> list[Path]:
        """Remove the scratch folders of processes that ended mid-copy or mid-upload (see ``registry.disk``)."""
        return sweep(self.root)
