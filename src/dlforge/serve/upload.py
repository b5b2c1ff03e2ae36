"""Safe extraction of an uploaded model artifact (a tar.gz) into a folder.

An upload is hostile until proven otherwise. ``extract_artifact_tar`` accepts only a gzip
tar whose members are plain files and folders with relative names, and stops the moment the
archive asks for more than ``max_bytes`` or ``max_members``:

- the gzip stream is decompressed by us, through a counter, before tarfile sees a byte, so a
  gzip bomb (or a huge PAX header, which tarfile reads into memory) fails at the cap;
- tarfile runs in streaming mode (``r|``): no seeking, no member table built in memory;
- each member is checked by name and type (no links, devices or fifos; no absolute, ``..``,
  backslash or control-character names; no duplicates), then extracted with
  ``filter="data"`` as a second, independent check.

Messages name the bad member as written in the archive, never a host path.

Example:
    >>> import io, tarfile, tempfile
    >>> from pathlib import Path
    >>> buf = io.BytesIO()
    >>> with tarfile.open(fileobj=buf, mode="w:gz") as tar:
    ...     for name in ("model.json", "model.safetensors"):
    ...         info = tarfile.TarInfo(name); info.size = 2
    ...         tar.addfile(info, io.BytesIO(b"{}"))
    >>> folder = extract_artifact_tar(buf.getvalue(), Path(tempfile.mkdtemp()) / "x", max_bytes=1024)
    >>> sorted(p.name for p in folder.iterdir())
    ['model.json', 'model.safetensors']
"""

from __future__ import annotations

import gzip
import io
import re
import tarfile
import zlib
from pathlib import Path
from typing import BinaryIO

from dlforge.errors import DlforgeError

GZIP_MAGIC = b"\x1f\x8b"
REQUIRED = ("model.json", "model.safetensors")
MAX_MEMBERS = 64
MAX_DEPTH = 8
_HEADER_ALLOWANCE = 1 << 20  # tar headers and padding on top of the file bytes
_HINT = "upload `tar -czf model.tar.gz model.json model.safetensors` (plain files, relative names)"

# tarfile's extraction filters came with Python 3.11.4; before it, our own checks in extract_artifact_tar stand alone.
_DATA_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
_FILTER_ERRORS = getattr(tarfile, "FilterError", ())


class UploadError(DlforgeError):
    """An uploaded archive is not a safe, well-formed model artifact."""


class _CappedReader(io.RawIOBase):
    """Reads ``prefix`` then ``stream``; raises UploadError once more than ``cap`` bytes are read."""

    def __init__(self, stream: BinaryIO, cap: int, prefix: bytes = b"") -> None:
        self.stream, self.cap, self.prefix, self.count = stream, cap, prefix, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self.prefix:
            data, self.prefix = self.prefix[: len(buffer)], self.prefix[len(buffer):]
        else:
            data = self.stream.read(len(buffer))
        self.count += len(data)
        if self.count > self.cap:
            raise UploadError(f"the archive expands to more than {self.cap} bytes",
                              hint="upload a smaller model, or raise the server's max_upload_bytes")
        buffer[: len(data)] = data
        return len(data)


def _shown(name: str) -> str:
    """A member name safe to put in a message: printable, short, no leading slash."""
    text = "".join(c if c.isprintable() else "?" for c in name).lstrip("/")
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _clean_name(name: str) -> str:
    """The normalised relative name of a member ("" for the archive root); UploadError if unsafe."""
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise UploadError(f"archive member {_shown(name)} has a control character in its name", hint=_HINT)
    if "\\" in name:
        raise UploadError(f"archive member {_shown(name)} has a backslash in its name", hint=_HINT)
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        raise UploadError(f"archive member {_shown(name)} has an absolute path", hint=_HINT)
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UploadError(f"archive member {_shown(name)} has a '..' in its path", hint=_HINT)
    if len(parts) > MAX_DEPTH or len(name) > 1024:
        raise UploadError(f"archive member {_shown(name)} is nested too deeply or named too long", hint=_HINT)
    return "/".join(parts)


def _check_type(member: tarfile.TarInfo) -> None:
    if member.isreg() and not member.issparse() or member.isdir():
        return
    kind = ("symlink" if member.issym() else "hardlink" if member.islnk() else
            "device" if member.ischr() or member.isblk() else "fifo" if member.isfifo() else "special file")
    raise UploadError(f"archive member {_shown(member.name)} is a {kind}; only regular files and folders are allowed",
                      hint=_HINT)


def _artifact_folder(dest: Path) -> Path:
    """dest itself, or its one sub-folder, when it holds model.json and model.safetensors."""
    entries = list(dest.iterdir())
    candidates = [dest] + ([entries[0]] if len(entries) == 1 and entries[0].is_dir() else [])
    for folder in candidates:
        if all((folder / f).is_file() for f in REQUIRED):
            return folder
    raise UploadError("the archive holds no model artifact: model.json and model.safetensors must be at its top "
                      "level or inside one folder", hint=_HINT)


def extract_artifact_tar(data: bytes | BinaryIO, dest: Path, *, max_bytes: int,
                         max_members: int = MAX_MEMBERS) -> Path:
    """Extract a gzip tar artifact into ``dest`` safely; returns the folder holding model.json.

    ``data`` is the archive's bytes or a binary file object. ``max_bytes`` caps the total
    size of the extracted files. Raises UploadError (a DlforgeError: HTTP 400) naming the
    first bad member; ``dest`` may then hold part of the archive and is the caller's to remove.

    Example:
        >>> extract_artifact_tar(b"PK\\x03\\x04", Path("/nonexistent"), max_bytes=10)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        dlforge.serve.upload.UploadError: the upload is not a gzip file ...
    """
    stream: BinaryIO = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    magic = stream.read(2)
    if magic != GZIP_MAGIC:
        raise UploadError("the upload is not a gzip file (it does not start with the gzip magic bytes)", hint=_HINT)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    raw = _CappedReader(stream, cap=2**62, prefix=magic)
    expanded = _CappedReader(gzip.GzipFile(fileobj=io.BufferedReader(raw)), cap=max_bytes + _HEADER_ALLOWANCE)
    seen: set[str] = set()
    total = 0
    try:
        with tarfile.open(fileobj=io.BufferedReader(expanded), mode="r|") as tar:
            for count, member in enumerate(tar, start=1):
                if count > max_members:
                    raise UploadError(f"the archive has more than {max_members} members", hint=_HINT)
                name = _clean_name(member.name)
                _check_type(member)
                if not name:  # the "./" entry of `tar -C dir .`
                    continue
                if name in seen:
                    raise UploadError(f"archive member {_shown(name)} appears twice", hint=_HINT)
                seen.add(name)
                total += member.size
                if total > max_bytes:
                    raise UploadError(f"the archive's files add up to more than {max_bytes} bytes "
                                      f"(at member {_shown(name)})",
                                      hint="upload a smaller model, or raise the server's max_upload_bytes")
                member.name = name
                tar.extract(member, path=dest, **_DATA_FILTER)  # tarfile's own checks, independently of ours
    except _FILTER_ERRORS as exc:
        member_name = getattr(getattr(exc, "tarinfo", None), "name", "?")
        raise UploadError(f"archive member {_shown(member_name)} was refused by the tar safety filter",
                          hint=_HINT) from None
    except (tarfile.TarError, gzip.BadGzipFile, zlib.error, EOFError):
        raise UploadError("the upload is not a valid tar.gz archive", hint=_HINT) from None
    return _artifact_folder(dest)
