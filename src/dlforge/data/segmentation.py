"""Segmentation data: :class:`SegmentationBundle` and the image + mask folder loader.

Layout::

    cells/
      images/  a.png  b.tif ...
      masks/   a.png  b.tif ...   (same stems; class index per pixel)

Images are PNG or TIFF, 2D grayscale/RGB (8 or 16 bit) or 3D stacks stored as
multi-page TIFF (one page per slice). Masks hold class indices 0..K-1, or are binary
0/255 (read as {0, 1}); ``masks="instances"`` reads per-object ids (0 = background) as
a foreground mask and keeps the ids. Every mismatch is a DataError naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageSequence, UnidentifiedImageError
from torch.utils.data import TensorDataset

from dlforge.data._checks import check_choice
from dlforge.data.image_folder import COLOR_MODES, detect_color
from dlforge.errors import DataError

SEGMENTATION_SUFFIXES = (".png", ".tif", ".tiff")
MASK_KINDS = ("classes", "instances")
FULL_SCALE = {8: 255, 16: 65535}  # the brightest pixel of each bit depth read_image reports
MAX_CLASSES = 32  # more distinct values without class_names is almost surely an instance mask
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


@dataclass(repr=False)
class SegmentationBundle:
    """A segmentation data set: images ``x``, per-pixel class masks ``y`` and how they were made.

    ``x`` is float32 ``(N, C, H, W)`` or ``(N, C, D, H, W)`` scaled to [0, 1]; ``y`` is
    int64 class indices ``(N, H, W)`` or ``(N, D, H, W)``. ``instances`` (optional) holds
    per-object ids of ``y``'s shape (0 = background). ``synthetic`` is True for generated
    sets, whose masks are exact but whose images are not real microscopy.

    Example:
        >>> import numpy as np
        >>> b = SegmentationBundle("toy", np.zeros((2, 1, 4, 4), np.float32),
        ...                        np.zeros((2, 4, 4), np.int64), ["background", "cell"], {})
        >>> b.input_shape, b.num_outputs, b.spatial_dims, b.task
        ((1, 4, 4), 2, 2, 'segmentation')
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    class_names: list[str]
    encoding: dict
    synthetic: bool = False
    notes: list[str] = field(default_factory=list)
    ids: list[str] | None = None  # file stems, one per sample
    instances: np.ndarray | None = None
    task: str = "segmentation"
    kind: str = "image"

    def __post_init__(self) -> None:
        # Loaders build bundles; these checks catch a loader bug, not a user mistake.
        assert self.x.ndim in (4, 5) and self.y.shape == (self.x.shape[0], *self.x.shape[2:]), \
            (self.x.shape, self.y.shape)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one image, e.g. ``(1, 128, 128)`` or ``(1, 32, 64, 64)``."""
        return tuple(self.x.shape[1:])

    @property
    def num_outputs(self) -> int:
        """Number of classes, background included."""
        return len(self.class_names)

    @property
    def spatial_dims(self) -> int:
        """2 for images, 3 for volumes."""
        return self.x.ndim - 2

    def subset(self, idx: np.ndarray) -> SegmentationBundle:
        """The samples at ``idx``, every other field shared.

        Example:
            >>> from dlforge.data import synthetic_nuclei
            >>> len(synthetic_nuclei(4, size=(32, 32), seed=0).subset(np.arange(2)))
            2
        """
        ids = None if self.ids is None else [self.ids[i] for i in np.arange(len(self))[idx]]
        inst = None if self.instances is None else self.instances[idx]
        return replace(self, x=self.x[idx], y=self.y[idx], ids=ids, instances=inst)

    def to_tensor_dataset(self) -> TensorDataset:
        """``TensorDataset(x, y)``: float32 images, int64 masks.

        Example:
            >>> from dlforge.data import synthetic_nuclei
            >>> x, y = synthetic_nuclei(2, size=(32, 32), seed=0).to_tensor_dataset()[0]
            >>> tuple(x.shape), y.dtype
            ((1, 32, 32), torch.int64)
        """
        x = torch.from_numpy(np.ascontiguousarray(self.x, dtype=np.float32))
        y = torch.from_numpy(np.ascontiguousarray(self.y, dtype=np.int64))
        return TensorDataset(x, y)

    def __len__(self) -> int:
        return len(self.x)

    def __repr__(self) -> str:
        return (f"SegmentationBundle(name={self.name!r}, n={len(self)}, input_shape={self.input_shape}, "
                f"classes={self.class_names}, synthetic={self.synthetic})")


def _pages(path: Path, what: str) -> list[Image.Image]:
    """Every page of an image file (one for PNG, D for a multi-page TIFF), decoded."""
    try:
        with Image.open(path) as image:
            pages = [page.copy() for page in ImageSequence.Iterator(image)]  # copy forces the decode
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(f"cannot read {what} {path}: {err}",
                        hint="replace or delete the file; it is not a readable PNG or TIFF") from err
    return pages


def read_image(path: Path, mode: str) -> tuple[np.ndarray, int]:
    """An image file as ``(C, H, W)`` or ``(C, D, H, W)`` integers, and its bit depth (8 or 16).

    ``mode`` is ``"L"`` (grayscale; 16-bit pages stay 16-bit) or ``"RGB"``.

    Example:
        >>> image, depth = read_image(Path("cells/images/a.tif"), "L")  # doctest: +SKIP
        >>> image.shape, depth  # doctest: +SKIP
        ((1, 512, 512), 16)
    """
    pages = _pages(path, "image")
    sixteen = mode == "L" and all(p.mode in _SIXTEEN_BIT for p in pages)
    arrays = [np.asarray(p, dtype=np.int64) if sixteen else np.asarray(p.convert(mode)) for p in pages]
    if len({a.shape for a in arrays}) > 1:
        raise DataError(f"the pages of {path} differ in size", hint="every slice of a 3D stack must share H x W")
    stack = np.stack(arrays)  # (D, H, W) or (D, H, W, 3)
    stack = stack[..., None] if stack.ndim == 3 else stack  # (D, H, W, C)
    stack = stack.transpose(3, 0, 1, 2)  # (C, D, H, W)
    return (stack[:, 0] if len(pages) == 1 else stack), (16 if sixteen else 8)


def read_mask(path: Path) -> np.ndarray:
    """A mask file as int64 ``(H, W)`` or ``(D, H, W)``; colour or fractional masks are refused.

    Example:
        >>> read_mask(Path("cells/masks/a.tif")).dtype  # doctest: +SKIP
        dtype('int64')
    """
    arrays = []
    for page in _pages(path, "mask"):
        if page.mode in ("RGB", "RGBA"):
            rgb = np.asarray(page.convert("RGB"))  # (H, W, 3)
            if (rgb != rgb[..., :1]).any():
                raise DataError(f"mask {path} is a colour image",
                                hint="save masks as one channel of class indices (0, 1, 2, ...)")
            page = page.convert("L")
        values = np.asarray(page)  # "P" gives palette indices, "1" booleans
        fractional = values.dtype.kind == "f" and not np.array_equal(values, np.round(values))  # NaN too
        if fractional:
            bad = values[values != np.round(values)].flat[0]
            raise DataError(f"mask {path} holds non-integer values (e.g. {bad})",
                            hint="masks hold class indices; save them as an integer PNG or TIFF")
        arrays.append(values.astype(np.int64))
    if len({a.shape for a in arrays}) > 1:
        raise DataError(f"the pages of mask {path} differ in size", hint="every slice must share H x W")
    stack = np.stack(arrays)  # (D, H, W)
    return stack[0] if len(arrays) == 1 else stack


def _files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"folder {folder} not found",
                        hint="a segmentation folder holds images/ and masks/ with matching file names")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in SEGMENTATION_SUFFIXES)
    by_stem: dict[str, Path] = {}
    for p in files:
        if p.stem in by_stem:
            raise DataError(f"{by_stem[p.stem]} and {p} share the name {p.stem!r}",
                            hint="keep one file per name in each folder")
        by_stem[p.stem] = p
    return by_stem


def _pair_files(root: Path) -> list[tuple[Path, Path]]:
    images, masks = _files(root / "images"), _files(root / "masks")
    if not images:
        raise DataError(f"{root / 'images'} holds no images", hint="add .png or .tif files")
    for stem, image in images.items():
        if stem not in masks:
            raise DataError(f"image {image} has no mask", hint=f"add {root / 'masks' / stem}.png or remove the image")
    for stem, mask in masks.items():
        if stem not in images:
            raise DataError(f"mask {mask} has no image", hint=f"add {root / 'images' / stem}.png or remove the mask")
    return [(images[s], masks[s]) for s in sorted(images)]


def _to_classes(masks: list[np.ndarray], files: list[Path], class_names: list[str] | None) -> list[str]:
    """Map 0/255 binary masks to {0, 1} in place; check values are classes; return class names."""
    values = np.unique(np.concatenate([np.unique(m) for m in masks]))
    if set(values.tolist()) <= {0, 255} and 255 in values:
        for m in masks:
            m[m == 255] = 1
        values = np.unique(np.minimum(values, 1))
    n = len(class_names) if class_names is not None else int(values.max()) + 1
    allowed = np.arange(n) if class_names is not None else np.arange(len(values))
    extra = [v for v in values.tolist() if v not in set(allowed.tolist())]
    if extra or (class_names is None and n > MAX_CLASSES):
        bad = extra[0] if extra else int(values.max())
        file = next(f for f, m in zip(files, masks) if (m == bad).any())
        shown = ", ".join(str(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")
        rule = f"0..{n - 1} for the {n} class_names" if class_names is not None else "0..K-1 without gaps"
        raise DataError(f"mask {file} holds the value {bad}, which is not a class (the masks hold {shown}; "
                        f"class indices run {rule}, binary masks are 0/1 or 0/255)",
                        hint="remap the masks to class indices, pass class_names, or use masks='instances' "
                             "for per-object ids")
    return list(class_names) if class_names is not None else (
        ["background", "foreground"] if n == 2 else [f"class_{i}" for i in range(n)])


def load_segmentation_folder(path: str | Path, *, color: str | None = None,
                             class_names: list[str] | None = None, masks: str = "classes") -> SegmentationBundle:
    """Load ``path/images/*`` with ``path/masks/*`` (same stems) as a :class:`SegmentationBundle`.

    ``color`` is ``"grayscale"``, ``"rgb"`` or None (rgb when any image holds colour).
    ``class_names`` fixes K (mask values must be below it); without it the masks must hold
    0..K-1 without gaps. ``masks="instances"`` reads object ids: y = id > 0, ids kept in
    ``bundle.instances``. 8-bit images are scaled by 1/255, 16-bit ones by 1/65535.

    Example:
        >>> bundle = load_segmentation_folder("cells")  # doctest: +SKIP
        >>> bundle.input_shape, bundle.class_names  # doctest: +SKIP
        ((1, 256, 256), ['background', 'foreground'])
    """
    check_choice(masks, MASK_KINDS, "data.masks")
    if color is not None:
        check_choice(color, tuple(COLOR_MODES), "data.color")
    root = Path(path)
    pairs = _pair_files(root)
    notes: list[str] = []
    if color is None:
        color, note = detect_color([image for image, _ in pairs], str(root / "images"))
        notes.append(note)
    images, labels, depths = [], [], set()
    for image_file, mask_file in pairs:
        image, depth = read_image(image_file, COLOR_MODES[color])  # (C, H, W) or (C, D, H, W)
        mask = read_mask(mask_file)  # (H, W) or (D, H, W)
        if mask.shape != image.shape[1:]:
            raise DataError(f"mask {mask_file} is {_size(mask.shape)} but its image {image_file} is "
                            f"{_size(image.shape[1:])}", hint="each mask must match its image pixel for pixel")
        if images and image.shape != images[0].shape:
            raise DataError(f"image {image_file} is {_size(image.shape[1:])} but {pairs[0][0]} is "
                            f"{_size(images[0].shape[1:])}", hint="crop or resize the images to one size")
        images.append(image)
        labels.append(mask)
        depths.add(depth)
    if len(depths) > 1:
        raise DataError(f"{root / 'images'} mixes 8-bit and 16-bit images", hint="save every image at one bit depth")
    full = FULL_SCALE[max(depths)]  # dividing matches image_folder.to_unit_range exactly
    files = [m for _, m in pairs]
    instances = None
    if masks == "instances":
        if any((m < 0).any() for m in labels):
            raise DataError("instance ids must be >= 0", hint="0 is background, 1.. are objects")
        instances = np.stack(labels).astype(np.int32)
        labels = [(m > 0).astype(np.int64) for m in labels]
    names = _to_classes(labels, files, ["background", "foreground"] if masks == "instances" else class_names)
    return SegmentationBundle(
        name=root.resolve().name,
        x=np.stack(images).astype(np.float32) / np.float32(full),  # (N, C, H, W) or (N, C, D, H, W)
        y=np.stack(labels).astype(np.int64),
        class_names=names,
        encoding={"kind": "segmentation", "mode": COLOR_MODES[color], "scale": 1 / full,
                  "size": list(images[0].shape[1:])},
        notes=notes,
        ids=[p.stem for p, _ in pairs],
        instances=instances,
    )


def _size(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape) + (" (DxHxW)" if len(shape) == 3 else " (HxW)")
