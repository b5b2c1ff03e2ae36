"""A run from a config: data -> model -> fit -> artifact, in a run directory.

:mod:`~dlforge.pipeline.run` trains, evaluates and writes the run; :mod:`~dlforge.pipeline.evaluation`
re-evaluates a saved model on its test split or on other data; :mod:`~dlforge.pipeline.data`
turns the ``data`` section into model-ready splits (tables, images, text, time series);
:mod:`~dlforge.pipeline.model` builds the ``model`` section, from scratch or from
pretrained weights; :mod:`~dlforge.pipeline.fit_options` is the one translation of a config
into ``fit`` arguments and callbacks (``train.freeze`` included), which training,
cross-validation (:mod:`~dlforge.pipeline.crossval`), learning curves, tuning and balanced
bagging (:mod:`~dlforge.pipeline.bagging`) all use.

Example:
    >>> from dlforge.config import load_config
    >>> outcome = train_run(load_config("examples/digits_cnn.yaml"))  # doctest: +SKIP
    >>> outcome.test_metrics["test_accuracy"]  # doctest: +SKIP
    0.98
"""

from dlforge.pipeline.data import load_data
from dlforge.pipeline.model import build_model
from dlforge.pipeline.crossval import cross_validate
from dlforge.pipeline.evaluation import evaluate_path
from dlforge.pipeline.fit_options import fit_config
from dlforge.pipeline.predict import Predictions, predict_files
from dlforge.pipeline.run import RunOutcome, train_run

__all__ = ["Predictions", "RunOutcome", "build_model", "cross_validate", "evaluate_path", "fit_config", "load_data",
           "predict_files", "train_run"]
