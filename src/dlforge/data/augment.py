"""Training-batch augmentation: kornia image transforms, Gaussian noise, mixup and cutmix.

The ``data.augment`` config section (:class:`AugmentConfig`) names the transforms; a
built-in set's label-preserving preset (:data:`PRESETS`) can fill in the ones not given.
:func:`build_augment` turns the section into a :class:`BatchAugment`, the
``augment(x, y) -> (x, y)`` that :func:`dlforge.train.fit` applies to every training
batch on the model's device. It is the identity in eval mode and never touches
validation or test data. :mod:`dlforge.data.augment_preview` draws what it does.

Choices worth knowing:

* Batches arrive standardised (``(x - mean) / std`` per channel). Given the stats, image
  transforms run on un-standardised [0, 1] pixels and the result is standardised again,
  so colour jitter sees real colours, and rotation padding and erased boxes are black
  pixels (0), as they would be on the raw image. Without stats x is taken as pixels.
* ``noise`` is a Gaussian std in the standardised units the model sees, added last.
* Unset keys are ``None`` ("take the preset's value, else off"), so a config written back
  with every key still resolves to the same transforms; ``0`` switches a preset's
  transform off.
* Randomness comes from torch's global generator, which :func:`dlforge.train.fit` seeds.

Example:
    >>> import torch
    >>> cfg = resolve_augment(AugmentConfig(preset="digits", mixup=0.2), "digits")
    >>> cfg.rotation, cfg.hflip, cfg.mixup
    (10.0, 0.0, 0.2)
    >>> augment = build_augment(cfg, input_shape=(1, 8, 8), num_classes=10)
    >>> x, y = augment(torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,)))
    >>> x.shape, y.shape
    (torch.Size([16, 1, 8, 8]), torch.Size([16, 10]))
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch import nn

from dlforge.data.catalog import list_builtin
from dlforge.data.mix import cutmix, mixup
from dlforge.errors import ConfigError, DataError

# Keys that only make sense on (C, H, W) images.
IMAGE_KEYS = ("rotation", "translate", "scale", "shear", "resized_crop", "hflip", "vflip",
              "color_jitter", "blur", "erasing", "cutmix")

# Label-preserving defaults per built-in set. Digits: small affine moves only; a flipped
# 2 is not a 2 and a 6 rotated far enough reads as a 9. Tables: a little noise, in
# standardised units (a tenth of a feature's spread; less on the 2-D toy sets, whose
# classes sit closer together relative to that spread).
PRESETS: dict[str, dict[str, Any]] = {
    "digits": {"rotation": 10.0, "translate": 0.1, "scale": (0.9, 1.1)},
    "iris": {"noise": 0.1},
    "wine": {"noise": 0.1},
    "breast_cancer": {"noise": 0.1},
    "diabetes": {"noise": 0.1},
    "xor": {"noise": 0.05},
    "circles": {"noise": 0.05},
    "spirals": {"noise": 0.05},
}
PRESET_CHOICES = ("none", "auto", *PRESETS)  # auto: the preset of the data set being trained

# What an unset key resolves to when no preset sets it.
_OFF: dict[str, Any] = {"rotation": 0.0, "translate": 0.0, "scale": None, "shear": 0.0, "resized_crop": None,
                        "hflip": 0.0, "vflip": 0.0, "color_jitter": None, "noise": 0.0, "blur": None,
                        "erasing": None, "mixup": 0.0, "cutmix": 0.0, "mix_prob": 1.0}
TRANSFORM_KEYS = tuple(k for k in _OFF if k != "mix_prob")  # mix_prob only scales mixup/cutmix


# ----------------------------------------------------------------------------- config

def _range(value: tuple[float, float] | None, low: float, high: float) -> tuple[float, float] | None:
    if value is not None and not low <= value[0] <= value[1] <= high:
        raise ValueError(f"needs [min, max] with {low} <= min <= max <= {high}")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ResizedCropConfig(_Strict):
    """Crop a random box of ``scale`` x the area and ``ratio`` aspect, resized back."""

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    _check_scale = field_validator("scale")(lambda v: _range(v, 1e-3, 1.0))
    _check_ratio = field_validator("ratio")(lambda v: _range(v, 1e-2, 1e2))


class ColorJitterConfig(_Strict):
    """Random brightness, contrast, saturation (factors 1 ± x) and hue shift (± x of a turn)."""

    brightness: float = Field(0.0, ge=0, le=1)
    contrast: float = Field(0.0, ge=0, le=1)
    saturation: float = Field(0.0, ge=0, le=1)
    hue: float = Field(0.0, ge=0, le=0.5)


class BlurConfig(_Strict):
    """Gaussian blur with sigma drawn from ``sigma`` (pixels), applied with probability ``p``."""

    sigma: tuple[float, float] = (0.1, 2.0)
    p: float = Field(0.5, ge=0, le=1)

    _check_sigma = field_validator("sigma")(lambda v: _range(v, 1e-3, 1e2))


class ErasingConfig(_Strict):
    """Random erasing (cutout): a box of ``scale`` x the area set to black, with probability ``p``."""

    p: float = Field(0.5, ge=0, le=1)
    scale: tuple[float, float] = (0.02, 0.33)

    _check_scale = field_validator("scale")(lambda v: _range(v, 1e-3, 0.99))


class AugmentConfig(_Strict):
    """The ``data.augment`` section; everything is off unless set or filled by a preset.

    ``rotation`` is degrees: ``r`` draws from [-r, r], ``[a, b]`` from [a, b].
    ``translate`` is a fraction of the image size; ``scale`` a zoom range; ``shear``
    degrees on both axes. ``hflip``/``vflip`` are probabilities. ``noise`` is a Gaussian
    std in standardised units. ``mixup``/``cutmix`` are Beta alphas (0: off);
    ``mix_prob`` is the share of batches mixed, one of the two picked per batch when
    both are on.

    Example:
        >>> AugmentConfig(rotation=15, hflip=0.5).rotation
        15.0
    """

    preset: str | None = None
    rotation: float | tuple[float, float] | None = None
    translate: float | None = Field(None, ge=0, le=1)
    scale: tuple[float, float] | None = None
    shear: float | None = Field(None, ge=0, lt=90)
    resized_crop: ResizedCropConfig | None = None
    hflip: float | None = Field(None, ge=0, le=1)
    vflip: float | None = Field(None, ge=0, le=1)
    color_jitter: ColorJitterConfig | None = None
    noise: float | None = Field(None, ge=0)
    blur: BlurConfig | None = None
    erasing: ErasingConfig | None = None
    mixup: float | None = Field(None, ge=0)
    cutmix: float | None = Field(None, ge=0)
    mix_prob: float | None = Field(None, ge=0, le=1)

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str | None) -> str | None:
        if value is not None and value not in PRESET_CHOICES:
            close = difflib.get_close_matches(value, PRESET_CHOICES, n=1)
            guess = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"{guess}unknown preset; use one of: {', '.join(PRESET_CHOICES)}")
        return value

    @field_validator("rotation")
    @classmethod
    def _rotation(cls, value: float | tuple[float, float] | None) -> float | tuple[float, float] | None:
        if isinstance(value, tuple):
            return _range(value, -180.0, 180.0)
        if value is not None and not 0 <= value <= 180:
            raise ValueError("needs degrees between 0 and 180, or a [min, max] range")
        return value

    _check_scale = field_validator("scale")(lambda v: _range(v, 1e-2, 1e2))


def as_augment_config(value: AugmentConfig | Mapping[str, Any] | None) -> AugmentConfig:
    """Accept an :class:`AugmentConfig`, a plain dict (as in YAML) or None (all off).

    A bad dict raises a ConfigError naming the key path, e.g. ``data.augment.hflip``.

    Example:
        >>> as_augment_config({"hflip": 0.5}).hflip
        0.5
    """
    if isinstance(value, AugmentConfig):
        return value
    try:
        return AugmentConfig.model_validate(value or {})
    except ValidationError as err:
        problems = "; ".join(f"data.augment.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"invalid augmentation: {problems}",
                          hint=f"allowed keys: {', '.join(AugmentConfig.model_fields)}") from None


def _is_on(cfg: AugmentConfig, key: str) -> bool:
    """Whether the (resolved) transform ``key`` changes anything."""
    value = getattr(cfg, key)
    if key == "rotation":
        return value != 0.0 and value != (0.0, 0.0)
    if key == "scale":
        return value is not None and value != (1.0, 1.0)
    if key in ("blur", "erasing"):
        return value is not None and value.p > 0
    if key == "color_jitter":
        return value is not None and any(getattr(value, k) > 0 for k in ColorJitterConfig.model_fields)
    if key in ("mixup", "cutmix"):
        return bool(value) and bool(cfg.mix_prob)
    return value is not None and bool(value)  # resized_crop (a section), translate, shear, flips, noise


def _builtin_kind(name: str | None) -> str | None:
    return next((d["kind"] for d in list_builtin() if d["name"] == name), None)


def resolve_augment(
    cfg: AugmentConfig | Mapping[str, Any] | None, dataset_name: str | None, *, kind: str | None = None,
) -> AugmentConfig:
    """Merge the preset, then the keys set explicitly; check the transforms fit the data.

    ``preset: auto`` takes ``dataset_name``'s preset. ``kind`` is the data's kind
    (``Prepared.kind``: image, tabular, sequence, text); for a built-in set it is looked
    up. The result has every key filled in, so resolving it again changes nothing.

    Example:
        >>> resolve_augment({"preset": "auto", "rotation": 5}, "digits").translate
        0.1
        >>> resolve_augment({"preset": "auto"}, "iris").noise
        0.1
    """
    cfg = as_augment_config(cfg)
    name = cfg.preset
    if name == "auto":
        if dataset_name not in PRESETS:
            raise ConfigError(f"data.augment.preset is auto, but {dataset_name!r} has no preset",
                              hint=f"name the transforms instead, or a preset: {', '.join(PRESETS)}")
        name = dataset_name
    preset = PRESETS.get(name, {})  # None and "none": no preset
    explicit = {k: v for k, v in cfg if k != "preset" and v is not None}
    resolved = AugmentConfig.model_validate({**_OFF, **preset, **explicit, "preset": name})
    kind = kind or _builtin_kind(dataset_name)
    if kind is None and any(_is_on(resolved, k) for k in TRANSFORM_KEYS):
        raise ConfigError(f"cannot tell what kind of data {dataset_name!r} is",
                          hint="pass kind= (Prepared.kind: image, tabular, sequence or text)")
    _check_fits(resolved, kind)
    return resolved


def _check_fits(cfg: AugmentConfig, kind: str | None) -> None:
    on = [k for k in TRANSFORM_KEYS if _is_on(cfg, k)]
    if kind == "text" and on:
        raise ConfigError(f"data.augment.{on[0]} cannot augment text: inputs are token ids",
                          hint="remove data.augment for text data")
    image_only = [k for k in on if k in IMAGE_KEYS]
    if kind != "image" and image_only:
        raise ConfigError(f"data.augment.{image_only[0]} needs image data, but the data is {kind}",
                          hint="use noise or mixup on tables and sequences, or remove the key")


# ----------------------------------------------------------------------------- the module

def _kind_of(input_shape: Sequence[int]) -> str:
    # Token ids (T,) look like a table here; BatchAugment rejects their integer dtype.
    return {3: "image", 1: "tabular"}.get(len(input_shape), "sequence")


def _image_ops(cfg: AugmentConfig, shape: tuple[int, ...]) -> list[nn.Module]:
    """Kornia transforms in the order they run: crop, affine, flips, colour, blur, erasing."""
    import kornia.augmentation as K  # imported here: kornia takes seconds to import, configs need none of it
    channels, height, width = shape
    ops: list[nn.Module] = []
    if cfg.resized_crop is not None:
        rc = cfg.resized_crop
        ops.append(K.RandomResizedCrop((height, width), scale=rc.scale, ratio=rc.ratio, p=1.0))
    if any(_is_on(cfg, k) for k in ("rotation", "translate", "scale", "shear")):
        ops.append(K.RandomAffine(
            degrees=cfg.rotation,
            translate=(cfg.translate, cfg.translate) if cfg.translate else None,
            scale=cfg.scale,
            shear=(-cfg.shear, cfg.shear, -cfg.shear, cfg.shear) if cfg.shear else None,
            p=1.0,
        ))
    if cfg.hflip:
        ops.append(K.RandomHorizontalFlip(p=cfg.hflip))
    if cfg.vflip:
        ops.append(K.RandomVerticalFlip(p=cfg.vflip))
    if _is_on(cfg, "color_jitter"):
        cj = cfg.color_jitter
        if channels != 3 and (cj.saturation or cj.hue):
            raise ConfigError(f"color_jitter saturation and hue need RGB images, these have {channels} channel(s)",
                              hint="keep only brightness and contrast for grayscale images")
        ops.append(K.ColorJitter(cj.brightness, cj.contrast, cj.saturation, cj.hue, p=1.0))
    if _is_on(cfg, "blur"):
        # 3 sigma each side holds 99.7% of the kernel; no wider than the image (reflect padding).
        limit = min(height, width) - (1 - min(height, width) % 2)  # largest odd size that fits
        kernel = min(2 * math.ceil(3 * cfg.blur.sigma[1]) + 1, limit)
        if kernel < 3:
            raise ConfigError(f"images of {height}x{width} are too small to blur", hint="remove data.augment.blur")
        ops.append(K.RandomGaussianBlur(kernel, cfg.blur.sigma, p=cfg.blur.p))
    if _is_on(cfg, "erasing"):
        ops.append(K.RandomErasing(scale=cfg.erasing.scale, value=0.0, p=cfg.erasing.p))
    return ops


class BatchAugment(nn.Module):
    """``augment(x, y) -> (x, y)`` for training batches; the identity in eval mode.

    Build it with :func:`build_augment`. ``num_classes`` None means regression targets.
    ``stats`` (``Standardizer.to_dict()`` of the images) lets image transforms work on
    [0, 1] pixels. Mixed classification batches come back with soft labels
    ``(B, num_classes)`` float; other batches keep their int64 class ids.

    Example:
        >>> augment = build_augment({"noise": 0.1}, input_shape=(4,), num_classes=3)
        >>> x, y = augment(torch.zeros(8, 4), torch.zeros(8, dtype=torch.long))
        >>> bool(x.std() > 0), augment.eval()(torch.zeros(8, 4), y)[0].abs().sum().item()
        (True, 0.0)
    """

    def __init__(self, cfg: AugmentConfig | Mapping[str, Any], input_shape: Sequence[int], num_classes: int | None,
                 stats: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.input_shape = tuple(int(d) for d in input_shape)
        self.cfg = cfg = resolve_augment(cfg, None, kind=_kind_of(self.input_shape))  # unset keys -> numbers
        self.num_classes = num_classes
        self.stats = dict(stats) if stats is not None else None
        is_image = len(self.input_shape) == 3
        self.image_ops = nn.Sequential(*_image_ops(cfg, self.input_shape)) if is_image else nn.Sequential()
        self.mixers = [(name, fn) for name, fn in (("mixup", mixup), ("cutmix", cutmix)) if _is_on(cfg, name)]
        if stats is not None and is_image:
            if stats.get("axis") != "channel" or len(stats["mean"]) != self.input_shape[0]:
                raise DataError(f"standardisation stats {stats!r} do not fit images of shape {self.input_shape}",
                                hint="pass prepared.preprocessing['standardize'] of this data")
            self.register_buffer("mean", torch.tensor(stats["mean"]).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(stats["std"]).view(1, -1, 1, 1), persistent=False)
        else:
            self.mean = self.std = None

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.training:
            return x, y
        if tuple(x.shape[1:]) != self.input_shape or not torch.is_floating_point(x):
            raise DataError(f"augmentation built for float inputs of shape {self.input_shape} got "
                            f"{x.dtype} inputs of shape {tuple(x.shape[1:])}",
                            hint="build the augmentation with this data's input_shape")
        dtype = x.dtype
        with torch.no_grad():  # augmentation is data preparation, not part of the graph
            if len(self.image_ops):
                x = self._transform_images(x)
            if self.cfg.noise:
                x = x + self.cfg.noise * torch.randn_like(x)
            if self.mixers and (self.cfg.mix_prob >= 1 or float(torch.rand(())) < self.cfg.mix_prob):
                x, y = self._mix(x, y)
        return x.to(dtype), y

    def _transform_images(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None:
            return self.image_ops(x)
        mean, std = self.mean.to(x), self.std.to(x)  # (1, C, 1, 1)
        pixels = self.image_ops(x * std + mean)  # (B, C, H, W) in [0, 1]
        return (pixels - mean) / std

    def _mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # One of the two per batch when both are on; one draw decides.
        name, fn = self.mixers[int(torch.randint(len(self.mixers), ()))] if len(self.mixers) > 1 else self.mixers[0]
        alpha = getattr(self.cfg, name)
        if self.num_classes is None:  # regression: targets mix linearly, like inputs
            x, y, _ = fn(x, y, alpha)
            return x, y
        if not torch.is_floating_point(y):
            if y.ndim != 1:
                raise DataError(f"{name} mixes one class per sample, got targets of shape {tuple(y.shape)}",
                                hint="remove data.augment.mixup/cutmix for per-token targets")
            y = nn.functional.one_hot(y, self.num_classes).float()  # (B, num_classes)
        x, y, _ = fn(x, y, alpha)
        return x, y


def build_augment(
    cfg: AugmentConfig | Mapping[str, Any] | None, input_shape: Sequence[int], num_classes: int | None,
    *, stats: Mapping[str, Any] | None = None,
) -> BatchAugment | None:
    """The :class:`BatchAugment` for ``cfg``, or None when no transform is on.

    ``input_shape`` is one sample's shape (``Prepared.input_shape``); ``num_classes``
    is the class count for classification, None for regression. ``stats`` is
    ``Prepared.preprocessing["standardize"]`` (see the module notes). A ``preset``
    other than ``auto`` is resolved here; ``auto`` needs :func:`resolve_augment`.

    Example:
        >>> build_augment({"hflip": 0.0}, (1, 8, 8), 10) is None
        True
        >>> type(build_augment({"hflip": 0.5}, (1, 8, 8), 10)).__name__
        'BatchAugment'
    """
    cfg = as_augment_config(cfg)
    if cfg.preset == "auto":
        raise ConfigError("data.augment.preset auto needs the data set's name",
                          hint="call resolve_augment(cfg, dataset_name) first, or name the preset")
    cfg = resolve_augment(cfg, None, kind=_kind_of(input_shape))
    if not any(_is_on(cfg, k) for k in TRANSFORM_KEYS):
        return None
    if num_classes is None and _is_on(cfg, "cutmix"):
        raise ConfigError("data.augment.cutmix mixes class labels by area; regression targets cannot be",
                          hint="use mixup for regression")
    return BatchAugment(cfg, input_shape, num_classes, stats)
