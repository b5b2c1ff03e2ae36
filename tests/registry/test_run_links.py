"""A registry version knows the run that produced it (issue 19, "links").

A real two-epoch iris run writes its directory's name into model.json (``training.run``);
registering its ``model/`` copies it into the version's metadata under ``"run"`` (the key the
run index looks versions up by); a compressed variant keeps its source run; ``dlforge registry
show`` and ``list`` print it. Artifacts saved outside a run register as before, with no ``run``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from dlforge.config import validate_config
from dlforge.errors import RegistryError
from dlforge.models import build
from dlforge.pipeline.compression import compress_run
from dlforge.pipeline.run import RunOutcome, train_run
from dlforge.registry import Registry, save_artifact
from dlforge.registry.versions import run_of
from dlforge.cli.registry import registry_app

cli = typer.Typer()
cli.add_typer(registry_app, name="registry")


def train_tiny_iris(runs_dir: Path) -> RunOutcome:
    """Two epochs of a small MLP on iris: a real run directory in a few seconds."""
    cfg = validate_config({"name": "iris", "data": {"source": "iris"}, "model": {"arch": "mlp", "hidden": [8]},
                           "train": {"epochs": 2}})
    return train_run(cfg, runs_dir=runs_dir)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> RunOutcome:
    return train_tiny_iris(tmp_path_factory.mktemp("runs"))


@pytest.fixture
def reg(tmp_path: Path):
    with Registry(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "store") as registry:
        yield registry


def test_a_run_records_its_name_and_registering_copies_it(run: RunOutcome, reg: Registry) -> None:
    meta = json.loads((run.artifact_dir / "model.json").read_text())
    assert meta["training"]["run"] == run.run_dir.name == run_of(meta)
    mv = reg.register(run.artifact_dir, "iris", metadata={"owner": "ml"})
    assert mv.metadata["run"] == run.run_dir.name == mv.run and mv.metadata["owner"] == "ml"
    assert reg.get("iris").metadata["run"] == run.run_dir.name  # read back from the database
    assert reg.register(run.run_dir, "iris").run == run.run_dir.name  # a run directory registers its model/
    assert reg.models()[0]["latest_run"] == run.run_dir.name


def test_an_artifact_saved_outside_a_run_has_no_run(tmp_path: Path, reg: Registry) -> None:
    folder = save_artifact(build({"arch": "mlp", "hidden": [4]}, input_shape=(4,), num_outputs=3), tmp_path / "m",
                           task="classification", class_names=["a", "b", "c"])
    mv = reg.register(folder, "plain")
    assert "run" not in mv.metadata and mv.run is None and reg.models()[0]["latest_run"] is None


def test_a_caller_cannot_set_the_run(run: RunOutcome, reg: Registry) -> None:
    with pytest.raises(RegistryError, match=r"\['run'\] are taken from model.json"):
        reg.register(run.artifact_dir, "iris", metadata={"run": "someone-else"})
    assert reg.models() == []  # nothing was stored


def test_a_compressed_variant_keeps_its_source_run(run: RunOutcome, reg: Registry, tmp_path: Path) -> None:
    variant = compress_run(run.run_dir, "quantize-dynamic", out=tmp_path / "int8")
    assert reg.register(variant, "iris-int8").run == run.run_dir.name


def test_registry_show_and_list_print_the_run(run: RunOutcome, tmp_path: Path) -> None:
    env = {"DLFORGE_REGISTRY": str(tmp_path / "r.db"), "DLFORGE_ARTIFACTS": str(tmp_path / "store"), "COLUMNS": "250"}
    runner = CliRunner()
    registered = runner.invoke(cli, ["registry", "register", str(run.artifact_dir), "--name", "iris"], env=env)
    assert registered.exit_code == 0 and f"from run {run.run_dir.name}" in registered.output
    shown = runner.invoke(cli, ["registry", "show", "iris"], env=env)
    assert shown.exit_code == 0 and run.run_dir.name in shown.output, shown.output
    listed = runner.invoke(cli, ["registry", "list"], env=env)
    assert listed.exit_code == 0 and run.run_dir.name in listed.output and "latest run" in listed.output
    as_json = json.loads(runner.invoke(cli, ["registry", "show", "iris", "--json"], env=env).output)
    assert as_json["versions"][0]["metadata"]["run"] == run.run_dir.name
