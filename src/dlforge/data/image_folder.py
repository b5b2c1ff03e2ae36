"""Load a folder of images with one sub-folder per class, and read single image files.

Layout::

    pets/
      cat/  001.png  002.jpg ...
      dog/  001.png ...

Class names are the sorted sub-folder names; hidden entries and files with other
suffixes (a README, Thumbs.db) are skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dlforge.data._checks import check_choice
from dlforge.data.bundle import DataBundle
from dlforge.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
COLOR_MODES = {"grayscale": "L", "rgb": "RGB"}  # data.color -> Pillow mode


def check_image_size(image_size: Sequence[int] | None) -> tuple[int, int] | None:
    """``image_size`` as an ``(H, W)`` tuple, or a DataError if it is not two positive ints."""
    if image_size is None:
        return None
    size = tuple(image_size) if isinstance(image_size, (list, tuple)) else ()
    if len(size) != 2 or not all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in size
    ):
        raise DataError(f"image_size must be two positive integers [H, W], got {image_size!r}",
                        hint="set data.image_size: [H, W], e.g. [28, 28]")
    return int(size[0]), int(size[1])


def read_image(path: str | Path, mode: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """One image file as uint8 ``(C, H, W)``, converted to ``mode`` and resized to ``size`` (H, W).

    Resizing is bilinear, after the colour conversion, exactly as for training data.

    Example:
        >>> read_image("pets/cat/001.png", "RGB", (32, 32)).shape  # doctest: +SKIP
        (3, 32, 32)
    """
    try:
        with Image.open(path) as image:
            image = image.convert(mode)  # also forces the lazy decode, so bad data fails here
    except FileNotFoundError as err:
        raise DataError(f"image file {path} not found", hint="check the path") from err
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(f"cannot read image {path}: {err}",
                        hint="replace or delete the file; it is not a readable image") from err
    if size is not None:
        image = image.resize((size[1], size[0]), Image.BILINEAR)  # Pillow wants (W, H)
    pixels = np.asarray(image, dtype=np.uint8)  # (H, W) or (H, W, C)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)  # (C, H, W)


def to_unit_range(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels (0..255) as float32 in [0, 1]; the one place this scaling happens."""
    return pixels.astype(np.float32) / np.float32(255)


def _visible(entries: list[Path]) -> list[Path]:
    return sorted(p for p in entries if not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    return [p for p in _visible(list(folder.iterdir()))
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]


def load_image_folder(
    path: str | Path, *, image_size: Sequence[int] | None = None, color: str = "grayscale"
) -> DataBundle:
    """Load ``path/<class>/<image>`` files as a classification bundle with x ``(N, C, H, W)``.

    ``color`` is ``"grayscale"`` (C=1) or ``"rgb"`` (C=3); ``image_size=(H, W)`` resizes
    every image (bilinear). Without it all images must already share one size.

    Example:
        >>> bundle = load_image_folder("pets", image_size=(32, 32), color="rgb")  # doctest: +SKIP
        >>> bundle.input_shape, bundle.class_names  # doctest: +SKIP
        ((3, 32, 32), ['cat', 'dog'])
    """
    check_choice(color, tuple(COLOR_MODES), "data.color")
    size = check_image_size(image_size)
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"image folder {root} not found", hint="check data.source")
    class_dirs = [p for p in _visible(list(root.iterdir())) if p.is_dir()]
    if not class_dirs:
        loose = len(_image_files(root))
        raise DataError(
            f"{root} has no class sub-folders" + (f" ({loose} images lie directly in it)"
                                                  if loose else ""),
            hint=f"put each class's images in its own sub-folder: {root}/<class>/<image>.png",
        )
    if len(class_dirs) < 2:
        raise DataError(f"{root} has a single class folder '{class_dirs[0].name}'",
                        hint="classification needs at least two class sub-folders")

    pixels: list[np.ndarray] = []
    labels: list[int] = []
    first: tuple[Path, tuple[int, ...]] | None = None
    for label, folder in enumerate(class_dirs):
        files = _image_files(folder)
        if not files:
            raise DataError(
                f"class folder {folder} holds no images",
                hint=f"add {', '.join(IMAGE_SUFFIXES)} files to it or remove the folder",
            )
        for file in files:
            image = read_image(file, COLOR_MODES[color], size)  # (C, H, W)
            if first is None:
                first = (file, image.shape)
            elif image.shape != first[1]:
                raise DataError(
                    f"images differ in size: {first[0]} is {_hw(first[1])} but {file} is "
                    f"{_hw(image.shape)}",
                    hint="set data.image_size: [H, W] to resize every image to one size",
                )
            pixels.append(image)
            labels.append(label)

    assert first is not None  # every class folder holds at least one image
    height, width = first[1][1:]
    mode = COLOR_MODES[color]
    return DataBundle(
        name=root.resolve().name,
        x=to_unit_range(np.stack(pixels)),  # (N, C, H, W)
        y=np.asarray(labels, dtype=np.int64),
        task="classification",
        kind="image",
        class_names=[p.name for p in class_dirs],
        feature_names=None,
        encoding={"kind": "image", "size": [height, width], "mode": mode, "scale": 1 / 255},
    )


def _hw(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[2]} (HxW)"
