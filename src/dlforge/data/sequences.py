"""Seeded synthetic sequence tasks: long-range memory, retrieval and seq2seq toys.

Two kinds of output:

* :class:`DataBundle` s (``kind="sequence"``, x float32 ``(N, T, F)``) for tasks with one
  label per sequence: :func:`adding_problem` (regression), :func:`recall_first` and
  :func:`key_value_retrieval` (classification). They go through
  :func:`dlforge.data.prepare` like any bundle, but with ``standardize=False``:
  :class:`~dlforge.data.Standardizer` only takes ``(N, F)`` or ``(N, C, H, W)``
  arrays, and standardising a one-hot or marker channel would turn its exact 0/1
  codes into arbitrary numbers anyway.
* Raw int64 token tensors ``(inputs, targets)`` for sequence-to-sequence work:
  :func:`copy_memory_sequences`, :func:`sequence_reversal`, :func:`sequence_sorting`
  and :func:`key_value_tokens`.

Every generator draws from ``numpy.random.default_rng(seed)``: the same arguments give
identical arrays.

Example:
    >>> from dlforge.data import prepare
    >>> bundle = adding_problem(200, length=50, seed=0)
    >>> prepared = prepare(bundle, val=0.2, test=0.2, standardize=False)
    >>> prepared.input_shape, prepared.num_outputs
    ((50, 2), 1)
"""

from __future__ import annotations

import numpy as np
import torch

from dlforge.data.bundle import DataBundle
from dlforge.errors import DataError


def _check_int(value: object, name: str, minimum: int, example: int) -> int:
    """``value`` as an int, or a DataError naming the argument, its minimum and an example."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DataError(f"{name} must be an integer of at least {minimum}, got {value!r}",
                        hint=f"pass e.g. {name}={example}")
    return int(value)


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}", hint="pass e.g. seed=0")
    return int(seed)


def _balanced_labels(n: int, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` labels whose class counts differ by at most one, in random order.

    Balanced labels make chance accuracy exactly the majority-class rate (about
    1 / n_classes) and keep stratified splits possible for small ``n``.
    """
    return rng.permutation(np.arange(n) % n_classes).astype(np.int64)  # (N,)


def _one_hot(tokens: np.ndarray, depth: int) -> np.ndarray:
    return np.eye(depth, dtype=np.float32)[tokens]  # (N, T) -> (N, T, depth)


def _sequence_bundle(name: str, x: np.ndarray, y: np.ndarray, task: str,
                     class_names: list[str] | None, feature_names: list[str]) -> DataBundle:
    _, length, features = x.shape
    return DataBundle(
        name=name, x=x, y=y, task=task, kind="sequence", class_names=class_names,
        feature_names=feature_names,
        encoding={"kind": "sequence", "length": int(length), "features": int(features)},
    )


def adding_problem(n: int, length: int, seed: int = 0) -> DataBundle:
    """The adding problem (Hochreiter & Schmidhuber 1997): add the two marked values.

    Each sample is ``length`` steps of two channels: a value drawn uniformly from
    [0, 1] and a marker that is 1 at exactly two steps, one in the first half
    (``t < length // 2``) and one in the second, 0 elsewhere. The regression target
    ``y (N, 1)`` is the sum of the two marked values. The first marker can sit at the
    very start, so the model must carry it across up to ``length - 1`` steps.

    Baseline: always predicting 1.0 (the mean) scores MSE = Var(u1 + u2) = 2/12 ≈ 0.167;
    a model has learned something only well below that.

    Example:
        >>> bundle = adding_problem(4, length=10, seed=0)
        >>> bundle.x.shape, bundle.y.shape, bundle.x[..., 1].sum(axis=1).tolist()
        ((4, 10, 2), (4, 1), [2.0, 2.0, 2.0, 2.0])
    """
    n = _check_int(n, "n", 1, 1000)
    length = _check_int(length, "length", 2, 50)
    rng = np.random.default_rng(_check_seed(seed))
    values = rng.uniform(0.0, 1.0, size=(n, length))  # (N, T)
    half = length // 2
    first = rng.integers(0, half, size=n)  # (N,)
    second = rng.integers(half, length, size=n)  # (N,)
    markers = np.zeros((n, length))
    rows = np.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    x = np.stack([values, markers], axis=-1).astype(np.float32)  # (N, T, 2)
    # Sum the float32 values the model sees, so y is exactly recomputable from x.
    y = (x[rows, first, 0] + x[rows, second, 0]).reshape(-1, 1)  # (N, 1)
    return _sequence_bundle("adding_problem", x, y.astype(np.float32), "regression", None,
                            ["value", "marker"])


def recall_first(n: int, length: int, n_symbols: int = 8, seed: int = 0) -> DataBundle:
    """Recall the first symbol of a sequence after ``length - 2`` distractors.

    A one-label-per-sample form of the copy-memory task. Steps ``0 .. length-2`` hold
    random symbols, one-hot in channels ``0 .. n_symbols-1``; the last step is a
    query marker (channel ``n_symbols``). The label is the symbol at step 0, so the
    information must survive the whole sequence. x is ``(N, length, n_symbols + 1)``.

    Labels are balanced (counts differ by at most one), so chance accuracy, and the
    majority-class baseline, is about ``1 / n_symbols``.

    Example:
        >>> bundle = recall_first(6, length=5, n_symbols=3, seed=0)
        >>> bundle.x.shape, bundle.num_outputs, sorted(bundle.y.tolist())
        ((6, 5, 4), 3, [0, 0, 1, 1, 2, 2])
        >>> bool((bundle.x[:, 0].argmax(axis=1) == bundle.y).all())
        True
    """
    n = _check_int(n, "n", 1, 1000)
    length = _check_int(length, "length", 2, 50)
    n_symbols = _check_int(n_symbols, "n_symbols", 2, 8)
    rng = np.random.default_rng(_check_seed(seed))
    y = _balanced_labels(n, n_symbols, rng)  # (N,)
    tokens = rng.integers(0, n_symbols, size=(n, length))  # (N, T)
    tokens[:, 0] = y
    tokens[:, -1] = n_symbols  # the query marker
    x = _one_hot(tokens, n_symbols + 1)  # (N, T, n_symbols + 1)
    symbols = [str(s) for s in range(n_symbols)]
    return _sequence_bundle("recall_first", x, y, "classification", symbols,
                            [*symbols, "query"])


def copy_memory_sequences(
    n: int, length: int, n_symbols: int = 8, copy_len: int = 10, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The copy-memory task (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016) as tokens.

    Tokens: 0 is blank, ``1 .. n_symbols`` are data symbols, ``n_symbols + 1`` is the
    delimiter (vocabulary ``n_symbols + 2``). The input is ``copy_len`` random
    symbols, ``length - 1`` blanks, the delimiter and ``copy_len`` blanks; the
    target is blank everywhere except the last ``copy_len`` steps, which repeat the
    symbols. Both are int64 ``(N, length + 2 * copy_len)``.

    Baseline: blanks, then uniform guesses over the symbols, scores a per-step
    cross-entropy of ``copy_len * ln(n_symbols) / (length + 2 * copy_len)``.

    Example:
        >>> inputs, targets = copy_memory_sequences(1, length=3, n_symbols=4, copy_len=2)
        >>> inputs.shape, bool((targets[0, -2:] == inputs[0, :2]).all())
        (torch.Size([1, 7]), True)
        >>> inputs[0, 2:].tolist(), targets[0, :-2].tolist()
        ([0, 0, 5, 0, 0], [0, 0, 0, 0, 0])
    """
    n = _check_int(n, "n", 1, 1000)
    length = _check_int(length, "length", 1, 50)
    n_symbols = _check_int(n_symbols, "n_symbols", 1, 8)
    copy_len = _check_int(copy_len, "copy_len", 1, 10)
    rng = np.random.default_rng(_check_seed(seed))
    total = length + 2 * copy_len
    symbols = rng.integers(1, n_symbols + 1, size=(n, copy_len))  # (N, copy_len)
    inputs = np.zeros((n, total), dtype=np.int64)
    targets = np.zeros((n, total), dtype=np.int64)
    inputs[:, :copy_len] = symbols
    inputs[:, copy_len + length - 1] = n_symbols + 1  # the delimiter: "start copying"
    targets[:, -copy_len:] = symbols
    return torch.from_numpy(inputs), torch.from_numpy(targets)


def _random_tokens(n: int, length: int, vocab: int, seed: int) -> np.ndarray:
    n = _check_int(n, "n", 1, 1000)
    length = _check_int(length, "length", 1, 10)
    vocab = _check_int(vocab, "vocab", 2, 10)
    rng = np.random.default_rng(_check_seed(seed))
    return rng.integers(0, vocab, size=(n, length), dtype=np.int64)  # (N, T)


def sequence_reversal(
    n: int, length: int, vocab: int = 10, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token sequences and their reversals, int64 ``(N, length)`` each.

    Tokens are drawn uniformly from ``0 .. vocab-1``; no ids are reserved, so a
    seq2seq model adds its own start/pad ids above ``vocab``. Solving it needs
    position information: chance per-token accuracy is ``1 / vocab``.

    Example:
        >>> inputs, targets = sequence_reversal(2, length=5, vocab=10, seed=0)
        >>> bool((targets == inputs.flip(1)).all()), inputs.dtype
        (True, torch.int64)
    """
    inputs = _random_tokens(n, length, vocab, seed)
    return torch.from_numpy(inputs), torch.from_numpy(inputs[:, ::-1].copy())


def sequence_sorting(
    n: int, length: int, vocab: int = 10, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token sequences and the same tokens sorted ascending, int64 ``(N, length)``.

    Tokens are drawn uniformly from ``0 .. vocab-1`` (repeats allowed). Chance
    per-token accuracy is ``1 / vocab``; copying the input unsorted scores the share
    of tokens that happen to sit in their sorted place.

    Example:
        >>> inputs, targets = sequence_sorting(2, length=5, vocab=10, seed=0)
        >>> bool((targets == inputs.sort(dim=1).values).all())
        True
    """
    inputs = _random_tokens(n, length, vocab, seed)
    return torch.from_numpy(inputs), torch.from_numpy(np.sort(inputs, axis=1))


def key_value_tokens(
    n: int, n_pairs: int, vocab: int = 16, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Key/value retrieval as tokens: ``k1 v1 k2 v2 ... kP vP q`` and the value paired with q.

    Keys are distinct within a sequence and values are free; both use token ids
    ``0 .. vocab-1`` (even steps are keys, odd steps values, the last step is the
    query key). Returns tokens int64 ``(N, 2 * n_pairs + 1)`` and labels int64
    ``(N,)``. Labels are balanced over the ``vocab`` values: chance accuracy is about
    ``1 / vocab``. :func:`key_value_retrieval` is the same data as a one-hot bundle.

    Example:
        >>> tokens, labels = key_value_tokens(1, n_pairs=3, vocab=8, seed=0)
        >>> seq = tokens[0].tolist()
        >>> len(seq), dict(zip(seq[0:-1:2], seq[1:-1:2]))[seq[-1]] == labels[0].item()
        (7, True)
    """
    n = _check_int(n, "n", 1, 1000)
    n_pairs = _check_int(n_pairs, "n_pairs", 1, 4)
    vocab = _check_int(vocab, "vocab", 2, 16)
    if n_pairs > vocab:
        raise DataError(f"n_pairs ({n_pairs}) cannot exceed vocab ({vocab}): keys in a "
                        "sequence must be distinct for the answer to be unique",
                        hint=f"lower n_pairs to at most {vocab} or raise vocab")
    rng = np.random.default_rng(_check_seed(seed))
    labels = _balanced_labels(n, vocab, rng)  # (N,)
    # The first n_pairs of a random permutation per row: distinct keys.
    keys = np.argsort(rng.random((n, vocab)), axis=1)[:, :n_pairs]  # (N, P)
    values = rng.integers(0, vocab, size=(n, n_pairs))  # (N, P)
    asked = rng.integers(0, n_pairs, size=n)  # (N,) which pair the query names
    rows = np.arange(n)
    values[rows, asked] = labels
    tokens = np.empty((n, 2 * n_pairs + 1), dtype=np.int64)
    tokens[:, 0:-1:2] = keys
    tokens[:, 1:-1:2] = values
    tokens[:, -1] = keys[rows, asked]
    return torch.from_numpy(tokens), torch.from_numpy(labels)


def key_value_retrieval(n: int, n_pairs: int, vocab: int = 16, seed: int = 0) -> DataBundle:
    """Key/value retrieval as a classification bundle: x one-hot ``(N, 2*n_pairs+1, vocab)``.

    The same sequences as :func:`key_value_tokens` with the same arguments
    (``x.argmax(-1)`` gives its tokens): pairs of key and value tokens, then a query
    key; the label is the value paired with it. Any step may hold the answer, so the
    task probes retrieval across the whole sequence. Chance accuracy is about
    ``1 / vocab`` (labels are balanced).

    Example:
        >>> bundle = key_value_retrieval(10, n_pairs=4, vocab=5, seed=0)
        >>> bundle.x.shape, bundle.num_outputs, bundle.encoding["length"]
        ((10, 9, 5), 5, 9)
    """
    tokens, labels = key_value_tokens(n, n_pairs, vocab, seed)
    vocab = int(vocab)
    x = _one_hot(tokens.numpy(), vocab)  # (N, T, V)
    names = [str(v) for v in range(vocab)]
    return _sequence_bundle("key_value_retrieval", x, labels.numpy(), "classification", names,
                            names)
