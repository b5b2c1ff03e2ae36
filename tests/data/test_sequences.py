"""Generated sequence tasks: shapes, seeding, targets recomputed from x, baselines, prepare."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from dlforge.data import (
    adding_problem, copy_memory_sequences, key_value_retrieval, key_value_tokens, prepare,
    recall_first, sequence_reversal, sequence_sorting,
)
from dlforge.data import sequences
from dlforge.errors import DataError

BUNDLES = {
    "adding_problem": lambda seed: adding_problem(64, length=20, seed=seed),
    "recall_first": lambda seed: recall_first(64, length=20, n_symbols=4, seed=seed),
    "key_value_retrieval": lambda seed: key_value_retrieval(64, n_pairs=5, vocab=8, seed=seed),
}
RAW = {
    "copy_memory_sequences": lambda seed: copy_memory_sequences(16, 12, 4, 3, seed=seed),
    "sequence_reversal": lambda seed: sequence_reversal(16, length=9, vocab=7, seed=seed),
    "sequence_sorting": lambda seed: sequence_sorting(16, length=9, vocab=7, seed=seed),
    "key_value_tokens": lambda seed: key_value_tokens(16, n_pairs=4, vocab=6, seed=seed),
}


def test_docstring_examples_run():
    result = doctest.testmod(sequences, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("name", list(BUNDLES))
def test_bundles_are_float32_sequences_with_a_matching_encoding(name):
    bundle = BUNDLES[name](0)
    n, length, features = bundle.x.shape
    assert bundle.name == name and bundle.kind == "sequence" and n == 64
    assert bundle.x.dtype == np.float32 and np.isfinite(bundle.x).all()
    assert bundle.encoding == {"kind": "sequence", "length": length, "features": features}
    assert bundle.input_shape == (length, features) and len(bundle.feature_names) == features
    if bundle.task == "classification":
        assert bundle.y.dtype == np.int64 and bundle.y.shape == (n,)
        assert bundle.num_outputs == len(bundle.class_names)
    else:
        assert bundle.y.dtype == np.float32 and bundle.y.shape == (n, 1)


@pytest.mark.parametrize("name", list(BUNDLES))
def test_bundles_are_deterministic_by_seed(name):
    a, b, c = BUNDLES[name](3), BUNDLES[name](3), BUNDLES[name](4)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(a.x, c.x)


@pytest.mark.parametrize("name", list(RAW))
def test_raw_token_tasks_are_int64_and_deterministic_by_seed(name):
    a, b, c = RAW[name](5), RAW[name](5), RAW[name](6)
    for left, right in zip(a, b):
        assert left.dtype == torch.int64
        assert torch.equal(left, right)
    assert not torch.equal(a[0], c[0])


def test_adding_problem_has_one_marker_per_half_and_sums_the_marked_values():
    length = 15  # odd: the first half is steps 0..6, the second 7..14
    bundle = adding_problem(500, length=length, seed=1)
    values, markers = bundle.x[..., 0], bundle.x[..., 1]  # (N, T) each
    assert values.min() >= 0.0 and values.max() <= 1.0
    assert set(np.unique(markers)) == {0.0, 1.0}
    np.testing.assert_array_equal(markers[:, : length // 2].sum(axis=1), 1.0)
    np.testing.assert_array_equal(markers[:, length // 2 :].sum(axis=1), 1.0)
    assert_close(bundle.y[:, 0], (values * markers).sum(axis=1))
    # Both ends are reachable, so the long-range case actually occurs.
    assert markers[:, 0].any() and markers[:, -1].any()


def test_adding_problem_baseline_mse_of_predicting_one_is_one_sixth():
    bundle = adding_problem(100_000, length=10, seed=0)
    mse = float(((bundle.y - 1.0) ** 2).mean())
    # Var(u1 + u2) = 2/12 for independent U(0, 1); the sampling std of the mean is ~0.0006.
    assert mse == pytest.approx(2 / 12, abs=0.003)
    assert float(bundle.y.mean()) == pytest.approx(1.0, abs=0.005)


def test_recall_first_label_is_the_first_symbol_and_ends_with_a_query():
    n_symbols = 5
    bundle = recall_first(300, length=30, n_symbols=n_symbols, seed=2)
    x = bundle.x  # (N, T, n_symbols + 1)
    np.testing.assert_array_equal(x.sum(axis=2), 1.0)  # exactly one-hot at every step
    tokens = x.argmax(axis=2)  # (N, T)
    np.testing.assert_array_equal(tokens[:, 0], bundle.y)
    np.testing.assert_array_equal(tokens[:, -1], n_symbols)  # the query marker
    assert (tokens[:, :-1] < n_symbols).all()  # the marker appears nowhere else
    # Distractors are random, so the answer is not repeated at a fixed later step.
    assert (tokens[:, 1] != tokens[:, 0]).mean() > 0.5


def test_recall_first_labels_are_uniform_so_chance_is_one_over_n_symbols():
    n_symbols = 8
    bundle = recall_first(1003, length=10, n_symbols=n_symbols, seed=0)
    counts = np.bincount(bundle.y, minlength=n_symbols)
    assert counts.max() - counts.min() <= 1
    majority_accuracy = counts.max() / len(bundle)
    assert majority_accuracy == pytest.approx(1 / n_symbols, abs=1 / len(bundle))
    assert bundle.class_names == [str(s) for s in range(n_symbols)]


def test_copy_memory_inputs_and_targets_follow_the_classic_layout():
    length, n_symbols, copy_len = 12, 4, 3
    inputs, targets = copy_memory_sequences(50, length, n_symbols, copy_len, seed=0)
    assert inputs.shape == targets.shape == (50, length + 2 * copy_len)
    data = inputs[:, :copy_len]
    assert bool(((data >= 1) & (data <= n_symbols)).all())
    assert torch.equal(targets[:, -copy_len:], data)
    assert bool((targets[:, :-copy_len] == 0).all())
    delimiter_at = copy_len + length - 1
    assert bool((inputs[:, delimiter_at] == n_symbols + 1).all())
    rest = torch.cat([inputs[:, copy_len:delimiter_at], inputs[:, delimiter_at + 1 :]], dim=1)
    assert bool((rest == 0).all())


def test_copy_memory_baseline_cross_entropy_matches_the_documented_formula():
    length, n_symbols, copy_len = 20, 8, 10
    inputs, targets = copy_memory_sequences(200, length, n_symbols, copy_len, seed=0)
    total = targets.shape[1]
    # The baseline: blank for the first steps, uniform over the symbols for the copy steps.
    logits = torch.full((*targets.shape, n_symbols + 2), -1e9)
    logits[:, :-copy_len, 0] = 0.0
    logits[:, -copy_len:, 1 : n_symbols + 1] = 0.0
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, n_symbols + 2),
                                             targets.reshape(-1))
    assert_close(loss, torch.tensor(copy_len * math.log(n_symbols) / total))


def test_reversal_and_sorting_targets_match_torch():
    inputs, targets = sequence_reversal(40, length=11, vocab=9, seed=0)
    assert inputs.shape == targets.shape == (40, 11)
    assert int(inputs.min()) >= 0 and int(inputs.max()) < 9
    assert torch.equal(targets, torch.flip(inputs, dims=[1]))
    inputs, targets = sequence_sorting(40, length=11, vocab=9, seed=0)
    assert torch.equal(targets, torch.sort(inputs, dim=1).values)
    assert not torch.equal(inputs, targets)


def test_key_value_label_is_the_value_paired_with_the_query_key():
    n_pairs, vocab = 6, 10
    tokens, labels = key_value_tokens(300, n_pairs=n_pairs, vocab=vocab, seed=0)
    assert tokens.shape == (300, 2 * n_pairs + 1) and labels.shape == (300,)
    for seq, label in zip(tokens.tolist(), labels.tolist()):
        keys, values, query = seq[0:-1:2], seq[1:-1:2], seq[-1]
        assert len(set(keys)) == n_pairs  # distinct keys: one right answer
        assert label == values[keys.index(query)]
    # The queried pair is spread over all positions, not always the same one.
    asked = [seq[0:-1:2].index(seq[-1]) for seq in tokens.tolist()]
    assert set(asked) == set(range(n_pairs))


def test_key_value_bundle_is_the_one_hot_of_the_tokens_with_uniform_labels():
    tokens, labels = key_value_tokens(400, n_pairs=4, vocab=8, seed=7)
    bundle = key_value_retrieval(400, n_pairs=4, vocab=8, seed=7)
    assert_close(torch.from_numpy(bundle.x),
                 torch.nn.functional.one_hot(tokens, num_classes=8).to(torch.float32))
    np.testing.assert_array_equal(bundle.y, labels.numpy())
    counts = np.bincount(bundle.y, minlength=8)
    assert counts.max() - counts.min() <= 1  # chance accuracy 1/vocab


@pytest.mark.parametrize("call, word", [
    (lambda: adding_problem(0, length=10), "n"),
    (lambda: adding_problem(10, length=1), "length"),
    (lambda: adding_problem(10, length=10.5), "length"),
    (lambda: adding_problem(10, length=10, seed=-1), "seed"),
    (lambda: recall_first(10, length=10, n_symbols=1), "n_symbols"),
    (lambda: recall_first(True, length=10), "n"),
    (lambda: copy_memory_sequences(10, 5, copy_len=0), "copy_len"),
    (lambda: sequence_reversal(10, length=5, vocab=1), "vocab"),
    (lambda: sequence_sorting(10, length=0), "length"),
    (lambda: key_value_tokens(10, n_pairs=0), "n_pairs"),
    (lambda: key_value_retrieval(10, n_pairs=9, vocab=8), "n_pairs"),
])
def test_bad_arguments_raise_data_error_with_a_hint(call, word):
    with pytest.raises(DataError) as info:
        call()
    assert word in info.value.message and info.value.hint


@pytest.mark.parametrize("name", list(BUNDLES))
def test_bundles_prepare_without_standardisation_and_keep_exact_codes(name):
    bundle = BUNDLES[name](0)
    prepared = prepare(bundle, val=0.25, test=0.25, seed=0, standardize=False, standardize_target=False)
    assert prepared.kind == "sequence" and prepared.input_shape == bundle.input_shape
    assert prepared.preprocessing == {"encoding": bundle.encoding, "standardize": None}
    parts = [prepared.train, prepared.val, prepared.test]
    assert sum(len(p) for p in parts) == len(bundle)
    x = torch.cat([p.tensors[0] for p in parts])  # (N, T, F)
    y = torch.cat([p.tensors[1] for p in parts])
    # Splitting only reorders samples: every (x, y) pair is a bundle sample, unchanged.
    order = np.lexsort(bundle.x.reshape(len(bundle), -1).T)
    got = np.lexsort(x.numpy().reshape(len(x), -1).T)
    np.testing.assert_array_equal(x.numpy()[got], bundle.x[order])
    np.testing.assert_array_equal(y.numpy()[got], bundle.y[order])
    if bundle.task == "classification":
        assert set(torch.unique(x).tolist()) == {0.0, 1.0}  # one-hot codes survive
        assert y.dtype == torch.int64


@pytest.mark.parametrize("name", list(BUNDLES))
def test_standardising_a_sequence_bundle_is_refused_with_a_hint(name):
    # Standardizer takes (N, F) or (N, C, H, W); (N, T, F) must fail loudly, not mangle codes.
    with pytest.raises(DataError) as info:
        prepare(BUNDLES[name](0), val=0.25, test=0.25, standardize=True)
    assert "standardise" in info.value.message and info.value.hint


def test_prepared_sequences_feed_a_recurrent_model_batch():
    prepared = prepare(recall_first(40, length=12, n_symbols=4, seed=0), val=0.25, test=0.25,
                       standardize=False)
    loader = torch.utils.data.DataLoader(prepared.train, batch_size=8)
    x, y = next(iter(loader))
    torch.manual_seed(0)
    rnn = torch.nn.GRU(input_size=prepared.input_shape[1], hidden_size=6, batch_first=True)
    out, _ = rnn(x)  # (B, T, 6)
    assert x.shape == (8, 12, 5) and out.shape == (8, 12, 6) and y.shape == (8,)


def test_sequence_encoding_round_trips_through_encode_array():
    from dlforge.data import adding_problem, encode_array, prepare
    from dlforge.data.preprocess import sample_shape

    bundle = adding_problem(40, length=12, seed=1)
    prepared = prepare(bundle, val=0.2, test=0.2, standardize=False)
    assert sample_shape(prepared.preprocessing["encoding"]) == (12, 2)
    x = encode_array(bundle.x[:5], prepared.preprocessing)
    torch.testing.assert_close(x, torch.from_numpy(bundle.x[:5]))
