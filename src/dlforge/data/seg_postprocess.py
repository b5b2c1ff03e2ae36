"""Post-processing of predicted label maps: the operations and the spec a model carries.

Three operations on class-index maps (2D ``(H, W)`` or 3D ``(D, H, W)``, numpy), each per
foreground class with face connectivity (as :func:`dlforge.evaluate.segmentation.label_instances`):
:func:`remove_small_objects`, :func:`fill_holes` and :func:`keep_largest`. A
:class:`PostProcess` spec names which to apply; it round-trips through JSON so that the
artifact's ``model.json`` carries it to predict and serve time.
:func:`dlforge.evaluate.seg_postprocess.choose_postprocessing` picks the spec on held-out
predictions, as nnU-Net v2 does.

Example:
    >>> mask = np.zeros((6, 6), np.int64); mask[1:4, 1:4] = 1; mask[5, 5] = 1
    >>> int(PostProcess(remove_small=2).apply(mask)[5, 5])
    0
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from dlforge.errors import ConfigError, DataError


def check_label_map(mask) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim not in (2, 3) or not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == bool):
        raise DataError(f"post-processing takes one integer label map (H, W) or (D, H, W), got "
                        f"dtype {mask.dtype} and shape {mask.shape}",
                        hint="pass one image's class indices (logits.argmax(dim=0)), not a batch")
    return mask


def _components(mask: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Component labels of class ``c`` and each component's size (index 0 = background)."""
    from scipy import ndimage  # on demand: scipy takes a second to import, and training does not need it

    labels, _ = ndimage.label(mask == c)
    return labels, np.bincount(labels.ravel())


def remove_small_objects(mask, min_size: int) -> np.ndarray:
    """Set connected components smaller than ``min_size`` pixels to background, per class.

    Example:
        >>> remove_small_objects(np.array([[1, 1, 0, 2]]), min_size=2)
        array([[1, 1, 0, 0]])
    """
    mask = check_label_map(mask)
    if min_size < 1:
        raise ConfigError(f"min_size must be at least 1 pixel, got {min_size}.")
    out = mask.copy()
    for c in np.unique(mask)[np.unique(mask) > 0]:
        labels, sizes = _components(mask, int(c))
        small = sizes < min_size
        small[0] = False
        out[small[labels]] = 0
    return out


def fill_holes(mask) -> np.ndarray:
    """Fill background holes enclosed by one class with that class, per class.

    Only background pixels are filled: an object of another class inside a ring stays.

    Example:
        >>> ring = np.ones((3, 3), np.int64); ring[1, 1] = 0
        >>> int(fill_holes(ring)[1, 1])
        1
    """
    mask = check_label_map(mask)
    out = mask.copy()
    for c in np.unique(mask)[np.unique(mask) > 0]:
        from scipy import ndimage

        filled = ndimage.binary_fill_holes(mask == c)
        out[filled & (mask == 0)] = c
    return out


def keep_largest(mask) -> np.ndarray:
    """Keep each class's largest connected component; the others become background.

    Example:
        >>> keep_largest(np.array([[1, 1, 0, 1]]))
        array([[1, 1, 0, 0]])
    """
    mask = check_label_map(mask)
    out = mask.copy()
    for c in np.unique(mask)[np.unique(mask) > 0]:
        labels, sizes = _components(mask, int(c))
        sizes[0] = 0
        out[(labels > 0) & (labels != sizes.argmax())] = 0
    return out


@dataclass(frozen=True)
class PostProcess:
    """Which post-processing steps to apply, in the order remove_small, fill_holes, keep_largest.

    Example:
        >>> spec = PostProcess(remove_small=16, fill_holes=True)
        >>> PostProcess.from_dict(spec.to_dict()) == spec, spec.name
        (True, 'remove_small(16) + fill_holes')
    """

    remove_small: int | None = None  # minimum object size in pixels (voxels in 3D)
    fill_holes: bool = False
    keep_largest: bool = False

    def __post_init__(self) -> None:
        if self.remove_small is not None and (isinstance(self.remove_small, bool)
                                              or not isinstance(self.remove_small, int)
                                              or self.remove_small < 1):
            raise ConfigError(f"remove_small must be a whole number of pixels >= 1 or null, "
                              f"got {self.remove_small!r}.")
        for key in ("fill_holes", "keep_largest"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"{key} must be true or false, got {getattr(self, key)!r}.")

    @property
    def name(self) -> str:
        steps = ([f"remove_small({self.remove_small})"] if self.remove_small else []) + \
            (["fill_holes"] if self.fill_holes else []) + (["keep_largest"] if self.keep_largest else [])
        return " + ".join(steps) or "none"

    def apply(self, mask) -> np.ndarray:
        """The post-processed copy of one label map (H, W) or (D, H, W)."""
        out = check_label_map(mask)
        if self.remove_small:
            out = remove_small_objects(out, self.remove_small)
        if self.fill_holes:
            out = fill_holes(out)
        if self.keep_largest:
            out = keep_largest(out)
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d) -> PostProcess:
        unknown = sorted(set(d) - {"remove_small", "fill_holes", "keep_largest"})
        if unknown:
            raise ConfigError(f"unknown post-processing keys {unknown}",
                              hint="use remove_small, fill_holes and keep_largest")
        return cls(**d)
