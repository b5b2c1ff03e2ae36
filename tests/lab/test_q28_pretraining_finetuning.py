"""Topic 28 at the quick budget: MLM-pretrained encoder versus the same one from scratch."""

from __future__ import annotations

import doctest

import pytest
import torch

from dlforge.data.text import load_text_table
from dlforge.lab import _mlm
from dlforge.lab import q28_pretraining_finetuning as q28
from dlforge.lab.threads import single_thread

from .cache import finding_for


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():  # tiny models: a second thread only waits (dlforge.lab.threads)
        yield


def test_numbers_are_consistent():
    n = finding_for(28).numbers
    cfg = q28.BUDGETS["quick"]
    epochs = cfg["epochs"]
    assert n["train_examples"] == 6 * cfg["per_class"]
    assert n["val_examples"] == 6 * q28.VAL_PER_CLASS
    total = len(load_text_table("stdlib_docs"))
    assert n["train_examples"] + n["val_examples"] + n["test_examples"] == total
    for key in ("mlm_heldout_accuracy", "unigram_accuracy", "pretrained_test_accuracy",
                "scratch_test_accuracy", "majority_accuracy", "target_accuracy",
                "pretrained_probe_accuracy", "random_probe_accuracy",
                "pretrained_train_accuracy", "scratch_train_accuracy"):
        assert 0 <= n[key] <= 1
    assert n["mlm_lift"] == round(n["mlm_heldout_accuracy"] - n["unigram_accuracy"], 4)
    assert n["pretraining_gain"] == round(
        n["pretrained_test_accuracy"] - n["scratch_test_accuracy"], 4)
    assert 0 < n["gain_two_se"] < 0.2 and 0 <= n["probe_two_se"] < 0.2
    pre, scr = n["pretrained_val_curve"], n["scratch_val_curve"]
    assert len(pre) == len(scr) == epochs and all(0 <= a <= 1 for a in pre + scr)
    assert n["target_accuracy"] == max(scr)
    assert n["scratch_epochs_to_target"] == q28.epochs_to_reach(scr, max(scr)) <= epochs
    assert n["pretrained_epochs_to_target"] == q28.epochs_to_reach(pre, max(scr))
    assert 1 <= n["pretrained_epochs_to_target"] <= epochs + 1
    assert n["loaded_encoder_max_diff"] == 0.0  # the fine-tuned encoder started as the MLM's
    assert n["bert_words_over_corpus_words"] == round(3.3e9 / n["corpus_train_words"])


def test_copy_encoder_loads_the_pretrained_weights_and_leaves_the_head():
    torch.manual_seed(0)
    mlm = _mlm.tiny_bert(40, 8)
    torch.manual_seed(1)
    clf = _mlm.tiny_bert(40, 8, task_head="sequence", num_outputs=3)
    head = {k: v.clone() for k, v in clf.head.state_dict().items()}
    assert _mlm.copy_encoder(mlm, clf) == 0.0
    for key, value in mlm.bert.state_dict().items():
        torch.testing.assert_close(clf.bert.state_dict()[key], value, rtol=0, atol=0)
    for key, value in head.items():
        torch.testing.assert_close(clf.head.state_dict()[key], value, rtol=0, atol=0)
    x = torch.randint(5, 40, (2, 8))
    with torch.no_grad():  # same encoder, so the same token states
        torch.testing.assert_close(clf.eval().bert(x).last_hidden_state,
                                   mlm.eval().bert(x).last_hidden_state)


def test_epochs_to_reach():
    assert q28.epochs_to_reach([0.2, 0.5, 0.4, 0.6], 0.5) == 2
    assert q28.epochs_to_reach([0.2, 0.5], 0.2) == 1
    assert q28.epochs_to_reach([0.2, 0.3], 0.9) == 3  # never: one past the budget


def test_docstring_examples_run():
    result = doctest.testmod(q28, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
