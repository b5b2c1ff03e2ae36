"""Evaluation: metrics on torchmetrics, evaluate(model, data), cross-validation, and the
HTML run report (:mod:`dlforge.evaluate.report`).

Example:
    >>> from dlforge.evaluate import classification_metrics, cross_validate, evaluate
"""

from dlforge.evaluate.crossval import CVResult, cross_validate, fold_indices
from dlforge.evaluate.metrics import (
    Evaluation,
    classification_metrics,
    evaluate,
    expected_calibration_error,
    predict_outputs,
    regression_metrics,
)

__all__ = [
    "CVResult", "Evaluation", "classification_metrics", "cross_validate", "evaluate",
    "expected_calibration_error", "fold_indices", "predict_outputs", "regression_metrics",
]
