"""Evaluation: metrics on torchmetrics, evaluate(model, data), cross-validation folds and
their summary (training the folds from a config is :mod:`dlforge.pipeline.crossval`), and
the HTML run report (:mod:`dlforge.evaluate.report`).

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

__all__ = [
    "CVResult", "Evaluation", "classification_metrics", "evaluate",
    "expected_calibration_error", "fold_indices", "predict_outputs", "regression_metrics",
]
