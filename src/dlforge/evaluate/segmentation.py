"""Segmentation metrics: Dice, IoU and HD95 per class, and instance AP and DSB score.

Inputs are class-index maps, never logits: ``pred`` and ``truth`` are integer tensors or
arrays of shape (B, H, W) for 2D or (B, D, H, W) for 3D, with values in
``[0, num_classes)``. Take ``logits.argmax(dim=1)`` first.

Empty-mask convention (one for the whole module; MONAI's ``ignore_empty=False``): for a
class absent from the truth, Dice and IoU are 1.0 when the prediction is empty as well
and 0.0 when it is not, so a false positive on an empty image is penalised instead of
silently dropped. HD95 is NaN when a class is in neither mask (as MONAI's
``HausdorffDistanceMetric``) and ``inf`` when it is in exactly one: a missed or invented
class is the worst boundary error, not a value to skip (MONAI 1.6.1 returns NaN there).

Instance metrics label connected components (:func:`label_instances`) and match
predicted and true objects by IoU, as the 2018 Data Science Bowl (DSB) did.

Example:
    >>> import torch
    >>> truth = torch.zeros(1, 8, 8, dtype=torch.long); truth[0, 2:6, 2:6] = 1
    >>> scores = segmentation_scores(truth.clone(), truth, num_classes=2)
    >>> scores["dice"], scores["hd95"], scores["ap50"]
    (1.0, 0.0, 1.0)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dlforge.errors import ConfigError, DataError

# The DSB score's thresholds 0.5, 0.55, ..., 0.95; rounded so that 0.6 is the float 0.6.
DSB_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


def _as_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _check_maps(pred, truth, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Validated (B, *spatial) int64 copies of ``pred`` and ``truth``."""
    pred, truth = _as_numpy(pred), _as_numpy(truth)
    if num_classes < 1:
        raise ConfigError(f"num_classes must be at least 1, got {num_classes}.")
    if pred.shape != truth.shape:
        raise DataError(
            f"prediction shape {pred.shape} differs from truth shape {truth.shape}; pass "
            "class-index maps of the same (B, H, W) or (B, D, H, W) shape "
            "(take logits.argmax(dim=1) first).")
    if pred.ndim not in (3, 4):
        raise DataError(
            f"class-index maps must be (B, H, W) or (B, D, H, W), got shape {pred.shape}; "
            "add a batch dimension with x[None] for a single image.")
    for name, x in (("prediction", pred), ("truth", truth)):
        if not (np.issubdtype(x.dtype, np.integer) or x.dtype == bool):
            raise DataError(f"{name} has dtype {x.dtype}; pass integer class indices, "
                            "not probabilities (take argmax over the class dimension).")
        if x.size and (x.min() < 0 or x.max() >= num_classes):
            raise DataError(f"{name} holds class {int(x.min() if x.min() < 0 else x.max())}, "
                            f"outside [0, {num_classes}); check num_classes.")
    return pred.astype(np.int64), truth.astype(np.int64)


def _overlaps(pred: np.ndarray, truth: np.ndarray, num_classes: int):
    """Per image and class: intersection, truth area and prediction area, each (B, C)."""
    b = pred.shape[0]
    joint = (truth.reshape(b, -1) * num_classes + pred.reshape(b, -1))  # (B, N)
    confusion = np.stack([np.bincount(row, minlength=num_classes ** 2) for row in joint])
    confusion = confusion.reshape(b, num_classes, num_classes)  # (B, C_true, C_pred)
    inter = np.diagonal(confusion, axis1=1, axis2=2).astype(np.float64)
    return inter, confusion.sum(axis=2).astype(np.float64), confusion.sum(axis=1).astype(np.float64)


def _with_empty_convention(score: np.ndarray, truth_area: np.ndarray,
                           pred_area: np.ndarray) -> torch.Tensor:
    empty_truth = truth_area == 0
    score = np.where(empty_truth, (pred_area == 0).astype(np.float64), score)
    return torch.from_numpy(score)


def dice_per_class(pred, truth, num_classes: int) -> torch.Tensor:
    """Dice 2|P∩T| / (|P| + |T|) per image and class, a float64 tensor (B, C).

    A class absent from the truth scores 1.0 if also absent from the prediction, else
    0.0 (MONAI's ``DiceMetric(ignore_empty=False)``).

    Example:
        >>> pred = torch.tensor([[[0, 1], [1, 1]]]); truth = torch.tensor([[[0, 1], [0, 1]]])
        >>> dice_per_class(pred, truth, num_classes=2)
        tensor([[0.6667, 0.8000]], dtype=torch.float64)
    """
    pred, truth = _check_maps(pred, truth, num_classes)
    inter, t_area, p_area = _overlaps(pred, truth, num_classes)
    with np.errstate(divide="ignore", invalid="ignore"):
        return _with_empty_convention(2 * inter / (t_area + p_area), t_area, p_area)


def iou_per_class(pred, truth, num_classes: int) -> torch.Tensor:
    """IoU (Jaccard) |P∩T| / |P∪T| per image and class, a float64 tensor (B, C).

    Same empty convention as :func:`dice_per_class` (MONAI's ``MeanIoU(ignore_empty=False)``).

    Example:
        >>> pred = torch.tensor([[[0, 1], [1, 1]]]); truth = torch.tensor([[[0, 1], [0, 1]]])
        >>> iou_per_class(pred, truth, num_classes=2)
        tensor([[0.5000, 0.6667]], dtype=torch.float64)
    """
    pred, truth = _check_maps(pred, truth, num_classes)
    inter, t_area, p_area = _overlaps(pred, truth, num_classes)
    with np.errstate(divide="ignore", invalid="ignore"):
        return _with_empty_convention(inter / (t_area + p_area - inter), t_area, p_area)


def _boundary(mask: np.ndarray) -> np.ndarray:
    # Pixels of the mask with a background neighbour (the image border counts as
    # background), the same edges as MONAI's get_mask_edges.
    from scipy import ndimage  # scipy loads with the first segmentation score, not with dlforge.evaluate

    return mask ^ ndimage.binary_erosion(mask)


def _hd(pred_mask: np.ndarray, true_mask: np.ndarray, percentile: float,
        spacing: Sequence[float] | None) -> float:
    edge_p, edge_t = _boundary(pred_mask), _boundary(true_mask)
    if not edge_p.any() and not edge_t.any():
        return float("nan")
    if not edge_p.any() or not edge_t.any():
        return float("inf")
    # Crop to the edges' bounding box: every nearest edge pixel lies inside it.
    both = np.argwhere(edge_p | edge_t)
    box = tuple(slice(lo, hi + 1) for lo, hi in zip(both.min(0), both.max(0), strict=True))
    edge_p, edge_t = edge_p[box], edge_t[box]
    from scipy import ndimage

    to_truth = ndimage.distance_transform_edt(~edge_t, sampling=spacing)[edge_p]
    to_pred = ndimage.distance_transform_edt(~edge_p, sampling=spacing)[edge_t]
    return float(max(np.percentile(to_truth, percentile), np.percentile(to_pred, percentile)))


def hd95_per_class(pred, truth, num_classes: int, percentile: float = 95.0,
                   spacing: Sequence[float] | None = None) -> torch.Tensor:
    """Symmetric 95th-percentile Hausdorff distance per image and class, float64 (B, C).

    The distances from each predicted boundary pixel to the nearest true boundary pixel,
    and back, via Euclidean distance transforms; the larger of the two percentiles. In
    pixels, or in physical units with ``spacing`` (one value per spatial dim, e.g. mm).
    NaN when the class is absent from both masks, ``inf`` when absent from one.
    Otherwise matches MONAI's ``HausdorffDistanceMetric(percentile=95)`` (which gives
    NaN, not inf, when one mask is empty).

    Example:
        >>> truth = torch.zeros(1, 9, 9, dtype=torch.long); truth[0, 2:7, 2:7] = 1
        >>> pred = torch.zeros_like(truth); pred[0, 3:6, 3:6] = 1
        >>> round(hd95_per_class(pred, truth, num_classes=2)[0, 1].item(), 3)  # corners
        1.414
    """
    pred, truth = _check_maps(pred, truth, num_classes)
    if not 0 <= percentile <= 100:
        raise ConfigError(f"percentile must be in [0, 100], got {percentile}.")
    if spacing is not None and len(spacing) != pred.ndim - 1:
        raise ConfigError(f"spacing needs one value per spatial dim ({pred.ndim - 1}), "
                          f"got {list(spacing)}.")
    out = np.empty((pred.shape[0], num_classes))  # (B, C)
    for b, c in np.ndindex(*out.shape):
        out[b, c] = _hd(pred[b] == c, truth[b] == c, percentile, spacing)
    return torch.from_numpy(out)


def label_instances(mask) -> np.ndarray:
    """Connected components of the foreground (``mask > 0``) as an instance label map.

    Face connectivity (4-neighbours in 2D, 6 in 3D), so diagonal touches split objects.
    Touching objects merge: pass a real instance annotation to the AP functions when
    you have one.

    Example:
        >>> label_instances(np.array([[1, 0, 1], [1, 0, 0]]))
        array([[1, 0, 2],
               [1, 0, 0]], dtype=int32)
    """
    from scipy import ndimage

    return ndimage.label(_as_numpy(mask) > 0)[0]


def instance_iou(pred_instances, true_instances) -> np.ndarray:
    """IoU of every true object with every predicted object, (n_true, n_pred).

    Inputs are one image's instance label maps (0 background, any positive ids).

    Example:
        >>> instance_iou(np.array([[1, 1, 0, 0]]), np.array([[1, 1, 1, 0]])).round(3)
        array([[0.667]])
    """
    pred, truth = _as_numpy(pred_instances), _as_numpy(true_instances)
    if pred.shape != truth.shape:
        raise DataError(f"predicted instances {pred.shape} and true instances "
                        f"{truth.shape} differ in shape; pass one image's label maps.")
    # Relabel ids to 0..n (0 stays background) so that the joint histogram is dense.
    _, p_idx = np.unique(pred, return_inverse=True)
    _, t_idx = np.unique(truth, return_inverse=True)
    p_idx, t_idx = p_idx.ravel() + (pred.min() > 0), t_idx.ravel() + (truth.min() > 0)
    n_p, n_t = int(p_idx.max(initial=0)) + 1, int(t_idx.max(initial=0)) + 1
    counts = np.bincount(t_idx * n_p + p_idx, minlength=n_t * n_p).reshape(n_t, n_p)
    inter = counts[1:, 1:].astype(np.float64)  # (n_true, n_pred)
    union = counts[1:].sum(1)[:, None] + counts[:, 1:].sum(0)[None] - inter
    return inter / union


def _ap(iou: np.ndarray, threshold: float) -> float:
    if not 0.5 <= threshold < 1:
        raise ConfigError(f"IoU threshold must be in [0.5, 1), got {threshold}; below 0.5 "
                          "one object could match several and the count is ambiguous.")
    n_true, n_pred = iou.shape
    tp = int((iou > threshold).sum())  # unique matches: IoU > 0.5 pairs at most one each
    denominator = tp + (n_pred - tp) + (n_true - tp)
    return 1.0 if denominator == 0 else tp / denominator


def average_precision(pred_instances, true_instances, iou_threshold: float = 0.5) -> float:
    """DSB average precision TP / (TP + FP + FN) at one IoU threshold, for one image.

    A predicted and a true object match when their IoU exceeds ``iou_threshold``
    (strictly, in [0.5, 1)). An image with no objects in truth or prediction scores 1.0.

    Example:
        >>> truth = np.array([[1, 1, 0, 2, 2]]); pred = np.array([[1, 1, 0, 0, 3]])
        >>> round(average_precision(pred, truth), 3)  # object 3 has IoU 0.5, not above
        0.333
    """
    return _ap(instance_iou(pred_instances, true_instances), iou_threshold)


def dsb_score(pred_instances, true_instances,
              thresholds: Sequence[float] = DSB_THRESHOLDS) -> float:
    """The Data Science Bowl 2018 score: AP averaged over IoU thresholds 0.5:0.05:0.95.

    Example:
        >>> truth = np.array([[1, 1, 1, 1, 0]]); pred = np.array([[1, 1, 1, 0, 0]])
        >>> dsb_score(pred, truth)  # IoU 0.75 clears 0.5..0.7: 5 of 10 thresholds
        0.5
    """
    iou = instance_iou(pred_instances, true_instances)
    return float(np.mean([_ap(iou, t) for t in thresholds]))


def _mean(x: np.ndarray) -> float:
    # Mean over the defined (non-NaN) values; NaN when none is defined, inf if any is inf.
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


def segmentation_scores(pred, truth, num_classes: int, true_instances=None) -> dict:
    """Summary of a batch: Dice, IoU and HD95 per class and over foreground, AP@0.5, DSB.

    ``dice``, ``iou`` and ``hd95`` average classes 1..C-1 over images (NaN HD95s, where
    a class is in neither mask, are skipped; an ``inf`` one makes the mean ``inf``);
    ``*_per_class`` lists hold every class, background first. ``ap50`` and ``dsb`` are
    per-image instance scores on the connected components of the foreground (all
    non-zero classes together), averaged over images; ``true_instances`` (B, *S), when
    the truth has per-object ids (touching nuclei are separate objects there), replaces
    the truth's connected components.

    Example:
        >>> truth = torch.zeros(1, 8, 8, dtype=torch.long); truth[0, 1:4, 1:4] = 1
        >>> pred = torch.zeros_like(truth); pred[0, 1:4, 1:3] = 1
        >>> s = segmentation_scores(pred, truth, num_classes=2)
        >>> round(s["dice"], 3), s["ap50"], round(s["dsb"], 2)
        (0.8, 1.0, 0.4)
    """
    pred, truth = _check_maps(pred, truth, num_classes)
    scores = {"dice": dice_per_class(pred, truth, num_classes).numpy(),
              "iou": iou_per_class(pred, truth, num_classes).numpy(),
              "hd95": hd95_per_class(pred, truth, num_classes).numpy()}
    out = {}
    for name, per_image in scores.items():  # (B, C)
        out[name] = _mean(per_image[:, 1:].ravel()) if num_classes > 1 else float("nan")
        out[f"{name}_per_class"] = [_mean(per_image[:, c]) for c in range(num_classes)]
    truths = [label_instances(t) for t in truth] if true_instances is None else list(_as_numpy(true_instances))
    ious = [instance_iou(label_instances(p), t) for p, t in zip(pred, truths, strict=True)]
    out["ap50"] = float(np.mean([_ap(iou, 0.5) for iou in ious]))
    out["dsb"] = float(np.mean([np.mean([_ap(iou, t) for t in DSB_THRESHOLDS]) for iou in ious]))
    return out
