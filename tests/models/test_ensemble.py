"""The Ensemble family: how members are combined, spec and artifact round trips, errors,
and an ensemble beating its mean member on a seeded problem."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dlforge.data import load_builtin, prepare
from dlforge.errors import ConfigError
from dlforge.models import Ensemble, build, build_mlp, from_models, spec_of
from dlforge.models import ensemble as ensemble_module
from dlforge.registry import load_artifact, save_artifact
from dlforge.train import cross_entropy, fit


def _constant(logits: list[float]) -> torch.nn.Module:
    """A linear MLP whose output is ``logits`` for any input (zero weights, set bias)."""
    model = build_mlp((3,), len(logits), hidden=())
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor(logits))
    return model


def test_average_mode_returns_log_of_mean_member_probabilities() -> None:
    torch.manual_seed(0)
    members = [build_mlp((3,), 4, hidden=(8,)) for _ in range(3)]
    ens = from_models(members)
    x = torch.randn(5, 3)
    expected = torch.stack([m(x).softmax(dim=1) for m in members]).mean(dim=0).log()  # (5, 4)
    torch.testing.assert_close(ens(x), expected)
    # so the engine's cross-entropy on the output is the NLL of the averaged probabilities
    y = torch.tensor([0, 1, 2, 3, 0])
    torch.testing.assert_close(cross_entropy(ens(x), y), F.nll_loss(expected, y))
    torch.testing.assert_close(ens.member_outputs(x), torch.stack([m(x) for m in members]))


def test_vote_mode_takes_the_majority_and_breaks_ties_by_average_probability() -> None:
    x = torch.zeros(2, 3)
    majority = from_models([_constant([2.0, 0.0, 0.0]), _constant([0.0, 1.0, 0.0]), _constant([0.0, 1.0, 0.0])],
                           mode="vote")
    shares = majority(x).exp()  # (2, 3)
    assert majority(x).argmax(dim=1).tolist() == [1, 1]  # two votes beat one confident vote
    torch.testing.assert_close(shares[0], torch.tensor([1 / 3, 2 / 3, 0.0]), atol=1e-3, rtol=0)
    # one vote each: the class with the higher average probability wins
    tie = from_models([_constant([0.0, 3.0, 0.0]), _constant([0.5, 0.0, 0.0])], mode="vote")
    assert tie(x).argmax(dim=1).tolist() == [1, 1]
    tie_other_way = from_models([_constant([0.0, 0.5, 0.0]), _constant([3.0, 0.0, 0.0])], mode="vote")
    assert tie_other_way(x).argmax(dim=1).tolist() == [0, 0]
    assert torch.isfinite(tie(x)).all()


def test_regression_members_are_averaged() -> None:
    torch.manual_seed(1)
    members = [build_mlp((3,), 2, hidden=(4,)) for _ in range(2)]
    ens = from_models(members, task="regression")
    x = torch.randn(4, 3)
    torch.testing.assert_close(ens(x), (members[0](x) + members[1](x)) / 2)


def test_spec_round_trip_rebuilds_the_same_ensemble() -> None:
    torch.manual_seed(2)
    ens = build({"arch": "ensemble", "mode": "vote",
                 "members": [{"arch": "mlp", "hidden": [8]}, {"arch": "cnn", "channels": [4]}]},
                input_shape=(1, 8, 8), num_outputs=3).eval()
    saved = json.loads(json.dumps(spec_of(ens)))  # what model.json holds
    assert saved["arch"] == "ensemble" and saved["mode"] == "vote" and len(saved["members"]) == 2
    assert saved["members"][1]["input_shape"] == [1, 8, 8]  # members are stored complete
    rebuilt = build(saved).eval()
    rebuilt.load_state_dict(ens.state_dict(), strict=True)
    assert spec_of(rebuilt) == saved
    x = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(rebuilt(x), ens(x))


def test_artifact_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(3)
    ens = from_models([build_mlp((4,), 3, hidden=(8,)), build_mlp((4,), 3, hidden=(6,), activation="gelu")]).eval()
    folder = save_artifact(ens, tmp_path / "model", task="classification", class_names=["a", "b", "c"])
    art = load_artifact(folder)
    assert isinstance(art.model, Ensemble) and art.meta["arch"] == "ensemble"
    x = torch.randn(5, 4)
    torch.testing.assert_close(art.model(x), ens(x))
    torch.testing.assert_close(art.predict(x)["probabilities"], ens(x).exp())


def test_from_models_copies_weights() -> None:
    torch.manual_seed(4)
    models = [build_mlp((4,), 2, hidden=(3,)) for _ in range(2)]
    ens = from_models(models)
    with torch.no_grad():
        ens.members[0].head.weight.add_(1.0)
    assert not torch.equal(ens.members[0].head.weight, models[0].head.weight)  # a copy, not shared
    torch.testing.assert_close(ens.members[1].head.weight, models[1].head.weight)


@pytest.mark.parametrize(("make", "match"), [
    (lambda: from_models([torch.nn.Linear(4, 2)]), "not a dlforge model"),
    (lambda: from_models([build_mlp((4,), 2), build_mlp((5,), 2)]), "same data"),
    (lambda: from_models([]), "at least one"),
    (lambda: build({"arch": "ensemble", "members": []}, input_shape=(4,), num_outputs=2), "members is empty"),
    (lambda: build({"arch": "ensemble", "members": [{"arch": "mlp"}], "mode": "median"}, input_shape=(4,),
                   num_outputs=2), "mode"),
    (lambda: build({"arch": "ensemble", "members": [{"arch": "mlp"}], "mode": "vote", "task": "regression"},
                   input_shape=(4,), num_outputs=2), "vote needs classification"),
    (lambda: build({"arch": "ensemble", "members": [{"arch": "mlp", "num_outputs": 3}]}, input_shape=(4,),
                   num_outputs=2), "num_outputs is 3"),
    (lambda: build({"arch": "ensemble", "members": [{"arch": "mlpp"}]}, input_shape=(4,), num_outputs=2),
     "unknown"),
])
def test_ensemble_errors(make, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make()


def test_an_ensemble_beats_its_mean_member_on_a_seeded_problem() -> None:
    torch.set_num_threads(1)
    prepared = prepare(load_builtin("digits"), val=0.0, test=0.3, seed=0)
    x_test, y_test = prepared.test.tensors
    members = []
    for seed in range(5):  # short training from different initialisations: members disagree
        torch.manual_seed(seed)
        member = build_mlp(prepared.input_shape, 10, hidden=(16,))
        fit(member, prepared.train, epochs=2, batch_size=64, optim={"name": "adam", "lr": 3e-3}, seed=seed,
            device="cpu")
        members.append(member.eval())
    ens = from_models(members).eval()

    def accuracy_and_log_loss(out: torch.Tensor) -> tuple[float, float]:
        return (out.argmax(1) == y_test).float().mean().item(), F.cross_entropy(out, y_test).item()

    with torch.no_grad():
        member_scores = [accuracy_and_log_loss(m(x_test)) for m in members]
        ens_accuracy, ens_log_loss = accuracy_and_log_loss(ens(x_test))
    mean_accuracy = sum(a for a, _ in member_scores) / len(members)
    mean_log_loss = sum(l for _, l in member_scores) / len(members)
    print(f"ensemble accuracy {ens_accuracy:.3f} log loss {ens_log_loss:.3f}; "
          f"mean member {mean_accuracy:.3f} / {mean_log_loss:.3f}")
    assert ens_accuracy > mean_accuracy + 0.01
    assert ens_log_loss < mean_log_loss  # always true by Jensen's inequality; a sanity check


def test_docstring_examples_run() -> None:
    result = doctest.testmod(ensemble_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
