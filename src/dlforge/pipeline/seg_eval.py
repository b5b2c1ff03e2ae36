"""Scoring a segmentation model on held-out regions, as ``dlforge train`` and ``cv`` do.

Each held-out box (a whole image, a band or a quadrant; :mod:`dlforge.data.seg_regions`)
is predicted whole with sliding windows of the training patch and Gaussian blending
(:func:`dlforge.models.sliding_window.sliding_window_segment`, bounded memory), post-processed when the
validation regions said it helps (nnU-Net's rule,
:func:`dlforge.evaluate.seg_postprocess.choose_postprocessing`), and scored with Dice,
IoU, HD95, AP@0.5 and the DSB score against the truth (per-object ids when the set has
them). The Otsu threshold is scored on the same boxes, the baseline a microscopist would
try first.

Example:
    >>> evaluation = evaluate_segmentation(model, prepared)  # doctest: +SKIP
    >>> evaluation["metrics"]["dice"], evaluation["baselines"]["otsu"]["dice"]  # doctest: +SKIP
    (0.88, 0.83)
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dlforge.data.seg_dataset import normalize_images
from dlforge.data.seg_postprocess import PostProcess
from dlforge.data.segmentation import load_segmentation_folder
from dlforge.data.seg_regions import Box
from dlforge.evaluate.seg_baselines import otsu_segment
from dlforge.evaluate.seg_postprocess import choose_postprocessing
from dlforge.evaluate.seg_report import overlay_png
from dlforge.evaluate.segmentation import segmentation_scores
from dlforge.models.sliding_window import fit_window, sliding_window_segment
from dlforge.pipeline.seg_data import SegPrepared
from dlforge.registry.segment import predict_label_maps

SCORE_KEYS = ("dice", "iou", "hd95", "ap50", "dsb")
MAX_OVERLAYS = 4


def predict_boxes(model: nn.Module, prepared: SegPrepared, boxes: Sequence[Box], *, overlap: float = 0.5,
                  batch_size: int = 8) -> list[np.ndarray]:
    """The label map (*box) of every box, predicted with sliding windows of the patch."""
    model.eval()
    maps = []
    for box in boxes:
        image = torch.from_numpy(np.ascontiguousarray(prepared.crop(box)[0]))  # (C, *box)
        window = fit_window(model, prepared.patch, image.shape[1:])  # no window larger than the region
        labels = sliding_window_segment(model, image, window, overlap=overlap, batch_size=batch_size)
        maps.append(labels.numpy().astype(np.int64))  # (*box)
    return maps


def score_boxes(preds: Sequence[np.ndarray], prepared: SegPrepared, boxes: Sequence[Box]) -> list[dict[str, Any]]:
    """:func:`dlforge.evaluate.segmentation.segmentation_scores` of each box."""
    rows = []
    for pred, box in zip(preds, boxes, strict=True):
        _, truth, inst = prepared.crop(box)
        s = segmentation_scores(pred[None], truth[None], prepared.num_outputs,
                                true_instances=None if inst is None else inst[None])
        rows.append({"region": box.to_dict(), **s})
    return rows


def otsu_scores(prepared: SegPrepared, boxes: Sequence[Box]) -> dict[str, Any]:
    """The Otsu threshold's mean scores on ``boxes``: the baseline beside every model score."""
    return mean_scores(score_boxes([otsu_segment(prepared.crop(b)[0]) for b in boxes], prepared, boxes))


def overlay(name: str, image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> dict[str, str]:
    """One report overlay (:func:`dlforge.evaluate.seg_report.overlay_png`), named, base64."""
    return {"name": name, "png_base64": base64.b64encode(overlay_png(image, truth, pred)).decode()}


def mean_scores(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Mean of each score over boxes (NaNs skipped; an infinite HD95 stays infinite)."""
    def mean(values: list[float]) -> float:
        arr = np.array(values, dtype=np.float64)
        arr = arr[~np.isnan(arr)]
        return float(arr.mean()) if arr.size else float("nan")

    out: dict[str, Any] = {key: mean([r[key] for r in rows]) for key in SCORE_KEYS}
    for key in ("dice", "iou", "hd95"):
        per_class = [r[f"{key}_per_class"] for r in rows if f"{key}_per_class" in r]
        if per_class:
            out[f"{key}_per_class"] = [mean(list(col)) for col in zip(*per_class)]
    return out


def evaluate_segmentation(model: nn.Module, prepared: SegPrepared, *, split: str = "test") -> dict[str, Any]:
    """Score ``split``'s regions; returns the ``evaluation.json`` of a segmentation run:
    ``metrics`` (means over regions), ``per_region``, ``baselines.otsu``, ``postprocessing``
    (what validation chose, and why) and ``overlays`` (base64 PNGs)."""
    regions = prepared.regions
    assert regions is not None
    boxes = regions.test if split == "test" else regions.val
    post, report = choose_on_validation(model, prepared)
    preds = [post.apply(p) for p in predict_boxes(model, prepared, boxes)]
    rows = score_boxes(preds, prepared, boxes)
    overlays = [overlay(f"image {box.index} {_where(box)}", *prepared.crop(box)[:2], pred)
                for box, pred in list(zip(boxes, preds))[:MAX_OVERLAYS]]
    return {
        "split": split, "task": "segmentation", "class_names": prepared.class_names,
        "metrics": mean_scores(rows), "per_region": rows,
        "baselines": {"otsu": {**otsu_scores(prepared, boxes), "note": "Otsu threshold of each region's channel mean"}},
        "postprocessing": report,
        "overlays": overlays,
    }


@dataclass
class SegEvaluation:
    """What ``dlforge evaluate`` prints and writes for a segmentation model: the mean
    scores (``n``: images or regions scored) and the whole ``evaluation.json`` record."""

    metrics: dict[str, float]
    record: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return self.record


def _summary(record: dict[str, Any], n: int) -> SegEvaluation:
    metrics = {k: record["metrics"][k] for k in SCORE_KEYS}
    metrics["otsu_dice"] = record["baselines"]["otsu"]["dice"]
    return SegEvaluation({**metrics, "n": float(n)}, record)


def rescore_run(model: nn.Module, prepared: SegPrepared) -> SegEvaluation:
    """A segmentation run's model on its own held-out regions (its seeded split, again)."""
    regions = prepared.regions
    assert regions is not None
    split = "test" if regions.test else "val"
    record = evaluate_segmentation(model, prepared, split=split)
    return _summary(record, len(regions.test or regions.val))


def score_folder(art: Any, data: str | Path) -> SegEvaluation:
    """A segmentation artifact on a folder of ``images/`` and ``masks/`` it has not seen:
    whole images through :meth:`Artifact.segment`'s path (sliding windows, the run's
    post-processing), scored beside the Otsu threshold, with overlays."""
    encoding = art.preprocessing.get("encoding") or {}
    bundle = load_segmentation_folder(data, color="rgb" if encoding.get("mode") == "RGB" else "grayscale",
                                      class_names=art.class_names)
    images = [torch.from_numpy(x) for x in normalize_images(bundle.x, encoding.get("normalize"))]  # (C, *S) each
    preds = predict_label_maps(art.model, images, art.preprocessing)
    rows, otsu_rows, overlays = [], [], []
    for i, (pred, image) in enumerate(zip(preds, images)):
        name = bundle.ids[i] if bundle.ids else str(i)
        rows.append({"image": name, **segmentation_scores(pred[None], bundle.y[i][None], len(bundle.class_names))})
        otsu = otsu_segment(image.numpy())
        otsu_rows.append(segmentation_scores(otsu[None], bundle.y[i][None], len(bundle.class_names)))
        if i < MAX_OVERLAYS:
            overlays.append(overlay(name, image.numpy(), bundle.y[i], pred))
    record = {"task": "segmentation", "split": "data", "data": str(data), "class_names": list(bundle.class_names),
              "metrics": mean_scores(rows), "per_image": rows,
              "baselines": {"otsu": {**mean_scores(otsu_rows), "note": "Otsu threshold of each image's channel mean"}},
              "postprocessing": {"chosen": PostProcess.from_dict(art.preprocessing.get("postprocess") or {}).name,
                                 "note": "the post-processing the run chose on its validation regions"},
              "overlays": overlays}
    return _summary(record, len(rows))


def choose_on_validation(model: nn.Module, prepared: SegPrepared) -> tuple[PostProcess, dict[str, Any]]:
    """The post-processing the validation regions say helps (none without validation),
    and the candidates' scores that decided it."""
    regions = prepared.regions
    if regions is None or not regions.val:
        spec = PostProcess()
        return spec, {"chosen": spec.name, "spec": spec.to_dict(), "candidates": [],
                      "note": "no validation regions: nothing to choose post-processing on"}
    preds = predict_boxes(model, prepared, regions.val)
    crops = [prepared.crop(b) for b in regions.val]
    instances = None if any(c[2] is None for c in crops) else [c[2] for c in crops]
    choice = choose_postprocessing(preds, [c[1] for c in crops], prepared.num_outputs, true_instances=instances)
    return choice.spec, {**choice.to_dict(), "note": f"Chosen on the {len(crops)} validation region(s)."}


def _where(box: Box) -> str:
    return "[" + ", ".join(f"{s.start}:{s.stop}" for s in box.slices) + "]"
