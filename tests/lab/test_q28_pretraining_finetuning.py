"""Topic 28 at the quick budget: pretraining's gain along the corpus axis, MiniLM at the far end."""

from __future__ import annotations

import doctest

import numpy as np
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


def test_numbers_are_consistent_on_every_seed():
    f = finding_for(28)
    n, cfg = f.numbers, q28.BUDGETS["quick"]
    assert len(f.seeds) == q28.SEEDS["quick"] >= 5
    assert n["train_examples"] == 6 * cfg["per_class"] == n["minilm_train_examples"]
    assert n["val_examples"] == 6 * q28.VAL_PER_CLASS
    total = len(load_text_table("stdlib_docs"))
    assert n["train_examples"] + n["val_examples"] + n["test_examples"] == total
    assert abs(n["minilm_test_examples"] - cfg["minilm_test"]) <= 6  # shares rounded per class
    k = len(q28.SLICES)
    for key in ("slice_words", "slice_mlm_accuracy", "slice_test_accuracy", "slice_gain"):
        assert len(n[key]) == k
    words = n["slice_words"]
    assert all(a < b for a, b in zip(words, words[1:])) and words[-1] <= n["corpus_train_words"]
    assert n["loaded_encoder_max_diff"] == 0.0  # every fine-tuned encoder started as its MLM's
    assert len(n["pretrained_val_curve"]) == len(n["scratch_val_curve"]) == cfg["epochs"]
    assert 1 <= n["pretrained_epochs_to_target"] <= cfg["epochs"] + 1
    assert 1 <= n["scratch_epochs_to_target"] <= cfg["epochs"]
    # every per-seed number that varied is the mean of its per-seed values, inside its interval
    for key, values in f.per_seed.items():
        assert len(values) == len(f.seeds)
        assert abs(n[key] - np.mean(values)) <= 1e-4 * max(1.0, abs(n[key])), key  # 5 digits
        iv = f.intervals[key]
        assert iv.low - 1e-9 <= n[key] <= iv.high + 1e-9


def test_gains_are_differences_and_the_slope_reads_them():
    f = finding_for(28)
    n = f.numbers
    seeds = range(len(f.seeds))
    per = {k: f.per_seed.get(k, [n[k]] * len(f.seeds)) for k in
           ("minilm_gain", "minilm_test_accuracy", "scratch_test_accuracy")}
    for i in seeds:
        assert abs(per["minilm_gain"][i] - (per["minilm_test_accuracy"][i]
                                            - per["scratch_test_accuracy"][i])) < 2e-4
    # element-wise means: the mean gain per slice is the mean slice accuracy minus scratch's
    for g, a in zip(n["slice_gain"], n["slice_test_accuracy"]):
        assert abs(g - (a - n["scratch_test_accuracy"])) < 2e-3
    assert abs(n["local_gain"] - n["slice_gain"][-1]) < 1e-3
    logs = [float(np.log10(w)) for w in n["slice_words"]] + [np.log10(q28.MINILM_WORDS)]
    # the slope of the mean gains equals the mean of the per-seed slopes only approximately
    # (each seed's slices hold slightly different word counts)
    assert abs(q28.slope(logs, n["slice_gain"] + [n["minilm_gain"]]) - n["gain_slope"]) < 0.01


def test_the_far_end_pays_clearly_and_the_verdict_reads_the_trend():
    f = finding_for(28)
    n = f.numbers
    # the claim's numbers with margins: fine-tuned MiniLM beats the scratch classifier on every
    # seed, by about 0.27 on seeds 0-2, and the gain grows by more than a point per tenfold
    # words (about 0.04)
    assert min(f.per_seed.get("minilm_gain", [n["minilm_gain"]])) > q28.MIN_FAR_GAIN
    assert n["minilm_gain"] > 0.15
    assert n["minilm_test_accuracy"] > n["majority_accuracy"] + 0.2
    assert n["gain_slope"] > 0.015
    assert {c.number for c in f.checks} == {"gain_slope", "minilm_gain"}
    # over five seeds both intervals sit wholly above 0 (seeds 0-4: gain_slope [0.035, 0.069],
    # minilm_gain [0.24, 0.35])
    assert f.verdict == "supported", f.rule
    assert all(c["outcome"] == "holds" for c in f.check_results())


def test_corpus_slice_keeps_the_first_windows_and_counts_their_words():
    c = _mlm.mlm_corpus(max_len=16, vocab_size=300, n_passages=60)
    part, words = q28.corpus_slice(c, 1 / 3)
    k = round(len(c.train_ids) / 3)
    assert torch.equal(part.train_ids, c.train_ids[:k])
    assert torch.equal(part.heldout_ids, c.heldout_ids) and part.tokenizer is c.tokenizer
    whole, all_words = q28.corpus_slice(c, 1.0)
    assert all_words == c.train_words and 0 < words < all_words


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


def test_epochs_to_reach_and_slope():
    assert q28.epochs_to_reach([0.2, 0.5, 0.4, 0.6], 0.5) == 2
    assert q28.epochs_to_reach([0.2, 0.5], 0.2) == 1
    assert q28.epochs_to_reach([0.2, 0.3], 0.9) == 3  # never: one past the budget
    x, y = [1.0, 2.0, 4.0], [0.5, 0.3, -0.1]
    assert abs(q28.slope(x, y) - np.polyfit(x, y, 1)[0]) < 1e-12
    assert abs(q28.slope(x, y) + 0.2) < 1e-9


def test_docstring_examples_run():
    result = doctest.testmod(q28, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
