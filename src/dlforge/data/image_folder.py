"""Load a folder of images with one sub-folder per class, and read single image files.

Layout::

    pets/
      cat/  001.png  002.jpg ...
      dog/  001.png ...

Class names are the sorted sub-folder names; hidden entries and files with other
suffixes (a README, Thumbs.db) are skipped. Images load grayscale or RGB as
``data.color`` says, or, when it is unset, RGB as soon as one image holds colour
(:func:`detect_color`).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, UnidentifiedImageError

from dlforge.data._checks import check_choice
from dlforge.data.bundle import DataBundle
from dlforge.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
COLOR_MODES = {"grayscale": "L", "rgb": "RGB"}  # data.color -> Pillow mode
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # Pillow modes without colour
# A pixel is coloured when its channels differ by more than this (of 255): a gray picture
# saved as an RGB JPEG differs by a rounding step or two, a colour photo by far more.
COLOR_TOLERANCE = 8
MAX_DECODED_PIXELS = 4096 * 4096  # decode_image refuses larger images (a decompression bomb)


class ImageTooLargeError(DataError):
    """Image bytes that would decode to more than the allowed number of pixels."""


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
    return _pixels(image, size)


def decode_image(data: bytes, mode: str, size: tuple[int, int] | None = None, *,
                 max_pixels: int = MAX_DECODED_PIXELS) -> np.ndarray:
    """Encoded image bytes (PNG, JPEG, BMP...) as uint8 ``(C, H, W)``, exactly as :func:`read_image`
    reads a file with those bytes; decoded in memory, never through a file path.

    Images of more than ``max_pixels`` pixels are refused before they are decoded: a small
    compressed file can hold a huge image (a decompression bomb).

    Example:
        >>> import io
        >>> buf = io.BytesIO(); Image.new("RGB", (4, 2), (255, 0, 0)).save(buf, "PNG")
        >>> decode_image(buf.getvalue(), "L").shape
        (1, 2, 4)
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size  # read from the header: nothing is decoded yet
            if width * height > max_pixels:
                raise ImageTooLargeError(
                    f"the image is {width}x{height} pixels (WxH), more than the {max_pixels:,} allowed",
                    hint="send an image resized to the model's input size")
            image = image.convert(mode)
    except ImageTooLargeError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        detail = "not a recognised image format" if isinstance(err, UnidentifiedImageError) else str(err)
        raise DataError(f"cannot decode the image bytes: {detail}",
                        hint="send the bytes of a PNG, JPEG or BMP file") from err
    return _pixels(image, size)


def _pixels(image: Image.Image, size: tuple[int, int] | None) -> np.ndarray:
    """A converted Pillow image as uint8 ``(C, H, W)``, resized to ``size`` (H, W) if given."""
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


def is_color_image(path: str | Path) -> bool:
    """Whether an image file holds colour: some pixel whose R, G and B differ by more than
    :data:`COLOR_TOLERANCE`.

    A file stored in a gray mode answers from its header alone; an RGB or palette file is
    decoded, as many gray pictures are saved as RGB. An unreadable file answers False
    (loading it reports the problem).

    Example:
        >>> is_color_image("pets/cat/001.png")  # doctest: +SKIP
        True
    """
    try:
        with Image.open(path) as image:
            if image.mode in GRAY_MODES:
                return False
            r, g, b = image.convert("RGB").split()
    except (UnidentifiedImageError, OSError, ValueError):
        return False
    # the largest channel difference of any pixel, in Pillow's C code (a numpy copy took 4x as long)
    return any(ImageChops.difference(p, q).getextrema()[1] > COLOR_TOLERANCE for p, q in ((r, g), (g, b), (r, b)))


def detect_color(files: Sequence[Path], where: str) -> tuple[str, str]:
    """``data.color`` for images whose mode was not set, and a note that says why:
    ``"rgb"`` when any of ``files`` holds colour, else ``"grayscale"``.

    Every file is checked, not a sample: one class of colour photos among gray scans
    would hide from a sample. The cost is small: gray-mode files are judged from their
    header, a colour folder stops at its first colour image (usually the first file), and
    only gray pictures saved as RGB are decoded one extra time (1,000 such 128x128 JPEGs:
    0.69 s to load instead of 0.34 s; gray-mode or colour files: no measurable change).

    Example:
        >>> detect_color(sorted(Path("pets").glob("*/*.png")), "pets")[0]  # doctest: +SKIP
        'rgb'
    """
    colored = next((f for f in files if is_color_image(f)), None)
    if colored is not None:
        return "rgb", (f"data.color: {where} holds colour images ({colored.name} is one), so they load as "
                       "rgb (3 channels); set data.color: grayscale to load them as gray")
    return "grayscale", (f"data.color: all {len(files)} images in {where} are grayscale, so they load as "
                         "grayscale (1 channel); set data.color: rgb to keep 3 channels")


def load_image_folder(
    path: str | Path, *, image_size: Sequence[int] | None = None, color: str | None = None
) -> DataBundle:
    """Load ``path/<class>/<image>`` files as a classification bundle with x ``(N, C, H, W)``.

    ``color`` is ``"grayscale"`` (C=1), ``"rgb"`` (C=3) or None: rgb when any image holds
    colour, else grayscale (:func:`detect_color`), said in ``bundle.notes``.
    ``image_size=(H, W)`` resizes every image (bilinear). Without it all images must
    already share one size.

    Example:
        >>> bundle = load_image_folder("pets", image_size=(32, 32), color="rgb")  # doctest: +SKIP
        >>> bundle.input_shape, bundle.class_names  # doctest: +SKIP
        ((3, 32, 32), ['cat', 'dog'])
    """
    if color is not None:
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
    class_files = [_image_files(folder) for folder in class_dirs]
    for folder, files in zip(class_dirs, class_files):
        if not files:
            raise DataError(
                f"class folder {folder} holds no images",
                hint=f"add {', '.join(IMAGE_SUFFIXES)} files to it or remove the folder",
            )
    notes: list[str] = []
    if color is None:
        color, note = detect_color([f for files in class_files for f in files], str(root))
        notes.append(note)

    pixels: list[np.ndarray] = []
    labels: list[int] = []
    first: tuple[Path, tuple[int, ...]] | None = None
    for label, files in enumerate(class_files):
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
        notes=notes,
    )

def _hw(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[2]} (HxW)"
