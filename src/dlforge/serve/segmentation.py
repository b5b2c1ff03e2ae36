"""Segmentation models over HTTP: JSON images of any size in, masks and class areas out.

One item of ``inputs`` is one image, in the forms :meth:`Artifact.segment
<dlforge.registry.artifact.Artifact.segment>` takes: raw pixels in the source's units as a
nested list of shape ``[H, W]``, ``[C, H, W]`` or ``[C, D, H, W]`` (3D models), or
``{"b64": "<base64 PNG or TIFF>"}`` (a multi-page TIFF for 3D; converted to the model's
colour mode like a file). Images are encoded by the one segmentation encoder
(:func:`dlforge.registry.segment.encode_seg_images`); here only the JSON checks live:

* a bad image is a 422 naming ``inputs[i]`` (or ``inputs[i].b64``) and why: not decodable,
  not numbers (booleans, strings, ragged rows), wrong channels or dims, NaN, empty;
* an image of more than ``ServeSettings.max_image_pixels`` pixels (voxels) is a 413, as an
  oversized image of a classifier is; a file's size is read from its header, before decoding.
  Encoded bytes are bounded by the body cap (``max_body_bytes``, 413) before anything here.

Batching: each image goes to the model's batcher on its own, as ``(1, C, *S)``. The batcher
joins only tensors of one shape, so equal-size images (of one request or of concurrent ones)
still share a forward pass, and images of different sizes never need stacking.

The answer per image is ``{"shape", "mask", "areas"}`` (:class:`SegmentationOutput`), the mask
as a base64 PNG (multi-page TIFF for 3D; :func:`dlforge.registry.segment.mask_bytes`) or as
run lengths per class (``mask_format="rle"``; :func:`dlforge.registry.segment.rle_encode`).

Example:
    >>> images = encode_images(art, [[[0, 9], [9, 0]], {"b64": png_b64}], max_pixels=4096 * 4096)  # doctest: +SKIP
    >>> [tuple(i.shape) for i in images]  # doctest: +SKIP
    [(1, 2, 2), (1, 512, 512)]
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from fastapi.exceptions import RequestValidationError
from PIL import Image, UnidentifiedImageError

from dlforge.errors import DataError
from dlforge.registry.artifact import Artifact
from dlforge.registry.encoding import OVERFLOW
from dlforge.registry.segment import encode_seg_images, mask_bytes, mask_rle
from dlforge.serve.batching import DynamicBatcher
from dlforge.serve.errors import ApiError
from dlforge.serve.inputs import MAX_ERRORS, holds_bool, Invalid, type_name, invalid
from dlforge.serve.schemas import SegmentationMask, SegmentationOutput

B64_FORM = '{"b64": "<base64 PNG or TIFF>"}'


def check_mask_format(artifact: Artifact, mask_format: str | None) -> None:
    """A 422 when a request names a ``mask_format`` for a model that answers no masks.

    Example:
        >>> check_mask_format(classifier_art, "rle")  # doctest: +SKIP
        Traceback (most recent call last):
        ...
        fastapi.exceptions.RequestValidationError: ... 'mask_format applies to segmentation models only ...
    """
    if mask_format is not None and artifact.task != "segmentation":
        raise RequestValidationError([{"loc": ("body", "mask_format"), "type": "value_error",
                                       "msg": f"mask_format applies to segmentation models only; this is a "
                                              f"{artifact.task} model: leave it out"}])


def encode_images(artifact: Artifact, inputs: list[Any], max_pixels: int) -> list[torch.Tensor]:
    """One model-ready ``(C, *S)`` float32 tensor per JSON image; a 422 naming every bad item
    (at most MAX_ERRORS), a 413 for an image of more than ``max_pixels`` pixels."""
    images, errors = [], []
    for i, item in enumerate(inputs):
        try:
            images.append(_image(artifact, item, (i,), max_pixels))
        except Invalid as bad:
            errors.append((bad.loc, bad.msg))
        if len(errors) >= MAX_ERRORS:
            break
    if errors:
        raise invalid(errors)
    return images


def _image(artifact: Artifact, item: Any, loc: tuple[int | str, ...], max_pixels: int) -> torch.Tensor:
    if isinstance(item, dict):
        raw: Any = _image_bytes(item, loc, max_pixels)
        loc = (*loc, "b64")
    elif isinstance(item, list):
        raw = _pixels(artifact, item, loc, max_pixels)
    else:
        raise Invalid(loc, f"expected an image (a nested list of pixel values or {B64_FORM}), got {type_name(item)}")
    try:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # overflow is refused just below
            (x,) = encode_seg_images([raw], artifact.preprocessing)  # (C, *S)
    except DataError as err:
        raise Invalid(loc, f"{err.message} ({err.hint})" if err.hint else err.message) from None
    if not bool(torch.isfinite(x).all()):
        raise Invalid(loc, f"a value {OVERFLOW}")
    return x


def _pixels(artifact: Artifact, item: list, loc: tuple[int | str, ...], max_pixels: int) -> np.ndarray:
    """Raw pixels as a numeric array; shape, channels and NaN are the encoder's to check."""
    try:
        a = np.asarray(item)
    except (ValueError, TypeError, OverflowError):
        raise Invalid(loc, "not a rectangular nested list of numbers (rows of different lengths?)") from None
    if a.dtype.kind not in "iuf" or holds_bool(item, a.ndim - 1):
        found = "booleans" if a.dtype.kind == "b" or a.dtype.kind in "iuf" else "values that are not numbers"
        raise Invalid(loc, f"expected pixel values (numbers), found {found}")
    dims = int((artifact.preprocessing.get("encoding") or {}).get("spatial_dims", 2))
    _check_pixels(a.shape[-dims:], loc, max_pixels)
    return a


def _image_bytes(item: dict, loc: tuple[int | str, ...], max_pixels: int) -> bytes:
    """The decoded bytes of ``{"b64": ...}``, whose image header is checked against the cap."""
    if set(item) != {"b64"} or not isinstance(item["b64"], str):
        raise Invalid(loc, f"expected an object {B64_FORM} with that one key")
    try:
        data = base64.b64decode(item["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise Invalid((*loc, "b64"), "not valid base64 (standard alphabet, with padding)") from None
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header: nothing is decoded yet
            width, height = image.size
            pages = int(getattr(image, "n_frames", 1))  # a multi-page TIFF is a 3D stack
    except Image.DecompressionBombError:
        width, height, pages = 2**31, 1, 1  # Pillow refused it as a decompression bomb: far over any cap
    except (UnidentifiedImageError, OSError, ValueError):
        raise Invalid((*loc, "b64"), "cannot decode the image bytes: not a recognised image format "
                                      "(send the bytes of a PNG or TIFF file)") from None
    _check_pixels((pages, height, width) if pages > 1 else (height, width), loc, max_pixels)
    return data


def _check_pixels(shape: Sequence[int], loc: tuple[int | str, ...], max_pixels: int) -> None:
    if math.prod(shape) > max_pixels:
        raise ApiError(413, "payload_too_large",
                       f"inputs[{loc[0]}]: an image of {'x'.join(map(str, shape))} pixels is larger than this "
                       f"server's cap of {max_pixels:,} pixels per image",
                       hint="tile the image and send the tiles, or ask the operator to raise max_image_pixels")


# ---------------------------------------------------------------------------- running
async def segment_on(batcher: DynamicBatcher, images: list[torch.Tensor], class_names: list[str] | None,
                     mask_format: str | None) -> dict[str, list]:
    """Run every image through ``batcher`` (one ``(1, C, *S)`` request each) and encode the masks:
    ``{"segments": [SegmentationOutput, ...], "areas": [{class: pixels}, ...]}``."""
    parts = await asyncio.gather(*(batcher.submit(image[None]) for image in images))  # (1, C, *S) each
    masks = [np.asarray(p["masks"][0]) for p in parts]  # (*S) int64 label maps
    areas = [p["areas"][0] for p in parts]
    segments = await asyncio.to_thread(  # PNG and RLE encoding is CPU work: off the event loop
        lambda: [mask_output(m, a, class_names, mask_format or "png") for m, a in zip(masks, areas)])
    return {"segments": segments, "areas": areas}


def mask_output(mask: np.ndarray, areas: dict[str, int], class_names: list[str] | None,
                mask_format: str) -> SegmentationOutput:
    """The answer for one label map: ``mask_format`` "png" (a TIFF for 3D) or "rle".

    Example:
        >>> mask_output(np.array([[0, 1], [1, 1]]), {"bg": 1, "cell": 3}, ["bg", "cell"], "rle").mask.classes["cell"]
        {'size': [2, 2], 'counts': [1, 3]}
    """
    if mask_format == "rle":
        mask_out = SegmentationMask(format="rle", classes=mask_rle(mask, class_names))
    else:
        data, media = mask_bytes(mask)
        mask_out = SegmentationMask(format="png" if media == "image/png" else "tiff",
                                    b64=base64.b64encode(data).decode("ascii"))
    return SegmentationOutput(shape=list(mask.shape), mask=mask_out, areas=areas)
