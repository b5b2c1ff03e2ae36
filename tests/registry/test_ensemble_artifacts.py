"""Ensemble artifacts: three digit MLPs (different seeds, one epoch) combined into one artifact
that load_artifact, evaluate and Artifact.predict take unchanged; its probabilities are the
members' mean; it beats its mean member; mismatched members are refused with a clear error."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pytest
import torch

import dlforge.registry.ensemble as ensemble_module
from dlforge.config import RunConfig, to_yaml, validate_config
from dlforge.data import Prepared
from dlforge.errors import ArtifactError, ConfigError
from dlforge.evaluate import evaluate
from dlforge.models import build
from dlforge.pipeline import evaluate_path
from dlforge.pipeline.data import load_data
from dlforge.registry import load_artifact, save_artifact
from dlforge.pipeline.ensemble import build_ensemble
from dlforge.registry.ensemble import ensemble_artifacts, first_difference
from dlforge.train import fit, seed_everything

SEEDS = (0, 1, 2)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def digits_config(seed: int = 0) -> RunConfig:
    return validate_config({
        "name": "member", "seed": seed, "data": {"source": "digits", "split": {"val": 0.0, "test": 0.25}},
        "model": {"arch": "mlp", "hidden": [32]}, "optim": {"name": "adam", "lr": 0.01},
        "train": {"epochs": 1, "batch_size": 32, "device": "cpu"},
    })


def train_member(prepared: Prepared, seed: int) -> torch.nn.Module:
    """One epoch only: members that differ (and err differently) are what an ensemble needs."""
    seed_everything(seed)
    model = build({"arch": "mlp", "hidden": [32]}, input_shape=prepared.input_shape, num_outputs=prepared.num_outputs)
    fit(model, prepared.train, epochs=1, batch_size=32, optim={"name": "adam", "lr": 0.01}, device="cpu", seed=seed)
    return model


def save_run(model: torch.nn.Module, prepared: Prepared, run_dir: Path, cfg: RunConfig) -> Path:
    """A run directory as ``dlforge train`` lays it out: config.yaml beside model/."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    save_artifact(model, run_dir / "model", task=prepared.task, class_names=prepared.class_names,
                  preprocessing=prepared.preprocessing, metrics={"test_accuracy": 0.5}, training={"data": "digits"})
    return run_dir


@pytest.fixture(scope="module")
def digits() -> Prepared:
    return load_data(digits_config())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits) -> list[Path]:
    root = tmp_path_factory.mktemp("members")
    return [save_run(train_member(digits, s), digits, root / f"run{s}", digits_config()) for s in SEEDS]


@pytest.fixture(scope="module")
def average(tmp_path_factory, runs):
    return load_artifact(ensemble_artifacts(runs, tmp_path_factory.mktemp("ens") / "average"))


def test_ensemble_beats_its_mean_member(average, runs, digits):
    members = [evaluate(load_artifact(r), digits.test).metrics for r in runs]
    ens = evaluate(average, digits.test).metrics
    mean_accuracy = sum(m["accuracy"] for m in members) / len(members)
    mean_log_loss = sum(m["log_loss"] for m in members) / len(members)
    assert ens["accuracy"] > mean_accuracy
    assert ens["log_loss"] < mean_log_loss  # Jensen: averaging probabilities never raises log loss
    assert ens["n"] == len(digits.test)


def test_probabilities_are_the_members_mean(average, runs, digits):
    x = digits.test.tensors[0][:64]
    member_probs = torch.stack([load_artifact(r).predict(x)["probabilities"] for r in runs])  # (3, 64, 10)
    out = average.predict(x)
    torch.testing.assert_close(out["probabilities"], member_probs.mean(dim=0))
    # and against plain PyTorch, member by member from the ensemble's own copies
    with torch.no_grad():
        reference = torch.stack([m(x).softmax(dim=1) for m in average.model.members]).mean(dim=0)
    torch.testing.assert_close(out["probabilities"], reference)
    assert out["labels"] == [digits.class_names[i] for i in member_probs.mean(dim=0).argmax(dim=1).tolist()]


def test_vote_loads_evaluates_and_follows_the_majority(tmp_path, runs, digits):
    art = load_artifact(ensemble_artifacts(runs, tmp_path / "vote", mode="vote"))
    assert art.meta["spec"]["mode"] == "vote"
    x = digits.test.tensors[0]
    member_probs = torch.stack([load_artifact(r).predict(x)["probabilities"] for r in runs])  # (3, N, 10)
    votes = torch.nn.functional.one_hot(member_probs.argmax(dim=2), 10).sum(dim=0)  # (N, 10)
    top, _ = votes.max(dim=1)
    majority = top >= 2  # with 3 members a class with 2 votes is the unique winner
    predicted = art.predict(x)["indices"]
    assert majority.sum() > 0.9 * len(x)
    assert torch.equal(predicted[majority], votes.argmax(dim=1)[majority])
    # a three-way split is broken by the mean probability
    split = ~majority
    assert torch.equal(predicted[split], member_probs.mean(dim=0).argmax(dim=1)[split])
    assert evaluate(art, digits.test).metrics["accuracy"] > 0.8


def test_dlforge_evaluate_takes_it_like_any_artifact(average):
    """What ``dlforge evaluate ENSEMBLE --data digits`` runs: raw data encoded with the stored preprocessing."""
    evaluation, report = evaluate_path(average.path, data="digits")
    assert report is None and evaluation.metrics["n"] == 1797 and evaluation.metrics["accuracy"] > 0.9


def test_metadata_lists_members_and_shares_preprocessing(average, runs, digits):
    meta = average.meta
    assert meta["arch"] == "ensemble" and meta["task"] == "classification"
    assert meta["class_names"] == digits.class_names
    assert meta["preprocessing"] == json.loads(json.dumps(digits.preprocessing))
    assert meta["input_signature"]["shape"] == [None, 1, 8, 8]
    members = meta["training"]["ensemble"]["members"]
    assert [m["path"] for m in members] == [str((r / "model").resolve()) for r in runs]
    assert all(m["metrics"] == {"test_accuracy": 0.5} and m["arch"] == "mlp" for m in members)
    assert meta["training"]["ensemble"]["mode"] == "average"


def test_different_class_names_are_refused(tmp_path, runs, digits):
    model = load_artifact(runs[0]).model
    other = save_artifact(model, tmp_path / "renamed", task="classification",
                          class_names=[f"digit{i}" for i in range(10)], preprocessing=digits.preprocessing)
    with pytest.raises(ArtifactError, match=r"member 1 .* differ in class_names\[0\]: 'digit0' vs '0'") as err:
        ensemble_artifacts([runs[0], other], tmp_path / "ens")
    assert "same data config" in err.value.hint
    assert not (tmp_path / "ens").exists()


def test_different_preprocessing_is_refused(tmp_path, runs):
    other_split = load_data(digits_config(seed=1))  # another seed: another train split, other statistics
    other = save_run(train_member(other_split, 0), other_split, tmp_path / "seed1", digits_config(seed=1))
    with pytest.raises(ArtifactError, match=r"member 2 .* differ in preprocessing\.standardize\.mean\["):
        ensemble_artifacts([runs[0], runs[1], other], tmp_path / "ens")


def test_bad_requests_are_clear_errors(tmp_path, runs):
    with pytest.raises(ArtifactError, match="at least 2 members"):
        ensemble_artifacts(runs[:1], tmp_path / "one")
    with pytest.raises(ConfigError, match="mode is 'mean'"):
        ensemble_artifacts(runs, tmp_path / "mean", mode="mean")
    with pytest.raises(ArtifactError, match="model.json is missing"):
        ensemble_artifacts([runs[0], tmp_path / "nowhere"], tmp_path / "missing")


def test_regression_members_are_averaged(tmp_path):
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build({"arch": "mlp", "hidden": [8]}, input_shape=(3,), num_outputs=2)
        paths.append(save_artifact(model, tmp_path / f"r{seed}", task="regression",
                                   preprocessing={"standardize": None}))
    art = load_artifact(ensemble_artifacts(paths, tmp_path / "ens"))
    x = torch.randn(5, 3)
    expected = torch.stack([load_artifact(p).predict(x)["values"] for p in paths]).mean(dim=0)
    torch.testing.assert_close(art.predict(x)["values"], expected)
    with pytest.raises(ConfigError, match="cannot vote"):
        ensemble_artifacts(paths, tmp_path / "vote", mode="vote")


def _dlforge_ensemble(*args: object) -> str:
    """``dlforge ensemble ARGS...`` through Typer's runner: its stdout."""
    from typer.testing import CliRunner

    from dlforge.cli import app

    done = CliRunner().invoke(app, ["ensemble", *map(str, args)])
    assert done.exit_code == 0, done.output
    return done.stdout


def test_build_scores_members_and_ensemble_on_the_shared_test_split(tmp_path, runs, digits):
    outcome = build_ensemble([str(r) for r in runs], tmp_path / "ens", "average")
    assert outcome.split == "test" and len(outcome.members) == 3
    art = load_artifact(outcome.path)
    direct = evaluate(art, digits.test).metrics
    assert outcome.ensemble["accuracy"] == pytest.approx(direct["accuracy"])
    assert art.meta["metrics"]["test_accuracy"] == pytest.approx(direct["accuracy"])
    assert outcome.ensemble["accuracy"] > sum(m["accuracy"] for m in outcome.members) / 3
    with pytest.raises(ArtifactError, match="already exists"):
        build_ensemble(runs, outcome.path)
    text = _dlforge_ensemble(*runs, "--out", tmp_path / "ens-cli")  # the command prints the scores
    assert "mean member" in text and "  ensemble  " in text and str(tmp_path / "ens-cli") in text
    assert f"{direct['accuracy']:.4f}" in text.splitlines()[-1]


def test_build_scores_only_where_the_runs_are_known(tmp_path, runs):
    outcome = build_ensemble([r / "model" for r in runs[:2]] + [runs[2]], tmp_path / "ens", "vote")
    assert outcome.split == "test"  # a model/ folder inside its run directory still finds config.yaml
    bare = [save_artifact(load_artifact(r).model, tmp_path / f"bare{i}", task="classification",
                          class_names=load_artifact(r).class_names, preprocessing=load_artifact(r).preprocessing)
            for i, r in enumerate(runs[:2])]
    outcome = build_ensemble(bare, tmp_path / "ens2")
    assert outcome.split is None and outcome.ensemble == {}
    assert load_artifact(outcome.path).meta["metrics"] == {}
    text = _dlforge_ensemble(*bare, "--out", tmp_path / "ens3")
    assert "ensemble of 2 members (average)" in text and "dlforge evaluate" in text


def test_first_difference_names_the_key_path():
    assert first_difference({"a": {"b": [1, 2]}}, {"a": {"b": [1, 2]}}) is None
    assert first_difference({"a": {"b": [1, 2]}}, {"a": {"b": [1]}}, "p") == ("p.a.b (length)", 2, 1)
    assert first_difference({"a": 1}, {"b": 1}) == ("a", 1, "<missing>")


def test_docstring_examples():
    result = doctest.testmod(ensemble_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_members_that_differ_only_in_seed_are_told_to_set_data_seed(tmp_path, runs):
    """Runs that vary only ``seed`` split the data differently (data.seed defaults to it):
    the refusal says so and names the fix, not just "same data config"."""
    other_split = load_data(digits_config(seed=1))
    other = save_run(train_member(other_split, 1), other_split, tmp_path / "seed1", digits_config(seed=1))
    with pytest.raises(ArtifactError, match=r"seeds 0 and 1 and no data\.seed") as err:
        ensemble_artifacts([runs[0], other], tmp_path / "ens")
    assert "--set data.seed=0" in err.value.hint

