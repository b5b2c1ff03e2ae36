"""Evaluation: metrics on torchmetrics, evaluate(model, data), cross-validation folds and
their summary (training the folds from a config is :mod:`dlforge.pipeline.crossval`),
the HTML run report (:mod:`dlforge.evaluate.report`), and segmentation metrics
(:mod:`dlforge.evaluate.segmentation`).

Example:
    >>> from dlforge.evaluate import classification_metrics, evaluate, fold_indices
"""

from dlforge.evaluate.crossval import CVResult, fold_indices
from dlforge.evaluate.metrics import (
    Evaluation,
    classification_metrics,
    evaluate,
    expected_calibration_error,
    predict_outputs,
    regression_metrics,
)
from dlforge.evaluate.segmentation import (
    average_precision,
    dice_per_class,
    dsb_score,
    hd95_per_class,
    instance_iou,
    iou_per_class,
    label_instances,
    segmentation_scores,
)

__all__ = [
    "CVResult", "Evaluation", "average_precision", "classification_metrics",
    "dice_per_class", "dsb_score", "evaluate", "expected_calibration_error", "fold_indices",
    "hd95_per_class", "instance_iou", "iou_per_class", "label_instances", "predict_outputs",
    "regression_metrics", "segmentation_scores",
]
