"""Topic 23 at the quick budget: attention cost versus length, extrapolation per encoding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dlforge.lab import q23_transformer_limits as q23
from dlforge.nn.attention import scaled_dot_product_attention

from .cache import finding_for


def test_cost_numbers_are_consistent_with_their_lengths_and_exponents():
    f = finding_for(23)
    n = f.numbers
    lengths = list(q23.BUDGETS["quick"]["lengths"])
    assert n["lengths"] == lengths and len(f.seeds) == q23.SEEDS["quick"] >= 5
    for name in q23.VARIANTS:
        seconds, nbytes = n[f"{name}_seconds"], n[f"{name}_bytes"]  # seconds: element-wise means over seeds
        assert len(seconds) == len(nbytes) == len(lengths) and min(seconds) > 0
        exponent = f"time_exponent_{name}"
        assert n[exponent] == pytest.approx(np.mean(f.per_seed[exponent]), abs=1e-3)  # the mean of the seeds'
        # the exponent of the mean times is not the mean exponent, but close to it
        assert n[exponent] == pytest.approx(q23.fit_exponent(lengths, seconds), abs=0.25)
        assert n[f"memory_exponent_{name}"] == round(q23.fit_exponent(lengths, nbytes), 3)  # exact, every seed
    # Explicit attention keeps exactly its (h, T, T) float32 softmax weights for backward.
    assert n["explicit_bytes"] == [q23.HEADS * T * T * 4 for T in lengths]
    # Fused and local keep memory proportional to T: doubling T doubles the bytes.
    for name in ("fused", "local"):
        b = n[f"{name}_bytes"]
        assert all(later == 2 * earlier for earlier, later in zip(b, b[1:]))
    assert min(f.per_seed["local_speedup_at_longest"]) > 1.0  # local is faster on every seed
    assert n["local_speedup_at_longest"] == pytest.approx(np.mean(f.per_seed["local_speedup_at_longest"]), abs=0.01)
    # the check reads the log2 of each seed's speedup: > 0 exactly when the speedup is > 1
    for ratio, log2 in zip(f.per_seed["local_speedup_at_longest"], f.per_seed["local_log2_speedup_at_longest"]):
        assert log2 == pytest.approx(math.log2(ratio), abs=2e-3)
    assert n["local_memory_saving_at_longest"] == round(
        n["explicit_bytes"][-1] / n["local_bytes"][-1], 2)


def test_extrapolation_numbers_are_consistent():
    n = finding_for(23).numbers
    T = q23.BUDGETS["quick"]["train_length"]
    assert n["train_length"] == T and n["eval_lengths"] == [int(f * T) for f in q23.EVAL_FACTORS]
    assert n["chance_accuracy"] == round(1 / q23.VOCAB, 4)
    for p in q23.ENCODINGS:
        curve = n[f"{p}_accuracy_curve"]
        assert len(curve) == len(q23.EVAL_FACTORS) and all(0 <= a <= 1 for a in curve)
        # means over seeds (significant digits: equal to about 1e-4)
        assert n[f"{p}_accuracy_in"] == pytest.approx(curve[q23.EVAL_FACTORS.index(1.0)], abs=1e-4)
        assert n[f"{p}_accuracy_2x"] == pytest.approx(curve[q23.EVAL_FACTORS.index(2.0)], abs=1e-4)
        assert n[f"{p}_drop"] == pytest.approx(n[f"{p}_accuracy_in"] - n[f"{p}_accuracy_2x"], abs=2e-4)
        assert 0 <= n[f"{p}_accuracy_beyond"] <= 1
    # The absolute encodings learn the task in-length, so their drop is about length.
    assert n["sinusoidal_accuracy_in"] >= 0.9 and n["learned_accuracy_in"] >= 0.9
    assert n["learned_untrained_row_change"] == 0.0  # rows past T_train get no gradient


def test_only_alibi_is_blind_to_direction():
    n = finding_for(23).numbers
    assert n["alibi_reflection_change"] < q23.MIRROR_TOL
    assert n["rotary_reflection_change"] > 1e-2
    # A mirror-equivariant tagger cannot beat (1 + 1/V) / 2 on previous-token copying.
    assert n["alibi_accuracy_in"] <= (1 + 1 / q23.VOCAB) / 2 + 0.02


def test_saved_bytes_counts_the_softmax_weights_and_not_the_inputs():
    q, k, v = (torch.randn(1, 3, 10, 4) for _ in range(3))
    assert q23.saved_bytes(q23.VARIANTS["explicit"], q, k, v) == 3 * 10 * 10 * 4
    # A function that saves only its inputs counts nothing.
    assert q23.saved_bytes(lambda a, b, c: (a * b).sum(), q, k, v) == 0
    # Cross-check: the explicit path is the same computation as torch's fused kernel.
    torch.testing.assert_close(q23.VARIANTS["explicit"](q, k, v),
                               scaled_dot_product_attention(q, k, v, fused=True))


def test_fit_exponent_recovers_a_power_law():
    lengths = [128, 256, 512]
    assert q23.fit_exponent(lengths, [3 * t**1.5 for t in lengths]) == pytest.approx(1.5)
    assert math.isclose(q23.fit_exponent([1, 10], [5.0, 5.0]), 0.0, abs_tol=1e-12)


def test_previous_token_task_and_reflection_change():
    x, y = q23.previous_token_task(4, 7, seed=3)
    assert x.shape == y.shape == (4, 7) and int(x.max()) < q23.VOCAB
    assert torch.equal(y[:, 1:], x[:, :-1]) and bool((y[:, 0] == -100).all())
    assert torch.equal(q23.previous_token_task(4, 7, seed=3)[0], x)  # seeded
    torch.manual_seed(0)
    tokens = torch.randint(0, q23.VOCAB, (3, 9))
    assert q23.reflection_change(q23._model("alibi", 9).eval(), tokens) < 1e-5
    assert q23.reflection_change(q23._model("rotary", 9).eval(), tokens) > 1e-3
