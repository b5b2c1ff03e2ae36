"""Studies end to end on tiny problems: tuning beats a deliberately bad default, the
median pruner stops hopeless trials early, resume adds trials to the same study (and
refuses a different one), the grid sampler covers its grid once, a k-fold objective
equals cross_validate's mean, and the outputs (report, trials.json, best_config.yaml)
are complete and usable.

Trial runs skip their per-run HTML report (matplotlib rendering would take most of each
trial's time; that report is tested in tests/evaluate).
"""

from __future__ import annotations

import base64
import doctest
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
import yaml

import dlforge.tune.report as report_module
import dlforge.tune.study as study_module
import dlforge.tune.storage as storage_module
from dlforge.config import load_config, validate_config
from dlforge.errors import ConfigError
from dlforge.pipeline.crossval import cross_validate
from dlforge.pipeline import train_run
from dlforge.tune import PruningCallback, TuneResult, result_dict, run_tune
from dlforge.tune.study import open_storage

EPOCHS = 5
N_TRIALS = 6
BASE = {
    "name": "circles", "seed": 0,
    "data": {"source": "circles", "n_samples": 300, "noise": 0.1, "split": {"val": 0.3, "test": 0}},
    "model": {"arch": "mlp", "hidden": [16]},
    "optim": {"name": "adam", "lr": 1.0e-5},  # deliberately hopeless: barely moves in 5 epochs
    "train": {"epochs": EPOCHS, "batch_size": 32, "device": "cpu"},
}
TUNE = {
    "metric": "val_accuracy", "n_trials": N_TRIALS, "sampler": "random",
    "pruner": {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 1},
    "space": {"optim.lr": {"type": "float", "low": 1.0e-6, "high": 0.3, "log": True}},
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def no_trial_reports():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("dlforge.pipeline.run.write_report", lambda run_dir, **_: Path(run_dir) / "report.html")
        yield


def config(tune: dict | None = None, **sections) -> dict:
    raw = json.loads(json.dumps(BASE))
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    raw["tune"] = json.loads(json.dumps(tune or TUNE))
    return raw


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, no_trial_reports) -> tuple[TuneResult, Path]:
    runs = tmp_path_factory.mktemp("runs")
    return run_tune(config(), runs_dir=runs), runs


def study_of(result: TuneResult) -> optuna.Study:
    return optuna.load_study(study_name=result.study_name, storage=result.storage)


def test_tuning_beats_the_bad_default_and_the_best_config_retrains_to_its_value(tuned, tmp_path) -> None:
    result, _ = tuned
    default = train_run(validate_config(BASE), runs_dir=tmp_path)  # same seed, so the same validation split
    assert result.best_value is not None and result.best_value >= default.metrics["val_accuracy"] + 0.2
    # best_config.yaml is a plain run config: load it, train it, get the trial's number back
    best_cfg = load_config(result.out_dir / "best_config.yaml")
    assert best_cfg.optim.lr == pytest.approx(result.best_params["optim.lr"])
    retrained = train_run(best_cfg, runs_dir=tmp_path)
    torch.testing.assert_close(retrained.metrics["val_accuracy"], result.best_value)


def test_median_pruner_stops_hopeless_trials_early(tuned) -> None:
    result, _ = tuned
    assert result.n_pruned >= 1 and result.n_complete >= 3 and result.n_failed == 0
    for trial in study_of(result).trials:
        history = Path(trial.user_attrs["run_dir"]) / "history.jsonl"
        epochs = [r for r in map(json.loads, history.read_text().splitlines()) if r["type"] == "epoch"]
        assert len(epochs) == trial.user_attrs["epochs_run"] == len(trial.intermediate_values)
        if trial.state == optuna.trial.TrialState.PRUNED:
            assert 2 <= len(epochs) < EPOCHS  # n_warmup_steps=1: never cut before its second epoch
            assert trial.user_attrs["stop_reason"] == "pruned"
            assert trial.params["optim.lr"] < 1e-3  # what was cut short was the hopeless end of the range
        else:
            assert len(epochs) == EPOCHS
    # What was reported is the metric each epoch logged
    trial = next(t for t in study_of(result).trials if t.state == optuna.trial.TrialState.COMPLETE)
    epochs = [json.loads(r) for r in (Path(trial.user_attrs["run_dir"]) / "history.jsonl").read_text().splitlines()]
    reported = [r["val_accuracy"] for r in epochs if r["type"] == "epoch"]
    assert [trial.intermediate_values[i] for i in range(EPOCHS)] == reported


def test_outputs_report_trials_json_and_best_config(tuned) -> None:
    result, _ = tuned
    rows = json.loads((result.out_dir / "trials.json").read_text())
    assert [r["number"] for r in rows] == list(range(N_TRIALS))
    assert sum(r["state"] == "pruned" for r in rows) == result.n_pruned
    assert all((r["value"] is None) == (r["state"] != "complete") for r in rows)
    best_row = next(r for r in rows if r["number"] == result.best_trial)
    assert best_row["value"] == result.best_value and best_row["params"] == result.best_params

    saved = yaml.safe_load((result.out_dir / "best_config.yaml").read_text())
    assert "tune" not in saved and saved == result.best_config
    assert saved["optim"]["lr"] == result.best_params["optim.lr"]

    page = _Page()
    page.feed((result.out_dir / "report.html").read_text())
    assert page.tables["trials"] == N_TRIALS + 1  # header + one row per trial
    assert page.tables["importances"] == 2  # header + optim.lr
    assert len(page.images) >= 2  # optimisation history, importances (and learning curves)
    for src in page.images:
        assert base64.b64decode(src.removeprefix("data:image/png;base64,"))[:4] == b"\x89PNG"
    assert not any(link.startswith(("http:", "https:", "//")) for link in page.links)


class _Page(HTMLParser):
    """Counts rows per table class, collects image sources and links."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, int] = {}
        self.images: list[str] = []
        self.links: list[str] = []
        self._table: str | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("class", "")
            self.tables[self._table] = 0
        elif tag == "tr" and self._table is not None:
            self.tables[self._table] += 1
        elif tag == "img":
            self.images.append(a["src"])
        if "href" in a or (tag != "img" and "src" in a):
            self.links.append(a.get("href") or a.get("src"))

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None


def test_resume_adds_trials_to_the_same_study_and_refuses_another(tuned, tmp_path) -> None:
    result, runs = tuned
    shutil.copy(runs / "circles-tune.db", tmp_path / "circles-tune.db")  # leave the shared fixture as it was
    with pytest.raises(ConfigError, match="already exists.*--resume"):
        run_tune(config(), runs_dir=tmp_path, n_trials=1)
    # The pruner is not part of what a study optimises: a resumed study may switch to Hyperband
    resumed = run_tune(config({**TUNE, "pruner": "hyperband"}), runs_dir=tmp_path, resume=True, n_trials=2)
    trials = optuna.load_study(study_name="circles", storage=resumed.storage).trials
    assert [t.number for t in trials] == list(range(N_TRIALS + 2))
    assert resumed.n_complete + resumed.n_pruned + resumed.n_failed == N_TRIALS + 2
    assert resumed.best_value >= result.best_value  # the old trials still count

    with pytest.raises(ConfigError, match="train.epochs"):
        run_tune(config(train={"epochs": 3}), runs_dir=tmp_path, resume=True, n_trials=1)
    wider = {**TUNE, "space": {"optim.lr": {"type": "float", "low": 1.0e-6, "high": 0.5, "log": True}}}
    with pytest.raises(ConfigError, match="space.optim.lr.high"):
        run_tune(config(wider), runs_dir=tmp_path, resume=True, n_trials=1)
    with pytest.raises(ConfigError, match="no study named 'circles'"):
        run_tune(config(), runs_dir=tmp_path / "elsewhere", resume=True, n_trials=1)


def test_grid_sampler_runs_each_point_once_through_the_cli_entry_point(tmp_path, no_trial_reports) -> None:
    from typer.testing import CliRunner

    from dlforge.cli import app

    grid = {"metric": "val_loss", "sampler": "grid", "pruner": "none", "n_trials": 2, "space": {
        "optim.lr": {"type": "categorical", "choices": [0.001, 0.05]},
        "model.hidden": {"type": "categorical", "choices": [[8], [16, 16]]}}}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(config(grid, train={"epochs": 1})))
    command = ["tune", str(path), "--set", "tune.n_trials=10", "--runs-dir", str(tmp_path)]  # past the grid
    env = {"COLUMNS": "200"}
    printed = CliRunner().invoke(app, [*command, "--json"], env=env)
    assert printed.exit_code == 0, printed.output
    (line,) = printed.stdout.splitlines()  # --json: stdout is the one JSON object, the summary on stderr
    result = json.loads(line)
    out_dir = Path(result["out_dir"])
    points = [json.dumps(r["params"], sort_keys=True) for r in json.loads((out_dir / "trials.json").read_text())]
    assert result["n_complete"] == 4 and len(set(points)) == 4
    progress = [line for line in printed.stderr.splitlines() if line.startswith("trial ")]
    assert len(progress) == 4 and "model.hidden=[16, 16]" in printed.stderr  # one progress line each
    assert "4 complete, 0 pruned, 0 failed" in printed.stderr
    assert f"best_config: {out_dir / 'best_config.yaml'}" in printed.stderr.splitlines()
    stored = run_tune(config(grid, train={"epochs": 1}), runs_dir=tmp_path, resume=True, n_trials=0)
    assert json.loads(json.dumps(result_dict(stored))) == result  # the stored study, as --json printed it
    again = CliRunner().invoke(app, [*command, "--resume"], env=env)  # nothing left to run
    assert again.exit_code == 0 and "4 complete" in again.stdout and "exhausted" in again.stderr


def test_a_diverging_trial_fails_without_stopping_the_study(tmp_path, no_trial_reports) -> None:
    space = {"optim.lr": {"type": "categorical", "choices": [1.0e9, 0.05]}}
    raw = config({"metric": "val_accuracy", "sampler": "grid", "pruner": "none", "space": space},
                 optim={"name": "sgd"}, train={"epochs": 1})
    result = run_tune(raw, runs_dir=tmp_path)
    assert (result.n_failed, result.n_complete, result.best_params) == (1, 1, {"optim.lr": 0.05})
    failed = next(r for r in json.loads((result.out_dir / "trials.json").read_text()) if r["state"] == "fail")
    assert failed["stop_reason"] == "non_finite" and "diverged" in failed["failure"]


def test_k_fold_objective_is_the_cross_validation_mean(tmp_path) -> None:
    kfold = {"metric": "cv_accuracy", "k_folds": 2, "n_trials": 2, "sampler": "random",
             "space": {"optim.lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True}}}
    raw = config(kfold, data={"source": "iris", "split": {"val": 0, "test": 0}}, train={"epochs": 2})
    raw["data"].pop("n_samples"), raw["data"].pop("noise")
    result = run_tune(raw, runs_dir=tmp_path)
    assert result.n_complete == 2 and not (tmp_path / "circles-trials").exists()  # no run directories
    for trial in optuna.load_study(study_name="circles", storage=result.storage).trials:
        reference = cross_validate(validate_config(trial.user_attrs["config"]), k=2)
        assert trial.value == pytest.approx(reference.mean["accuracy"])
        assert trial.intermediate_values == {}  # nothing to prune on


def test_an_invalid_model_value_fails_before_the_study_exists(tmp_path) -> None:
    bad = {"metric": "val_loss", "space": {"model.dropout": {"type": "float", "low": 0.0, "high": 1.5}}}
    with pytest.raises(ConfigError, match=r"tune.space.model.dropout: the value 1.5 makes an invalid model"):
        run_tune(config(bad), runs_dir=tmp_path)
    assert not list(tmp_path.iterdir())  # no database, no run directory
    with pytest.raises(ConfigError, match="data.split.test is 0"):
        run_tune(config({**TUNE, "metric": "test_accuracy"}), runs_dir=tmp_path)


def test_storage_errors_say_what_to_do() -> None:
    with pytest.raises(ConfigError, match="not a SQLAlchemy database URL"):
        open_storage("runs/study.db")
    with pytest.raises(ConfigError) as info:  # no PostgreSQL driver here, or no server
        open_storage("postgresql://tuner:secret@127.0.0.1:1/studies")
    assert "tuner:***@" in str(info.value) and "secret" not in str(info.value)


def test_pruning_callback_reports_and_stops() -> None:
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    good = study.ask()
    for epoch, value in enumerate([0.8, 0.9]):
        good.report(value, epoch)
    study.tell(good, 0.9)

    state = SimpleNamespace(epoch=0, should_stop=False, stop_reason=None)
    callback = PruningCallback(study.ask(), "val_accuracy", "maximize")
    callback.on_validation_end(state, {"val_accuracy": 0.1, "val_loss": 2.0})
    assert state.should_stop and state.stop_reason == "pruned" and callback.pruned_at == 0
    # A metric known only after training (val_f1_macro) prunes on val_loss, turned to "higher is better"
    assert PruningCallback(study.ask(), "val_f1_macro", "maximize").intermediate({"val_loss": 2.0}) == -2.0
    assert PruningCallback(study.ask(), "test_rmse", "minimize").intermediate({"val_loss": 2.0}) == 2.0
    assert PruningCallback(study.ask(), "val_loss", "minimize").intermediate({"train_loss": 1.0}) is None


def test_doctests() -> None:
    for module in (study_module, storage_module, report_module):
        assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0
