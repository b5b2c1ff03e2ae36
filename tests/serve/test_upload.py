"""extract_artifact_tar: good archives extract; every unsafe or malformed one is refused, naming the member."""

from __future__ import annotations

import doctest
import gzip
import io
import tarfile
import time
from pathlib import Path

import pytest

import dlforge.serve.upload as upload
from dlforge.serve.upload import UploadError, extract_artifact_tar

FILES = {"model.json": b'{"format": "dlforge-artifact"}', "model.safetensors": b"\x00" * 64}


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, target: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def targz(members: list[tuple[tarfile.TarInfo, bytes | None]], fmt: int = tarfile.GNU_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, None if data is None else io.BytesIO(data))
    return buf.getvalue()


def _good(prefix: str = "") -> list[tuple[tarfile.TarInfo, bytes | None]]:
    return [_file(prefix + name, data) for name, data in FILES.items()]


class _Zeros(io.RawIOBase):
    """n zero bytes, generated on the fly (a gzip bomb's payload without holding it in memory)."""

    def __init__(self, n: int) -> None:
        self.left = n

    def readinto(self, b) -> int:  # type: ignore[override]
        k = min(len(b), self.left)
        b[:k] = bytes(k)
        self.left -= k
        return k


def test_doctests() -> None:
    assert doctest.testmod(upload).failed == 0


@pytest.mark.parametrize("prefix", ["", "./", "model/", "./model/"])
def test_good_archive_extracts_top_level_or_one_folder(tmp_path: Path, prefix: str) -> None:
    folder = extract_artifact_tar(targz(_good(prefix)), tmp_path / "x", max_bytes=10_000)
    assert folder.is_relative_to(tmp_path / "x")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == FILES


def test_file_object_input_and_folder_entries(tmp_path: Path) -> None:
    folder_entry = tarfile.TarInfo("model")
    folder_entry.type = tarfile.DIRTYPE
    data = targz([(folder_entry, None), *_good("model/")])
    folder = extract_artifact_tar(io.BytesIO(data), tmp_path / "x", max_bytes=10_000)
    assert folder == tmp_path / "x" / "model"
    assert (folder / "model.safetensors").read_bytes() == FILES["model.safetensors"]


def test_modes_are_sanitised(tmp_path: Path) -> None:
    info, data = _file("model.json", FILES["model.json"])
    info.mode = 0o6777  # setuid, setgid, world-writable: the "data" filter strips these
    folder = extract_artifact_tar(targz([(info, data), _good()[1]]), tmp_path / "x", max_bytes=10_000)
    mode = (folder / "model.json").stat().st_mode
    assert mode & 0o6000 == 0 and mode & 0o022 == 0


@pytest.mark.parametrize(("members", "needle"), [
    ([_file("/tmp/evil", b"x"), *_good()], "absolute path"),
    ([_file("../x", b"x"), *_good()], "'..'"),
    ([_file("model/../../x", b"x"), *_good()], "'..'"),
    ([_file("a\\b", b"x"), *_good()], "backslash"),
    ([_file("a\x01b", b"x"), *_good()], "control character"),
    ([_file("C:evil", b"x"), *_good()], "absolute path"),
    ([_special("model.json", tarfile.SYMTYPE, "/etc/passwd"), _good()[1]], "symlink"),
    ([_special("link", tarfile.SYMTYPE, "model.json"), *_good()], "symlink"),
    ([*_good(), _special("model.bin", tarfile.LNKTYPE, "model.json")], "hardlink"),
    ([_special("null", tarfile.CHRTYPE), *_good()], "device"),
    ([_special("disk", tarfile.BLKTYPE), *_good()], "device"),
    ([_special("pipe", tarfile.FIFOTYPE), *_good()], "fifo"),
    ([*_good(), _file("./model.json", b"{}")], "appears twice"),
    ([_file("notes.txt", b"hi")], "no model artifact"),
    ([*_good("a/"), *_good("b/")], "no model artifact"),
    ([_file(f"f{i}", b"") for i in range(70)], "more than 64 members"),
])
def test_unsafe_members_are_refused(tmp_path: Path, members: list, needle: str) -> None:
    with pytest.raises(UploadError, match=needle) as info:
        extract_artifact_tar(targz(members), tmp_path / "x", max_bytes=10_000)
    assert "/tmp" not in str(info.value) and str(tmp_path) not in str(info.value)
    assert not (tmp_path / "etc").exists() and not (tmp_path / "x" / "link").exists()
    assert not (tmp_path / "x").exists() or all(p.is_file() or p.is_dir() for p in (tmp_path / "x").rglob("*"))


def test_nothing_escapes_the_destination(tmp_path: Path) -> None:
    with pytest.raises(UploadError):
        extract_artifact_tar(targz([*_good(), _file("../escaped", b"x")]), tmp_path / "x", max_bytes=10_000)
    assert not (tmp_path / "escaped").exists()


def test_gzip_bomb_stops_at_the_cap_quickly(tmp_path: Path) -> None:
    info = tarfile.TarInfo("model.safetensors")
    info.size = 256 * 2**20
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.addfile(info, _Zeros(info.size))
    data = buf.getvalue()
    assert len(data) < 2**20 < info.size  # small compressed, large extracted
    start = time.perf_counter()
    with pytest.raises(UploadError, match="more than 1000000 bytes"):
        extract_artifact_tar(data, tmp_path / "x", max_bytes=1_000_000)
    assert time.perf_counter() - start < 1.0
    assert not (tmp_path / "x" / "model.safetensors").exists()


def test_total_of_several_files_is_capped(tmp_path: Path) -> None:
    members = [_file(f"part{i}", b"\x00" * 400) for i in range(3)] + _good()
    with pytest.raises(UploadError, match="more than 1000 bytes"):
        extract_artifact_tar(targz(members), tmp_path / "x", max_bytes=1000)


def test_huge_pax_header_is_capped_before_tarfile_buffers_it(tmp_path: Path) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info, data = _file("model.json", b"{}")
        info.pax_headers = {"comment": "x" * (4 * 2**20)}
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(UploadError, match="expands to more than"):
        extract_artifact_tar(gzip.compress(raw.getvalue()), tmp_path / "x", max_bytes=1000)


@pytest.mark.parametrize(("data", "needle"), [
    (b"PK\x03\x04zip file", "not a gzip file"),
    (b"", "not a gzip file"),
    (b"\x80\x04\x95pickle", "not a gzip file"),
    (b"\x1f\x8b\x08garbage", "not a valid tar.gz"),
    (gzip.compress(b"plain text, not a tar" * 50), "not a valid tar.gz"),
    (targz(_good())[:60], "not a valid tar.gz"),
])
def test_not_a_tar_gz(tmp_path: Path, data: bytes, needle: str) -> None:
    with pytest.raises(UploadError, match=needle):
        extract_artifact_tar(data, tmp_path / "x", max_bytes=10_000)
