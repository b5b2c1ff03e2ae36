"""``dlforge runs export``: a finished run replayed into MLflow or TensorBoard reads back,
through their own readers, exactly like one logged by ``train.log_to``."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from dlforge.config import flat_config
from dlforge.cli.runs_export import runs_export
from dlforge.errors import ConfigError, DataError
from dlforge.pipeline.run import train_run
from dlforge.runs.export import export_runs
from dlforge.train.trackers import tracker_params
from tests.train.test_trackers import check_mlflow, check_tensorboard, read_history, run_config, tracked_config


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished iris run that logged to no tracker."""
    runs = tmp_path_factory.mktemp("finished") / "runs"
    return train_run(tracked_config(None, []), runs_dir=runs).run_dir


def test_export_to_mlflow_reads_back_like_log_to(finished: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    [done] = export_runs([finished], "mlflow", uri)
    assert done.to == "mlflow" and done.where.startswith(uri)
    run_id = done.where.rsplit(" ", 1)[1]
    check_mlflow(uri, run_id, read_history(finished), tracker_params(flat_config(run_config(finished))), finished.name)


def test_export_to_tensorboard_reads_back_and_refuses_to_write_twice(finished: Path, tmp_path: Path) -> None:
    [done] = export_runs([finished.name], "tensorboard", str(tmp_path / "tb"), runs_dir=finished.parent)
    assert done.where == str(tmp_path / "tb" / finished.name)
    check_tensorboard(Path(done.where), read_history(finished), tracker_params(flat_config(run_config(finished))))
    with pytest.raises(ConfigError, match="already holds TensorBoard events"):
        export_runs([finished], "tensorboard", str(tmp_path / "tb"))


def test_export_refuses_unknown_trackers_and_folders(finished: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--to names 'wandb' \(allowed: tensorboard, mlflow\)"):
        export_runs([finished], "wandb")
    with pytest.raises(DataError, match="not a run directory"):
        export_runs([tmp_path], "tensorboard", str(tmp_path / "tb"))
    with pytest.raises(ConfigError, match="could not export .* no MLflow server answers at http://127.0.0.1:9"):
        export_runs([finished], "mlflow", "http://127.0.0.1:9")


def test_the_cli_command_exports_and_reports_errors(finished: Path, tmp_path: Path) -> None:
    app = typer.Typer()
    app.callback()(lambda: None)  # a group, as `dlforge runs` mounts it
    app.command("export")(runs_export)
    runner = CliRunner()
    tb = tmp_path / "tb"
    ok = runner.invoke(app, ["export", finished.name, "--runs-dir", str(finished.parent), "--to", "tensorboard",
                             "--uri", str(tb)])
    assert ok.exit_code == 0, ok.output
    assert f"{finished.name} -> {tb / finished.name}" in ok.output
    check_tensorboard(tb / finished.name, read_history(finished), tracker_params(flat_config(run_config(finished))))
    bad = runner.invoke(app, ["export", str(finished), "--to", "wandb"])
    assert bad.exit_code == 2 and "allowed: tensorboard, mlflow" in bad.output
