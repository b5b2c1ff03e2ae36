"""Segmentation artifacts: raw images in, label maps out, any image size.

A segmentation model is trained on patches (``encoding["window"]``) and predicts an image of
any size window by window with Gaussian blending
in bounded memory (:func:`dlforge.models.sliding_window.sliding_window_segment`); the post-processing the run
chose on validation (``preprocessing["postprocess"]``) is applied to every map. Raw images
are files (PNG, TIFF; multi-page TIFF for 3D), image bytes, or arrays of pixel values in the
source's units ((H, W), (C, H, W) or (C, D, H, W)); each is scaled as the training images
were and normalised by its own percentiles (``encoding["normalize"]``).

Example:
    >>> art = load_artifact("runs/nuclei-20261204-120000/model")  # doctest: +SKIP
    >>> masks = segment_images(art, ["cells.tif"])  # doctest: +SKIP
    >>> masks[0].shape, class_areas(masks[0], art.class_names)  # doctest: +SKIP
    ((512, 512), {'background': 209715, 'nucleus': 52429})
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dlforge.data.seg_dataset import normalize_images
from dlforge.data.seg_postprocess import PostProcess
from dlforge.data.segmentation import read_image
from dlforge.errors import DataError
from dlforge.models.sliding_window import fit_window, sliding_window_segment

MAX_PIXELS = 8192 * 8192  # per image, checked once decoded (the server reads the size from the header first)


def _raw_array(value: Any, encoding: Mapping[str, Any]) -> np.ndarray:
    """One array of raw pixels as (C, *S) float32, checked against the model's channels and dims."""
    channels = 3 if encoding.get("mode") == "RGB" else 1
    dims = int(encoding.get("spatial_dims", 2))
    try:
        a = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value, dtype=np.float32)
    except (TypeError, ValueError):
        raise DataError("an image must be an array of numbers", hint="give pixel values as nested lists or an array") from None
    if a.ndim == dims:
        a = a[None]  # (1, *S)
    if a.ndim != dims + 1 or a.shape[0] != channels:
        layout = "(H, W)" if dims == 2 else "(D, H, W)"
        raise DataError(f"an image of shape {list(a.shape)} does not fit this model, which reads "
                        f"{channels}-channel {dims}D images", hint=f"give {layout} or (C, {layout[1:]} with C = {channels}")
    if a.size == 0:
        raise DataError(f"the image of shape {list(a.shape)} is empty", hint="give at least one pixel per axis")
    if not np.isfinite(a).all():
        raise DataError("the image holds NaN or infinite pixels", hint="replace them before predicting")
    return a


def _read(value: Any, encoding: Mapping[str, Any]) -> np.ndarray:
    """One raw input (path, bytes or array) as (C, *S) float32 in the source's units."""
    if isinstance(value, (str, Path, bytes)):
        source = io.BytesIO(value) if isinstance(value, bytes) else Path(value)
        if isinstance(source, Path) and not source.is_file():
            raise DataError(f"image file {value} not found", hint="check the path")
        image, _ = read_image(source, encoding.get("mode", "L"))  # type: ignore[arg-type]
        return _raw_array(image, encoding)
    return _raw_array(value, encoding)


def encode_seg_images(inputs: Any, preprocessing: Mapping[str, Any]) -> list[torch.Tensor]:
    """Raw images (one, or a list) as model-ready (C, *S) float32 tensors, one per image.

    Example:
        >>> prep = {"encoding": {"kind": "segmentation", "mode": "L", "scale": 1 / 255, "spatial_dims": 2,
        ...                      "normalize": {"method": "percentile", "low": 0, "high": 100}}}
        >>> [tuple(t.shape) for t in encode_seg_images([np.arange(12).reshape(3, 4)], prep)]
        [(1, 3, 4)]
    """
    encoding = preprocessing.get("encoding") or {}
    single = isinstance(inputs, (str, Path, bytes)) or (
        isinstance(inputs, (np.ndarray, torch.Tensor)) and inputs.ndim <= int(encoding.get("spatial_dims", 2)) + 1)
    items = [inputs] if single else list(inputs)
    if not items:
        raise DataError("no images to segment", hint="give at least one image")
    out = []
    for value in items:
        raw = _read(value, encoding)  # (C, *S)
        if int(np.prod(raw.shape[1:])) > MAX_PIXELS:
            raise DataError(f"an image of {'x'.join(map(str, raw.shape[1:]))} pixels is larger than "
                            f"{MAX_PIXELS} pixels", hint="tile the image and predict the tiles")
        scaled = raw * np.float32(encoding.get("scale", 1.0))
        x = normalize_images(scaled[None], encoding.get("normalize"))[0]  # (C, *S)
        out.append(torch.from_numpy(x))
    return out


def predict_label_maps(model: nn.Module, images: Sequence[torch.Tensor], preprocessing: Mapping[str, Any], *,
                       overlap: float = 0.5, batch_size: int = 8) -> list[np.ndarray]:
    """The post-processed label map (*S) of every model-ready image (C, *S): uint8 class
    indices (int64 for more than 256 classes), in bounded memory."""
    encoding = preprocessing.get("encoding") or {}
    window = tuple(encoding["window"])
    post = PostProcess.from_dict(preprocessing["postprocess"]) if preprocessing.get("postprocess") else PostProcess()
    model.eval()
    maps = []
    for image in images:
        fitted = fit_window(model, window, image.shape[1:])  # no window larger than the image
        labels = sliding_window_segment(model, image, fitted, overlap=overlap, batch_size=batch_size)  # (*S) uint8
        maps.append(post.apply(labels.numpy()))  # kept uint8 (int64 past 256 classes): a quarter of int64's memory
    return maps


def segment_images(artifact: Any, inputs: Any, **options: Any) -> list[np.ndarray]:
    """Raw images in, post-processed label maps out (see the module doc)."""
    images = encode_seg_images(inputs, artifact.preprocessing)
    return predict_label_maps(artifact.model, images, artifact.preprocessing, **options)


def mask_bytes(mask: np.ndarray) -> tuple[bytes, str]:
    """One label map as image bytes and their media type: a PNG for 2D (binary masks as 0/255,
    so they are visible; more classes as their indices), a multi-page TIFF for 3D. The
    dlforge mask loader reads both back as class indices.

    Example:
        >>> data, media = mask_bytes(np.array([[0, 1], [1, 0]]))
        >>> media, data[:4]
        ('image/png', b'\x89PNG')
    """
    from PIL import Image

    if int(mask.max(initial=0)) > 255:
        raise DataError(f"a mask with class {int(mask.max())} does not fit an 8-bit image", hint="use fewer classes")
    values = (mask * 255 if int(mask.max(initial=0)) <= 1 else mask).astype(np.uint8)
    out = io.BytesIO()
    if values.ndim == 2:
        Image.fromarray(values).save(out, format="PNG")
        return out.getvalue(), "image/png"
    pages = [Image.fromarray(page) for page in values]  # (D, H, W): one page per slice
    pages[0].save(out, format="TIFF", save_all=True, append_images=pages[1:])
    return out.getvalue(), "image/tiff"


def class_areas(mask: np.ndarray, class_names: Sequence[str] | None) -> dict[str, int]:
    """Pixels (voxels) per class of one label map.

    Example:
        >>> class_areas(np.array([[0, 1], [1, 1]]), ["background", "cell"])
        {'background': 1, 'cell': 3}
    """
    names = list(class_names) if class_names else [str(i) for i in range(int(mask.max(initial=0)) + 1)]
    counts = np.bincount(mask.ravel(), minlength=len(names))
    return {name: int(counts[i]) for i, name in enumerate(names)}


def rle_encode(binary: np.ndarray) -> dict[str, Any]:
    """A binary mask as COCO's uncompressed run-length encoding ``{"size": [H, W], "counts": [...]}``.

    Pixels are read column-major, as COCO does (down the first column, then the next); counts
    alternate runs of 0 and 1 and start with a run of 0 (possibly empty). A 3D mask
    ``(D, H, W)`` is read the same way, the first axis fastest (Fortran order), with
    ``"size": [D, H, W]``: for 2D this is exactly COCO's layout.

    Example:
        >>> rle_encode(np.array([[0, 1], [1, 1]]))
        {'size': [2, 2], 'counts': [1, 3]}
    """
    flat = np.asarray(binary).astype(bool).ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1  # where a run ends
    counts = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist() if flat.size else []
    return {"size": list(np.shape(binary)), "counts": ([0] if flat.size and flat[0] else []) + counts}


def rle_decode(rle: Mapping[str, Any]) -> np.ndarray:
    """The boolean mask of an uncompressed run-length encoding from :func:`rle_encode`.

    Example:
        >>> rle_decode({"size": [2, 2], "counts": [1, 3]}).astype(int).tolist()
        [[0, 1], [1, 1]]
    """
    size, counts = [int(n) for n in rle["size"]], [int(c) for c in rle["counts"]]
    if sum(counts) != int(np.prod(size)) or min(counts, default=0) < 0:
        raise DataError(f"run lengths summing to {sum(counts)} do not fill a mask of size {size}",
                        hint="give the counts rle_encode wrote, unchanged")
    flat = np.repeat(np.arange(len(counts)) % 2 == 1, counts)  # runs alternate 0, 1, 0, ...
    return flat.reshape(size, order="F")


def mask_rle(mask: np.ndarray, class_names: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """One label map as a run-length encoding per class (:func:`rle_encode`), keyed like :func:`class_areas`.

    Example:
        >>> mask_rle(np.array([[0, 1], [1, 1]]), ["background", "cell"])["cell"]
        {'size': [2, 2], 'counts': [1, 3]}
    """
    names = list(class_names) if class_names else [str(i) for i in range(int(mask.max(initial=0)) + 1)]
    return {name: rle_encode(mask == i) for i, name in enumerate(names)}
