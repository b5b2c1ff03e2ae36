"""Segmentation training inputs: patches with foreground oversampling, and joint image/mask augmentation.

:func:`sample_patches` cuts random patches from images and their masks, a share of them
centred on a foreground pixel (nnU-Net's oversampling: with 1% foreground, purely random
patches would almost never show the model an object). :func:`augment_pair` moves an
image and its mask together, 2D or 3D: flips, 90-degree rotations, affine and elastic
warps use the same random parameters for both, the mask with nearest-neighbour sampling
(so it keeps its class ids), and intensity changes touch the image only.

Choices worth knowing:

* Images smaller than the patch are padded with zeros around their centre; the padded
  mask is background (0).
* A foreground patch is drawn from the images that have foreground; when none has any,
  every patch is random.
* Intensity changes are in the image's own units (a factor for brightness and contrast,
  a std for noise) and never clip, because medical images are rarely [0, 1] pixels.
* 3D volumes get flips on each axis, 90-degree turns in the H-W plane and intensity
  changes, all exact; affine and elastic warps are refused for them, because kornia
  (0.9) cannot carry a 3D mask through its warps with its image.
* Randomness: ``seed`` makes a call repeatable; without it torch's global generator
  (which :func:`dlforge.train.fit` seeds) is used.

Example:
    >>> import torch
    >>> x, y = sample_patches(torch.rand(2, 1, 64, 64), torch.zeros(2, 64, 64, dtype=torch.long), (32, 32), 4, seed=0)
    >>> x.shape, y.shape
    (torch.Size([4, 1, 32, 32]), torch.Size([4, 32, 32]))
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dlforge.errors import ConfigError, DataError

# ----------------------------------------------------------------------------- patches


def _as_tensors(images: Any, masks: Any, patch: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    images, masks = (a if torch.is_tensor(a) else torch.as_tensor(np.asarray(a)) for a in (images, masks))
    patch = tuple(int(p) for p in patch)
    dims = len(patch)
    if dims not in (2, 3) or any(p < 1 for p in patch):
        raise DataError(f"patch {patch} must be 2 or 3 positive sizes", hint="e.g. patch=(128, 128) or (64, 64, 64)")
    if images.ndim != dims + 2 or masks.ndim != dims + 1:
        raise DataError(f"a {dims}D patch needs images (N, C, *S) and masks (N, *S) with {dims} spatial dims, got "
                        f"images {tuple(images.shape)} and masks {tuple(masks.shape)}",
                        hint="add the channel axis to images (x[:, None]) or give a patch with one size per axis")
    if images.shape[0] != masks.shape[0] or images.shape[2:] != masks.shape[1:]:
        raise DataError(f"images {tuple(images.shape)} and masks {tuple(masks.shape)} do not match",
                        hint="each image needs a mask of its spatial size")
    if torch.is_floating_point(masks):
        raise DataError("masks must hold integer class indices, got floats", hint="pass masks.long()")
    return images, masks.long(), patch


def _pad_to(images: torch.Tensor, masks: torch.Tensor, patch: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad the spatial axes that are smaller than the patch, around the centre."""
    short = [max(p - s, 0) for p, s in zip(patch, masks.shape[1:])]
    if not any(short):
        return images, masks
    pad: list[int] = []
    for missing in reversed(short):  # F.pad lists the last axis first
        pad += [missing // 2, missing - missing // 2]
    return torch.nn.functional.pad(images, pad), torch.nn.functional.pad(masks, pad)


def sample_patches(
    images: Any, masks: Any, patch: Sequence[int], n: int, *, foreground: float = 0.33, seed: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random patches of ``images`` (N, C, *S) and ``masks`` (N, *S), 2D or 3D.

    A share ``foreground`` of the patches (rounded; nnU-Net uses a third) is centred on a
    random foreground pixel (mask > 0) of a random image that has one, shifted to stay
    inside the image; the rest are uniform. Returns ``x`` (n, C, *patch) and ``y``
    (n, *patch) int64, in a shuffled order. The same ``seed`` gives the same patches.

    Example:
        >>> import torch
        >>> m = torch.zeros(1, 100, 100, dtype=torch.long); m[0, 90:, 90:] = 1
        >>> x, y = sample_patches(m[:, None].float(), m, (16, 16), 10, foreground=1.0, seed=0)
        >>> int((y.flatten(1).amax(1) > 0).sum())
        10
    """
    if not 0.0 <= foreground <= 1.0:
        raise ConfigError(f"foreground={foreground} is not a share", hint="use a value in [0, 1], e.g. 0.33")
    if n < 1:
        raise ConfigError(f"n={n} patches is too few", hint="ask for at least one patch")
    images, masks, patch = _as_tensors(images, masks, patch)
    images, masks = _pad_to(images, masks, patch)
    sizes = masks.shape[1:]
    g = torch.Generator().manual_seed(int(seed) if seed is not None else int(torch.randint(2**31, ())))
    with_fg = [i for i in range(len(masks)) if bool((masks[i] > 0).any())]
    n_fg = round(foreground * n) if with_fg else 0
    fg_points: dict[int, torch.Tensor] = {}
    xs, ys = [], []
    for k in torch.randperm(n, generator=g).tolist():  # k < n_fg: a foreground patch, in shuffled order
        if k < n_fg:
            i = with_fg[int(torch.randint(len(with_fg), (), generator=g))]
            if i not in fg_points:
                fg_points[i] = torch.nonzero(masks[i] > 0)  # (P, dims)
            centre = fg_points[i][int(torch.randint(len(fg_points[i]), (), generator=g))].tolist()
            start = [min(max(c - p // 2, 0), s - p) for c, p, s in zip(centre, patch, sizes)]
        else:
            i = int(torch.randint(len(masks), (), generator=g))
            start = [int(torch.randint(s - p + 1, (), generator=g)) for p, s in zip(patch, sizes)]
        box = tuple(slice(a, a + p) for a, p in zip(start, patch))
        xs.append(images[i][(slice(None), *box)])  # (C, *patch)
        ys.append(masks[i][box])  # (*patch)
    return torch.stack(xs), torch.stack(ys)


# ----------------------------------------------------------------------------- augmentation


class SegAugmentConfig(BaseModel):
    """Joint image/mask augmentation; everything is off unless set.

    ``hflip``, ``vflip``, ``dflip``, ``rot90`` and ``elastic`` are probabilities (flips
    of the W, H and, for 3D volumes only, D axis; ``rot90`` turns the H-W plane by 90,
    180 or 270 degrees, non-square ones only by 180). ``rotation`` (degrees),
    ``translate`` (share of the size), ``scale`` (zoom range) and ``shear`` (degrees)
    make one random affine. ``elastic_alpha``/``elastic_sigma`` are kornia's
    displacement strength and smoothness. ``brightness`` and ``contrast`` scale the
    image by 1 ± x (contrast around each image's mean) and ``noise`` is a Gaussian std;
    these three touch the image only. ``image_resample`` is how the image is sampled
    under affine and elastic warps (2D only); the mask is always nearest.

    Example:
        >>> SegAugmentConfig(hflip=0.5, elastic=0.2).elastic
        0.2
    """

    model_config = ConfigDict(extra="forbid")

    hflip: float = Field(0.0, ge=0, le=1)
    vflip: float = Field(0.0, ge=0, le=1)
    dflip: float = Field(0.0, ge=0, le=1)
    rot90: float = Field(0.0, ge=0, le=1)
    rotation: float = Field(0.0, ge=0, le=180)
    translate: float = Field(0.0, ge=0, le=1)
    scale: tuple[float, float] | None = None
    shear: float = Field(0.0, ge=0, lt=90)
    elastic: float = Field(0.0, ge=0, le=1)
    elastic_alpha: float = Field(1.0, gt=0)
    elastic_sigma: float = Field(16.0, gt=0)
    brightness: float = Field(0.0, ge=0, lt=1)
    contrast: float = Field(0.0, ge=0, lt=1)
    noise: float = Field(0.0, ge=0)
    image_resample: str = "bilinear"

    @field_validator("scale")
    @classmethod
    def _scale(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0 < value[0] <= value[1]:
            raise ValueError("needs [min, max] with 0 < min <= max, e.g. [0.8, 1.2]")
        return value

    @field_validator("image_resample")
    @classmethod
    def _resample(cls, value: str) -> str:
        if value not in ("bilinear", "nearest"):
            raise ValueError("use bilinear or nearest")
        return value


def as_seg_augment_config(value: SegAugmentConfig | Mapping[str, Any] | None) -> SegAugmentConfig:
    """Accept a :class:`SegAugmentConfig`, a plain dict (as in YAML) or None (all off).

    Example:
        >>> as_seg_augment_config({"rot90": 0.5}).rot90
        0.5
    """
    if isinstance(value, SegAugmentConfig):
        return value
    try:
        return SegAugmentConfig.model_validate(value or {})
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"invalid segmentation augmentation: {problems}",
                          hint=f"allowed keys: {', '.join(SegAugmentConfig.model_fields)}") from None


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Run under torch's global generator seeded with ``seed`` (kornia draws from it), then restore it."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def _has_warp(cfg: SegAugmentConfig) -> bool:
    return bool(cfg.rotation or cfg.translate or cfg.shear or (cfg.scale and cfg.scale != (1.0, 1.0)) or cfg.elastic)


def _flip(x: torch.Tensor, y: torch.Tensor, p: float, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip each sample along spatial axis ``dim`` (negative: -1 is W) with probability ``p``."""
    chosen = torch.rand(len(x)) < p  # (B,)
    if not chosen.any():
        return x, y
    x, y = x.clone(), y.clone()
    x[chosen], y[chosen] = x[chosen].flip(dim), y[chosen].flip(dim)  # same negative dim: masks lack only C
    return x, y


def _warps(cfg: SegAugmentConfig, height: int, width: int) -> list[torch.nn.Module]:
    import kornia.augmentation as K  # imported here: kornia takes seconds to import, configs need none of it
    ops: list[torch.nn.Module] = []
    if cfg.hflip:
        ops.append(K.RandomHorizontalFlip(p=cfg.hflip))
    if cfg.vflip:
        ops.append(K.RandomVerticalFlip(p=cfg.vflip))
    if cfg.rotation or cfg.translate or cfg.shear or (cfg.scale and cfg.scale != (1.0, 1.0)):
        ops.append(K.RandomAffine(
            degrees=cfg.rotation, translate=(cfg.translate, cfg.translate) if cfg.translate else None,
            scale=cfg.scale, shear=(-cfg.shear, cfg.shear, -cfg.shear, cfg.shear) if cfg.shear else None,
            resample=cfg.image_resample, p=1.0))
    if cfg.elastic:
        # The displacement field is smoothed by a Gaussian of 3 sigma each side, no wider than the image.
        kernel = min(2 * int(3 * cfg.elastic_sigma) + 1, min(height, width) - (1 - min(height, width) % 2))
        ops.append(K.RandomElasticTransform(
            kernel_size=(kernel, kernel), sigma=(cfg.elastic_sigma, cfg.elastic_sigma),
            alpha=(cfg.elastic_alpha, cfg.elastic_alpha), resample=cfg.image_resample, p=cfg.elastic))
    return ops


def _rot90(x: torch.Tensor, y: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn each sample by a random multiple of 90 degrees with probability ``p`` (exact, no resampling)."""
    square = x.shape[-1] == x.shape[-2]
    turns = torch.randint(1, 4, (len(x),)) if square else torch.full((len(x),), 2)
    turns = torch.where(torch.rand(len(x)) < p, turns, 0)
    xs = [torch.rot90(xi, int(k), dims=(-2, -1)) for xi, k in zip(x, turns)]
    ys = [torch.rot90(yi, int(k), dims=(-2, -1)) for yi, k in zip(y, turns)]
    return torch.stack(xs), torch.stack(ys)


def _intensity(x: torch.Tensor, cfg: SegAugmentConfig) -> torch.Tensor:
    dims = tuple(range(1, x.ndim))
    shape = (len(x),) + (1,) * (x.ndim - 1)  # one factor per sample
    if cfg.brightness:
        x = x * (1 + (torch.rand(shape, device=x.device) * 2 - 1) * cfg.brightness)
    if cfg.contrast:
        mean = x.mean(dim=dims, keepdim=True)
        x = (x - mean) * (1 + (torch.rand(shape, device=x.device) * 2 - 1) * cfg.contrast) + mean
    if cfg.noise:
        x = x + cfg.noise * torch.randn_like(x)
    return x


def augment_pair(
    x: torch.Tensor, y: torch.Tensor, config: SegAugmentConfig | Mapping[str, Any] | None = None,
    *, seed: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment images ``x`` (B, C, H, W) and masks ``y`` (B, H, W) int64 together, or 3D ones.

    3D batches are ``x`` (B, C, D, H, W) with ``y`` (B, D, H, W); they take flips, rot90
    and intensity changes, and refuse affine and elastic warps (a ConfigError).

    Geometric transforms use the same random draw for image and mask; the mask is
    sampled nearest-neighbour, so it stays int64 and holds only its own classes (plus
    background 0 where a warp brings in space from outside the image). Intensity changes
    touch the image only. See :class:`SegAugmentConfig` for the keys.

    Example:
        >>> import torch
        >>> y = torch.randint(0, 3, (2, 16, 16))
        >>> xa, ya = augment_pair(y[:, None].float(), y, {"hflip": 1.0}, seed=0)
        >>> bool((ya == y.flip(-1)).all()), ya.dtype
        (True, torch.int64)
        >>> v = torch.randint(0, 3, (1, 4, 8, 8))  # one (D, H, W) volume
        >>> torch.equal(augment_pair(v[:, None].float(), v, {"dflip": 1.0}, seed=0)[1], v.flip(1))
        True
    """
    cfg = as_seg_augment_config(config)
    if x.ndim not in (4, 5) or y.ndim != x.ndim - 1 or x.shape[0] != y.shape[0] or x.shape[2:] != y.shape[1:]:
        raise DataError(f"augment_pair needs images (B, C, H, W) with masks (B, H, W), or (B, C, D, H, W) with "
                        f"(B, D, H, W), got {tuple(x.shape)} and {tuple(y.shape)}",
                        hint="give each image a mask of its size, without a channel axis")
    volume = x.ndim == 5
    if volume and _has_warp(cfg):
        raise ConfigError("affine and elastic augmentation (rotation, translate, scale, shear, elastic) are 2D only: "
                          "kornia cannot move a 3D mask with its volume exactly",
                          hint="for 3D use hflip, vflip, dflip, rot90 and intensity changes; set the warps to 0")
    if cfg.dflip and not volume:
        raise ConfigError("dflip flips the depth axis of 3D volumes, but these images are 2D",
                          hint="use hflip and vflip for 2D images")
    if not torch.is_floating_point(x) or torch.is_floating_point(y):
        raise DataError(f"augment_pair needs float images and integer masks, got {x.dtype} and {y.dtype}",
                        hint="pass x.float() and y.long()")
    with torch.no_grad(), _seeded(seed):
        if volume:  # exact flips in torch: kornia's flips take 2D masks only
            for p, dim in ((cfg.hflip, -1), (cfg.vflip, -2), (cfg.dflip, -3)):
                if p:
                    x, y = _flip(x, y, p, dim)
        if cfg.rot90:
            x, y = _rot90(x, y, cfg.rot90)
        ops = [] if volume else _warps(cfg, x.shape[-2], x.shape[-1])
        if ops:
            import kornia.augmentation as K
            from kornia.constants import DataKey, Resample
            # Masks travel as a float channel; kornia samples them nearest-neighbour by default.
            nearest = {DataKey.MASK: {"resample": Resample.NEAREST, "align_corners": False}}  # as the image's warps
            pipeline = K.AugmentationSequential(*ops, data_keys=["input", "mask"], extra_args=nearest)
            x, mask = pipeline(x, y[:, None].to(x.dtype))  # (B, C, H, W), (B, 1, H, W)
            y = mask[:, 0].round().long()  # (B, H, W)
        x = _intensity(x, cfg)
    return x, y
