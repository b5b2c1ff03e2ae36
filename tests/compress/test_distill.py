"""Distillation on digits: a CNN teacher (and an ensemble teacher) teach an MLP student.

Checks the packed targets (labels and the teacher's eval-mode logits), that distillation
trains the student and logs validation metrics, that alpha=1 trains exactly like plain
``fit`` with the same seed, that a transfer set without labels is used, and the errors."""

from __future__ import annotations


import pytest
import torch
from torch.utils.data import TensorDataset

from dlforge.compress.distillation import distill, teacher_targets
from dlforge.data import load_source, prepare
from dlforge.errors import ConfigError, DataError
from dlforge.models import build, build_ensemble
from dlforge.targets import IGNORE_INDEX
from dlforge.train import fit, seed_everything

FIT = {"batch_size": 64, "optim": {"name": "adam", "lr": 0.01}, "device": "cpu", "seed": 0}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def digits():
    return prepare(load_source("digits"), val=0.15, test=0.15, seed=0)


@pytest.fixture(scope="module")
def teacher(digits):
    seed_everything(0)
    model = build({"arch": "cnn", "channels": [16]}, input_shape=(1, 8, 8), num_outputs=10)
    fit(model, digits.train, epochs=2, **FIT)
    return model


def student() -> torch.nn.Module:
    seed_everything(1)
    return build({"arch": "mlp", "hidden": [32]}, input_shape=(1, 8, 8), num_outputs=10)


def test_teacher_targets_pack_labels_and_eval_mode_logits(digits, teacher):
    teacher.train()
    packed = teacher_targets(teacher, digits.train, batch_size=100)
    x, y = digits.train.tensors
    assert torch.equal(packed.tensors[0], x)
    target = packed.tensors[1]
    assert target.shape == (len(x), 11)
    assert torch.equal(target[:, 0].long(), y)
    teacher.eval()
    with torch.no_grad():
        torch.testing.assert_close(target[:, 1:], teacher(x))
    teacher.train()
    assert teacher.training  # mode restored


def test_ensemble_teacher_log_probabilities_are_its_logits(digits):
    ens = build_ensemble((1, 8, 8), 10, [{"arch": "mlp", "hidden": [8]}] * 2)
    x = digits.val.tensors[0]
    logits = teacher_targets(ens, digits.val).tensors[1][:, 1:]
    with torch.no_grad():
        probs = torch.stack([m(x).softmax(1) for m in ens.members]).mean(0)  # the ensemble's own average
    torch.testing.assert_close(logits.softmax(1), probs)  # softmax of the output is the combined distribution


def test_distill_trains_the_student_and_logs_val_metrics(digits, teacher):
    model = student()
    before = model(digits.val.tensors[0]).detach()
    result = distill(teacher, model, digits.train, digits.val, temperature=4.0, alpha=0.1, epochs=2, **FIT)
    assert result.epochs_run == 2
    assert not torch.allclose(model(digits.val.tensors[0]), before)
    last = result.epochs[-1]
    assert {"train_loss", "val_loss", "val_accuracy"} <= set(last)
    assert last["val_accuracy"] > 0.8  # digits is easy; a broken loss stays near 0.1
    assert "train_accuracy" not in last  # packed float targets: accuracy is read on val only


def test_alpha_one_trains_exactly_like_plain_fit(digits, teacher):
    distilled, plain = student(), student()
    distill(teacher, distilled, digits.train, digits.val, temperature=4.0, alpha=1.0, epochs=2, **FIT)
    fit(plain, digits.train, digits.val, epochs=2, **FIT)
    for a, b in zip(distilled.state_dict().values(), plain.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_soft_targets_change_training(digits, teacher):
    hard, soft = student(), student()
    distill(teacher, hard, digits.train, alpha=1.0, epochs=1, **FIT)
    distill(teacher, soft, digits.train, alpha=0.1, epochs=1, **FIT)
    assert any(not torch.allclose(a, b) for a, b in zip(hard.state_dict().values(), soft.state_dict().values()))


def test_unlabelled_transfer_set_is_appended_and_learned_from(digits, teacher):
    x_test = digits.test.tensors[0]
    transfer = TensorDataset(x_test)
    packed = teacher_targets(teacher, transfer)
    assert (packed.tensors[1][:, 0] == IGNORE_INDEX).all()
    # alpha=1 ignores unlabelled rows entirely, alpha=0 learns only from them and the teacher
    model = student()
    result = distill(teacher, model, digits.train, digits.val, alpha=0.0, transfer=transfer, epochs=1, **FIT)
    n = len(digits.train) + len(x_test)
    assert result.steps == -(-n // FIT["batch_size"])  # the transfer rows were batched too


def test_errors(digits, teacher):
    with pytest.raises(ConfigError, match="loss"):
        distill(teacher, student(), digits.train, loss="mse", epochs=1, **FIT)
    with pytest.raises(ConfigError, match="alpha"):
        distill(teacher, student(), digits.train, alpha=2.0, epochs=1, **FIT)
    with pytest.raises(DataError, match="empty"):
        teacher_targets(teacher, TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(DataError, match="class-index"):
        teacher_targets(teacher, TensorDataset(torch.zeros(4, 1, 8, 8), torch.zeros(4)))


def test_docstring_examples_run():
    import doctest

    import dlforge.compress.distillation as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
