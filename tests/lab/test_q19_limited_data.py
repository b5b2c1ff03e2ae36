"""Topic 19 at the quick budget: n = 100 digits, five remedies and a learning curve of the gap."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from dlforge.lab import q19_limited_data as q19
from dlforge.train import fit
from dlforge.train.batches import epoch_permutation

from .cache import finding_for

MODELS = ["baseline", *q19.REMEDIES]


@pytest.fixture(scope="module")
def numbers() -> dict:
    return finding_for(19).numbers


def test_sizes_are_as_configured(numbers):
    cfg = q19.BUDGETS["quick"]
    assert numbers["n"] == cfg["n"] and "seeds" not in cfg  # the lab's runner does the seeds
    assert numbers["curve_sizes"] == cfg["sizes"] and cfg["n"] in cfg["sizes"]
    assert numbers["updates"] == cfg["epochs"] * q19.VISITS // q19.BATCH_SIZE
    assert numbers["test_size"] + numbers["unlabelled"] + numbers["n"] == 1797  # digits, split once
    assert numbers["gap_steps"] == len(cfg["sizes"]) - 1


def test_accuracies_and_gaps_are_consistent(numbers):
    for name in MODELS:
        train, test = numbers[f"{name}_train_accuracy"], numbers[f"{name}_test_accuracy"]
        assert 0.0 <= train <= 1.0 and 0.0 <= test <= 1.0
        assert numbers[f"{name}_gap"] == pytest.approx(train - test, abs=3e-4)  # roundings, then means
    f = finding_for(19)
    for name in q19.REMEDIES:
        gain = numbers[f"{name}_test_accuracy"] - numbers["baseline_test_accuracy"]
        assert numbers[f"{name}_gain"] == pytest.approx(gain, abs=3e-4)
        per_seed = f.per_seed[f"{name}_gain"]  # paired on the seed: never equal on every seed
        assert len(per_seed) == len(f.seeds) and f.intervals[f"{name}_gain"].n == len(f.seeds)
        assert numbers[f"{name}_gain"] == pytest.approx(sum(per_seed) / len(per_seed), abs=1e-4)


def test_the_remedy_count_follows_from_each_seeds_gains(numbers):
    f = finding_for(19)
    counts = f.per_seed.get("remedies_beating_baseline", [numbers["remedies_beating_baseline"]] * len(f.seeds))
    for i, count in enumerate(counts):
        assert count == sum(f.per_seed[f"{n}_gain"][i] >= numbers["min_gain"] for n in q19.REMEDIES)
    # the first seed's list of winners is kept as it is (a list of names cannot be averaged)
    assert len(numbers["remedies_that_beat"]) == counts[0]


def test_each_remedy_is_checked_on_its_own_gain(numbers):
    checks = {c.number: c for c in finding_for(19).checks}
    assert (checks["gap_shrinkage"].op, checks["gap_shrinkage"].threshold) == (">", 0.0)
    for name in q19.REMEDIES:
        assert checks[f"{name}_gain"].op == ">=" and checks[f"{name}_gain"].threshold == q19.MIN_GAIN
    # pseudo-labelling brings new images and gains on average; transfer from rotations loses
    assert numbers["pseudo_labels_gain"] > 0 > numbers["transfer_gain"]


def test_learning_curve_is_consistent_and_its_n100_point_is_the_baseline(numbers):
    sizes = numbers["curve_sizes"]
    train, test, gap = (numbers[k] for k in ("curve_train_accuracy", "curve_test_accuracy", "curve_gap"))
    assert len(train) == len(test) == len(gap) == len(sizes)
    for a, b, g in zip(train, test, gap):
        assert 0.0 <= b <= 1.0 and g == pytest.approx(a - b, abs=2e-4)
    at_n = sizes.index(numbers["n"])
    assert test[at_n] == numbers["baseline_test_accuracy"] and gap[at_n] == numbers["baseline_gap"]
    assert numbers["gap_at_smallest_n"] == gap[0] and numbers["gap_at_largest_n"] == gap[-1]
    assert 0 <= numbers["gap_steps_shrinking"] <= numbers["gap_steps"]  # a mean of per-seed counts
    assert numbers["gap_shrinkage"] == pytest.approx(gap[0] - gap[-1], abs=3e-4)
    assert gap[-1] < gap[0]  # the averaged curve shrinks end to end


def test_pseudo_labels_and_transfer_did_what_they_say(numbers):
    assert 0 < numbers["pseudo_labels_added"] <= numbers["unlabelled"]
    assert 0.0 <= numbers["pseudo_label_accuracy"] <= 1.0
    assert numbers["pretext_test_accuracy"] > 0.5  # rotation: chance is 0.25
    assert numbers["transferred_tensors"] == 12  # conv weight + 5 batch-norm tensors, two blocks
    assert numbers["smaller_model_params"] < numbers["baseline_params"] / 3


def test_fixed_visits_is_fits_own_order_at_n_equal_visits():
    order = q19.fixed_visits(100)
    for seed, epoch in ((0, 0), (3, 7)):
        assert torch.equal(order(100, seed, epoch), epoch_permutation(100, seed, epoch))
    small = order(30, 1, 2)  # fewer samples than visits: whole permutations back to back
    assert len(small) == 100 and torch.bincount(small, minlength=30).min() >= 3
    big = order(400, 1, 2)
    assert len(big) == 100 and len(set(big.tolist())) == 100  # no repeats when it can avoid them


def test_every_training_set_size_gets_the_same_number_of_updates():
    model = torch.nn.Linear(3, 2)
    steps = []
    for n in (30, 100, 400):
        data = TensorDataset(torch.randn(n, 3), torch.randint(0, 2, (n,)))
        steps.append(fit(model, data, epochs=3, batch_size=q19.BATCH_SIZE, optim="sgd", device="cpu",
                         order=q19.fixed_visits(q19.VISITS)).steps)
    assert steps == [3 * q19.VISITS // q19.BATCH_SIZE] * 3


def test_rotation_task_matches_numpy_rot90():
    x = torch.randn(5, 1, 8, 8)
    images, labels = q19.rotation_task(x).tensors
    assert labels.tolist() == [k for k in range(4) for _ in range(5)]
    for k in range(4):
        ref = np.rot90(x.numpy(), k, axes=(2, 3)).copy()
        torch.testing.assert_close(images[5 * k:5 * (k + 1)], torch.from_numpy(ref))
