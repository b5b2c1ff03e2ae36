"""The ``data`` section of a segmentation run, turned into patches, regions and a model size.

A segmentation source is a folder holding ``images/`` and ``masks/``, or a built-in set
(``nuclei``, ``synthetic_nuclei``). :func:`load_segmentation` reads it, normalises each
image (1st/99.8th percentiles, :data:`dlforge.data.seg_dataset.NORMALIZE`), holds out
validation and test regions (whole images when there are enough, else bands of each image
with a ``data.gap``, :mod:`dlforge.data.seg_regions`), and returns a :class:`SegPrepared`:

* ``train``: :class:`~dlforge.data.seg_dataset.PatchDataset`, ``data.patches_per_epoch``
  (default 8 batches) fresh ``data.patch`` windows per epoch, a share ``data.foreground``
  centred on foreground; the default patch fits about four median objects per side
  (:func:`choose_patch`), nnU-Net's idea of planning from the data, sized for a CPU;
* ``val``/``test``: the held-out regions as whole crops (sides trimmed to what the U-Net's
  levels divide, for the per-epoch validation loss); the final scores use the untrimmed
  regions through sliding windows (:mod:`dlforge.pipeline.seg_eval`);
* ``input_shape`` = (C, *patch): the model is built for the patch and predicts any size in
  windows of it.

Example:
    >>> from dlforge.config import validate_config
    >>> cfg = validate_config({"data": {"source": "synthetic_nuclei", "n_samples": 8},
    ...                        "model": {"arch": "unet", "widths": [8, 16]}})
    >>> p = load_segmentation(cfg)
    >>> p.task, p.input_shape, p.num_outputs, len(p.regions.test)
    ('segmentation', (1, 64, 64), 2, 1)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from dlforge.config import DataConfig, RunConfig
from dlforge.data import Prepared, load_source
from dlforge.data.seg_dataset import NORMALIZE, PatchDataset, normalize_images
from dlforge.data.seg_regions import Box, RegionSplit, spatial_split, valid_starts
from dlforge.data.segmentation import FULL_SCALE, SEGMENTATION_SUFFIXES, SegmentationBundle, load_segmentation_folder, read_image
from dlforge.errors import ConfigError, DataError
from dlforge.models.unet import UNetConfig

SEG_BUILTINS = ("nuclei", "synthetic_nuclei")
SEG_KEYS = ("masks", "patch", "patches_per_epoch", "foreground", "gap", "unlabelled")
DEFAULT_PATCH = {2: 128, 3: 64}  # per side, when the training masks hold no object; capped by the image
PATCH_RANGE = {2: (64, 256), 3: (32, 128)}  # the side chosen from the objects' size stays in here
OBJECTS_ACROSS = 4  # median objects per patch side: context around each one, at a quarter of the cost of 128
DEFAULT_BATCHES_PER_EPOCH = 8
DEFAULT_SEG_LOSS = "dice_ce"  # nnU-Net's: Dice for the overlap, cross-entropy for smooth early gradients


@dataclass
class SegPrepared(Prepared):
    """:class:`~dlforge.data.Prepared` plus what segmentation scoring needs: the normalised
    images and masks, the held-out regions and the patch size."""

    bundle: SegmentationBundle | None = None
    regions: RegionSplit | None = None
    patch: tuple[int, ...] = ()

    def crop(self, box: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Image (C, *box), mask (*box) and instance ids (or None) of a held-out box."""
        b = self.bundle
        assert b is not None
        inst = None if b.instances is None else b.instances[(box.index, *box.slices)]
        return b.x[(box.index, slice(None), *box.slices)], b.y[(box.index, *box.slices)], inst


def seg_pixel_counts(prepared: Prepared) -> list[int] | None:
    """Pixels per class inside the training region (what class weights are computed from)."""
    if not isinstance(prepared, SegPrepared) or prepared.bundle is None or prepared.regions is None:
        return None
    labels = prepared.bundle.y[prepared.regions.train]
    return np.bincount(labels.ravel(), minlength=prepared.num_outputs).tolist()


def is_segmentation(d: DataConfig) -> bool:
    """True when ``data`` names segmentation data (a built-in, or a folder with images/ and masks/)."""
    if d.task == "segmentation" or d.source in SEG_BUILTINS:
        return True
    path = Path(d.source).expanduser()
    return (path / "images").is_dir() and (path / "masks").is_dir()


def load_seg_bundle(cfg: RunConfig) -> SegmentationBundle:
    """The configured segmentation set, images normalised per image and channel."""
    d = cfg.data
    if d.source in SEG_BUILTINS:
        if d.masks != "classes":
            raise ConfigError(f"data.masks applies to mask folders, not the built-in {d.source}",
                              hint="remove data.masks")
        bundle = load_source(d.source, n_samples=d.n_samples, noise=d.noise, seed=cfg.data_seed)
    else:
        path = Path(d.source).expanduser()
        if not ((path / "images").is_dir() and (path / "masks").is_dir()):
            raise DataError(f"{d.source} is not a segmentation folder",
                            hint="a segmentation folder holds images/ and masks/ with matching file names")
        for key in ("n_samples", "noise"):
            if getattr(d, key) is not None:
                raise ConfigError(f"data.{key} applies to generated sets, not the folder {d.source}",
                                  hint=f"remove data.{key}")
        bundle = load_segmentation_folder(path, color=d.color, masks=d.masks)
    if not isinstance(bundle, SegmentationBundle):
        raise ConfigError(f"{d.source} is not segmentation data", hint="remove data.task: segmentation")
    bundle.x = normalize_images(bundle.x, NORMALIZE)
    bundle.encoding = {**bundle.encoding, "normalize": dict(NORMALIZE)}
    return bundle


def unlabelled_images(cfg: RunConfig, bundle: SegmentationBundle) -> list[np.ndarray]:
    """The images of ``data.unlabelled`` (any file names, any sizes), as (C, *S) float32,
    scaled by their bit depth and normalised like the labelled ones; [] when unset."""
    folder = cfg.data.unlabelled
    if folder is None:
        return []
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise DataError(f"data.unlabelled folder {folder} not found", hint="give a folder of PNG or TIFF images")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SEGMENTATION_SUFFIXES)
    if not files:
        raise DataError(f"data.unlabelled folder {folder} holds no .png or .tif images", hint="add images or remove the key")
    out = []
    for f in files:
        image, depth = read_image(f, bundle.encoding.get("mode", "L"))  # (C, *S)
        if image.shape[0] != bundle.x.shape[1] or image.ndim != bundle.x.ndim - 1:
            raise DataError(f"unlabelled image {f} is {image.ndim - 1}D with {image.shape[0]} channel(s), the labelled "
                            f"images {bundle.x.ndim - 2}D with {bundle.x.shape[1]}", hint="use images like the labelled ones")
        scaled = image.astype(np.float32) / np.float32(FULL_SCALE[depth])
        out.append(normalize_images(scaled[None], NORMALIZE)[0])
    return out


def unet_factor(cfg: RunConfig) -> int:
    """What every U-Net input side must divide by: 2 ** (levels - 1)."""
    if cfg.model.get("arch") != "unet":
        raise ConfigError(f"segmentation needs model.arch: unet, not {cfg.model.get('arch')!r}",
                          hint="set model.arch: unet (see dlforge.models.unet)")
    widths = cfg.model.get("widths") or UNetConfig.__dataclass_fields__["widths"].default
    return 2 ** (len(widths) - 1)


def object_extent(masks: np.ndarray, train: np.ndarray | None = None) -> tuple[float, ...] | None:
    """Median bounding-box side of the foreground objects (connected components), per axis,
    over the training region; None when there is no foreground.

    Example:
        >>> m = np.zeros((1, 20, 20), np.int64); m[0, 2:6, 2:5] = 1; m[0, 10:14, 10:17] = 1
        >>> object_extent(m)
        (4.0, 5.0)
    """
    from scipy import ndimage

    sides = []
    for i, mask in enumerate(masks):
        fg = mask > 0 if train is None else (mask > 0) & train[i]
        labels, _ = ndimage.label(fg)
        sides += [[s.stop - s.start for s in box] for box in ndimage.find_objects(labels) if box is not None]
    return tuple(float(v) for v in np.median(np.array(sides), axis=0)) if sides else None


def choose_patch(d: DataConfig, spatial: tuple[int, ...], factor: int,
                 extent: tuple[float, ...] | None = None) -> tuple[int, ...]:
    """``data.patch`` checked, or chosen from the data as nnU-Net plans do: about
    :data:`OBJECTS_ACROSS` median objects (``extent``) per side (square in 2D, the longer
    side), within :data:`PATCH_RANGE`, capped by the image, rounded up to a multiple of ``factor``.

    Example:
        >>> choose_patch(DataConfig(source="x"), (100, 300), 8)
        (96, 128)
        >>> choose_patch(DataConfig(source="x"), (512, 512), 8, extent=(14.0, 15.0))
        (64, 64)
    """
    dims = len(spatial)
    if d.patch is not None:
        if len(d.patch) != dims:
            raise ConfigError(f"data.patch {d.patch} has {len(d.patch)} sides, the images {dims}",
                              hint=f"give {dims} sides, e.g. {[DEFAULT_PATCH[dims]] * dims}")
        bad = [p for p in d.patch if p < 1 or p % factor]
        if bad:
            raise ConfigError(f"data.patch {d.patch}: every side must be a positive multiple of {factor}, "
                              "which the U-Net's levels halve", hint=f"e.g. {[max(factor, p - p % factor) for p in d.patch]}")
        return tuple(d.patch)
    low, high = PATCH_RANGE.get(dims, (32, 64))
    if extent is None:
        sides = [DEFAULT_PATCH.get(dims, 64)] * dims
    else:
        extent = (max(extent),) * dims if dims == 2 else extent  # square in 2D: rotations keep the patch
        sides = [min(max(OBJECTS_ACROSS * e, low), high) for e in extent]
        sides = [int(-(-side // factor) * factor) for side in sides]  # round up to the U-Net's factor
    return tuple(max(factor, min(side, s - s % factor)) for side, s in zip(sides, spatial))


def fit_to_region(patch: tuple[int, ...], train: np.ndarray, factor: int) -> tuple[int, ...]:
    """``patch`` cut to fit wholly inside the training region (N, *S) of some image: each side
    capped by the region's bounding box (rounded down to ``factor``), then, for a region that
    is not a box (an L around a held-out quadrant), the longest side shrunk by ``factor`` at a
    time. As it is when it already fits or cannot shrink further (the patch sampler then says
    what to change).

    Example:
        >>> train = np.zeros((1, 61, 57), bool); train[0, :27] = True  # a band of 27 rows
        >>> fit_to_region((48, 40), train, 8)
        (24, 40)
    """
    boxes = [[int(np.ptp(idx)) + 1 for idx in np.nonzero(t)] for t in train if t.any()]  # per image: box sides
    if boxes:
        room = [max(b[a] for b in boxes) for a in range(len(patch))]
        sides = [min(p, max(factor, r - r % factor)) for p, r in zip(patch, room)]
    else:
        sides = list(patch)
    while not any(valid_starts(t, tuple(sides)).any() for t in train):
        axis = max(range(len(sides)), key=lambda a: sides[a])
        if sides[axis] <= factor:
            break
        sides[axis] -= factor
    return tuple(sides)


def _trimmed(crops: list[tuple[np.ndarray, np.ndarray]], factor: int) -> TensorDataset | None:
    """Held-out crops as one TensorDataset, sides trimmed to multiples of ``factor``."""
    if not crops:
        return None
    sizes = crops[0][1].shape
    keep = tuple(slice(0, max(factor, s - s % factor)) for s in sizes)
    if any(s < factor for s in sizes):
        return None  # too thin to run through the U-Net: scored by sliding windows only
    x = np.stack([c[0][(slice(None), *keep)] for c in crops])  # (n, C, *trimmed)
    y = np.stack([c[1][keep] for c in crops])  # (n, *trimmed)
    return TensorDataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y)))


def load_segmentation(cfg: RunConfig) -> SegPrepared:
    """Load, normalise and split the configured segmentation data (see the module doc)."""
    d = cfg.data
    bundle = load_seg_bundle(cfg)
    regions = spatial_split(bundle.y.shape, val=d.split.val, test=d.split.test, gap=d.gap, seed=cfg.data_seed)
    return seg_prepared(cfg, bundle, regions)


def seg_prepared(cfg: RunConfig, bundle: SegmentationBundle, regions: RegionSplit) -> SegPrepared:
    """Patches of ``regions.train`` and crops of its held-out boxes (a split, or a fold)."""
    d = cfg.data
    factor = unet_factor(cfg)
    spatial = tuple(bundle.y.shape[1:])
    patch = choose_patch(d, spatial, factor, None if d.patch else object_extent(bundle.y, regions.train))
    if d.patch is None:  # a chosen patch must also fit the training region, not only the image
        patch = fit_to_region(patch, regions.train, factor)
    length = d.patches_per_epoch or DEFAULT_BATCHES_PER_EPOCH * cfg.train.batch_size
    train = PatchDataset(bundle.x, bundle.y, regions.train, patch, length=length, foreground=d.foreground)
    prepared = SegPrepared(
        name=bundle.name, task="segmentation", kind="segmentation", train=train,
        val=None, test=None, class_names=list(bundle.class_names), feature_names=None,
        input_shape=(bundle.x.shape[1], *patch), num_outputs=len(bundle.class_names),
        preprocessing={"encoding": {**bundle.encoding, "window": list(patch), "spatial_dims": len(spatial)},
                       "standardize": None},
        notes=[*bundle.notes, regions.describe(), f"training: {train!r}" + ("" if d.patch else
               " (patch chosen from the median object size; set data.patch to choose it)")],
        bundle=bundle, regions=regions, patch=patch,
    )
    prepared.val = _trimmed([prepared.crop(b)[:2] for b in regions.val], factor)
    prepared.test = _trimmed([prepared.crop(b)[:2] for b in regions.test], factor)
    return prepared
