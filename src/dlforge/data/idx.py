"""MNIST-style IDX files: read them into a :class:`DataBundle` and write them.

An IDX file is a big-endian header, a magic number ``0x000008DD`` (``08``: unsigned
bytes, ``DD``: number of dimensions) then one uint32 per dimension, followed by the
raw bytes. Images are ``0x00000803`` (N, H, W); labels are ``0x00000801`` (N,).
Files may be gzip-compressed (``.gz``), as MNIST is distributed.
"""

from __future__ import annotations

import gzip
import re
import struct
from pathlib import Path

import numpy as np

from dlforge.data.bundle import DataBundle
from dlforge.data.image_folder import to_unit_range
from dlforge.errors import DataError

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
# "train-images-idx3-ubyte.gz" -> prefix "train"; some mirrors write "images.idx3".
_IMAGES_NAME = re.compile(r"^(?P<prefix>.*)-images[-.]idx3-ubyte(?P<gz>\.gz)?$")


def is_idx_images_file(path: Path) -> bool:
    """Whether the file name looks like IDX images, e.g. ``t10k-images-idx3-ubyte.gz``."""
    return _IMAGES_NAME.match(path.name) is not None


def find_idx_images(folder: Path) -> list[Path]:
    """The IDX images files directly in ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and is_idx_images_file(p))


def _prefix(images: Path) -> str:
    match = _IMAGES_NAME.match(images.name)
    assert match is not None, images  # callers only pass files that matched
    return match["prefix"]


def _labels_for(images: Path) -> Path:
    prefix = _prefix(images)
    candidates = [images.with_name(f"{prefix}-labels{sep}idx1-ubyte{gz}")
                  for gz in ((".gz", "") if images.suffix == ".gz" else ("", ".gz"))
                  for sep in ("-", ".")]
    for path in candidates:
        if path.is_file():
            return path
    raise DataError(f"no labels file next to {images}",
                    hint=f"put {candidates[0].name} in {images.parent}")


def _read(path: Path, magic: int, what: str) -> np.ndarray:
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read {path}: {err}", hint="download the file again") from err
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if found != magic:
        shown = "none" if found is None else f"0x{found:08X}"
        raise DataError(
            f"{path} is not an IDX {what} file: magic number {shown}, expected 0x{magic:08X}",
            hint="check that the images and labels files are not swapped or corrupted",
        )
    if len(raw) < header:
        raise DataError(f"{path} is truncated inside its header", hint="download it again")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(
            f"{path} holds {len(raw) - header} data bytes but its header promises "
            f"{'x'.join(map(str, dims))} = {expected}",
            hint="the file is truncated or corrupted; download it again",
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _read_pair(images_path: Path) -> tuple[np.ndarray, np.ndarray]:
    labels_path = _labels_for(images_path)
    images = _read(images_path, IMAGES_MAGIC, "images")  # (N, H, W)
    labels = _read(labels_path, LABELS_MAGIC, "labels")  # (N,)
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} holds {len(images)} images but {labels_path} holds "
            f"{len(labels)} labels",
            hint="use the images and labels files of the same set",
        )
    return images, labels


def load_idx(path: str | Path) -> DataBundle:
    """Load an IDX images file with its labels file, or every such pair in a folder.

    Given a folder holding several sets (MNIST's ``train`` and ``t10k``) they are
    concatenated in file-name order: dlforge makes its own train/val/test split.
    Point at one images file to load only that set. Classes are the sorted distinct
    labels, as strings.

    Example:
        >>> bundle = load_idx("mnist/train-images-idx3-ubyte.gz")  # doctest: +SKIP
        >>> bundle.x.shape, bundle.class_names[:3]  # doctest: +SKIP
        ((60000, 1, 28, 28), ['0', '1', '2'])
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"IDX source {path} not found", hint="check data.source")
    if path.is_file() and not is_idx_images_file(path):
        # The labels file is found by name, so the name has to follow the pattern.
        raise DataError(f"{path} is not named like an IDX images file",
                        hint="name it <set>-images-idx3-ubyte[.gz], with "
                        "<set>-labels-idx1-ubyte[.gz] beside it")
    files = find_idx_images(path) if path.is_dir() else [path]
    if not files:
        raise DataError(f"{path} holds no IDX images file",
                        hint="expected files named like train-images-idx3-ubyte[.gz]")
    pairs = [_read_pair(f) for f in files]
    shapes = {images.shape[1:] for images, _ in pairs}
    if len(shapes) > 1:
        raise DataError(f"the IDX files in {path} hold images of different sizes {sorted(shapes)}",
                        hint="point data.source at one images file")
    images = np.concatenate([images for images, _ in pairs])  # (N, H, W)
    labels = np.concatenate([labels for _, labels in pairs])  # (N,)
    classes, y = np.unique(labels, return_inverse=True)  # y maps labels to 0..K-1
    if len(classes) < 2:
        raise DataError(f"every label in {path} is {classes[0]}",
                        hint="classification needs at least two classes")
    return DataBundle(
        name=path.name if path.is_dir() else _prefix(path),
        x=to_unit_range(images[:, None]),  # (N, 1, H, W)
        y=y.astype(np.int64).reshape(-1),
        task="classification",
        kind="image",
        class_names=[str(int(c)) for c in classes],
        feature_names=None,
        encoding={"kind": "image", "size": list(images.shape[1:]), "mode": "L", "scale": 1 / 255},
    )


def write_idx(
    images: np.ndarray, labels: np.ndarray, images_path: str | Path, labels_path: str | Path
) -> None:
    """Write uint8 images ``(N, H, W)`` and labels ``(N,)`` as IDX files (gzip for ``.gz``).

    Example:
        >>> images = np.zeros((2, 28, 28), dtype=np.uint8)
        >>> write_idx(images, np.array([0, 1]), "x-images-idx3-ubyte.gz",
        ...           "x-labels-idx1-ubyte.gz")  # doctest: +SKIP
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]  # (N, 1, H, W) -> (N, H, W)
    for array, ndim, what in ((images, 3, "images"), (labels, 1, "labels")):
        if array.ndim != ndim or array.size and (array.min() < 0 or array.max() > 255):
            raise DataError(f"{what} must be {ndim}-D with values 0..255, got shape {array.shape}",
                            hint="IDX stores unsigned bytes: images (N, H, W), labels (N,)")
        if not np.array_equal(array, np.round(array)):
            raise DataError(f"{what} must hold whole numbers 0..255",
                            hint="scale [0, 1] images with (x * 255).round() first")
    if len(images) != len(labels):
        raise DataError(f"{len(images)} images but {len(labels)} labels",
                        hint="give one label per image")
    for path, magic, array in ((images_path, IMAGES_MAGIC, images),
                               (labels_path, LABELS_MAGIC, labels)):
        header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(path, "wb") as f:
            f.write(header + array.astype(np.uint8).tobytes())
