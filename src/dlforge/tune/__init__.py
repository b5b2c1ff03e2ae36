"""Hyperparameter tuning: Optuna studies over run configs (``dlforge tune``).

:mod:`~dlforge.tune.space` validates the ``tune:`` section and maps its search space
onto Optuna's suggest calls; :mod:`~dlforge.tune.study` runs a study (trials are
``train_run`` calls, pruned on per-epoch validation metrics, stored in SQLite or any
SQLAlchemy database shared by many workers); :mod:`~dlforge.tune.report` writes the
HTML report with the trials table, parameter importances and optimisation history.

Example:
    >>> from dlforge.config import read_yaml
    >>> result = run_tune(read_yaml("circles_tune.yaml"), runs_dir="runs")  # doctest: +SKIP
    >>> result.best_value, result.out_dir / "best_config.yaml"  # doctest: +SKIP
    (0.97, PosixPath('runs/circles-tune/best_config.yaml'))
"""

from dlforge.tune.space import TuneConfig, parse_tune, suggest
from dlforge.tune.study import PruningCallback, TuneResult, result_dict, run_tune

__all__ = ["PruningCallback", "TuneConfig", "TuneResult", "parse_tune", "result_dict", "run_tune", "suggest"]
