"""BERT head and FFN pruning: the rebuilt model equals the gated original, and it shrinks."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close
from torch.utils.data import TensorDataset

from dlforge.compress.prune_bert import ffn_importance, gated, head_importance, prune_ffn, prune_heads
from dlforge.errors import ConfigError
from dlforge.models import build, spec_of
from dlforge.models.bert import build_bert
from dlforge.registry import load_artifact, save_artifact

TOL = {"rtol": 1e-5, "atol": 1e-5}  # float32, different summation order after slicing


def _bert(**options):
    torch.manual_seed(0)
    model = build_bert((12,), 3, vocab_size=100, dim=32, num_layers=2, num_heads=4, ffn_dim=64, **options)
    with torch.no_grad():  # BERT's init is N(0, 0.02): make heads differ clearly
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def _ids(n: int = 6, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, 100, (n, 12), generator=g)
    x[::2, 8:] = 0  # padding in half the rows exercises the unpadded path
    return x


def _gates(kept: list[list[int]], width: int) -> torch.Tensor:
    gate = torch.zeros(len(kept), width)
    for i, k in enumerate(kept):
        gate[i, k] = 1
    return gate


@pytest.mark.parametrize("options", [{}, {"pool": "mean"}, {"task_head": "token"}])
def test_pruned_heads_equal_the_gated_original(options) -> None:
    model = _bert(**options)
    smaller, report = prune_heads(model, 0.5)
    assert smaller.config.num_heads == 2 and smaller.config.head_dim == 8
    assert report.widths_before == (4, 4) and report.widths_after == (2, 2)
    x = _ids()
    with torch.no_grad(), gated(model, heads=_gates(report.kept, 4)):
        reference = model(x)
    assert_close(smaller(x), reference, **TOL)
    assert not torch.allclose(smaller(x), model(x), **TOL)


def test_gradient_importance_ranks_and_the_result_equals_the_gated_original() -> None:
    model = _bert()
    data = TensorDataset(_ids(16, seed=2), torch.randint(0, 3, (16,)))
    importance = head_importance(model, data, batches=2, batch_size=8)
    assert importance.shape == (2, 4) and (importance > 0).all()
    smaller, report = prune_heads(model, 0.25, data=data, batches=2, batch_size=8)
    for row, kept in zip(importance, report.kept):
        assert kept == sorted(row.topk(3).indices.tolist())
    x = _ids()
    with torch.no_grad(), gated(model, heads=_gates(report.kept, 4)):
        assert_close(smaller(x), model(x), **TOL)
    assert model.training is False and smaller.training is False


def test_gradient_importance_is_the_gate_gradient() -> None:
    """|dL/d xi| from the hook equals a finite difference of the loss in the gate."""
    model = _bert()
    x, y = _ids(4, seed=3), torch.randint(0, 3, (4,))
    importance = head_importance(model, TensorDataset(x, y), batches=1, batch_size=4)
    eps = 1e-3

    def loss(gate):
        with torch.no_grad(), gated(model, heads=gate):
            return torch.nn.functional.cross_entropy(model(x).double(), y)

    gate = torch.ones(2, 4, dtype=torch.float64)
    up, down = gate.clone(), gate.clone()
    up[1, 2] += eps
    down[1, 2] -= eps
    numeric = (loss(up) - loss(down)) / (2 * eps)
    assert_close(importance[1, 2].double(), numeric.abs(), rtol=1e-2, atol=1e-4)


def test_weight_norm_proxy_by_hand() -> None:
    model = _bert()
    layer = model.bert.encoder.layer[1]
    wv, wo = layer.attention.value.weight, layer.attention_output.dense.weight
    expected = torch.stack([wv[8 * h:8 * h + 8].norm() * wo[:, 8 * h:8 * h + 8].norm() for h in range(4)])
    assert_close(head_importance(model)[1], expected.detach())


def test_prune_ffn_equals_the_gated_original_and_composes_with_heads() -> None:
    model = _bert()
    smaller, report = prune_ffn(model, 0.75)
    assert smaller.config.ffn_dim == 16 and report.widths_after == (16, 16)
    x = _ids()
    with torch.no_grad(), gated(model, ffn=_gates(report.kept, 64)):
        assert_close(smaller(x), model(x), **TOL)
    both, heads = prune_heads(smaller, 0.5)
    with torch.no_grad(), gated(model, heads=_gates(heads.kept, 4), ffn=_gates(report.kept, 64)):
        assert_close(both(x), model(x), **TOL)
    assert ffn_importance(model).shape == (2, 64)


def test_parameters_shrink_and_the_artifact_round_trips(tmp_path) -> None:
    model = _bert()
    smaller, report = prune_heads(model, 0.5)
    # per layer: q, k, v lose 16 rows each (16 * 32 + 16) and the output projection 16 columns
    assert report.parameters_before - report.parameters_after == 2 * (3 * (16 * 32 + 16) + 32 * 16)
    smaller, _ = prune_ffn(smaller, 0.5)
    big = save_artifact(model, tmp_path / "big", task="classification")
    small = save_artifact(smaller, tmp_path / "small", task="classification")
    assert (small / "model.safetensors").stat().st_size < (big / "model.safetensors").stat().st_size
    loaded = load_artifact(small).model.eval()
    spec = spec_of(loaded)
    assert (spec["num_heads"], spec["head_dim"], spec["ffn_dim"]) == (2, 8, 32)
    x = _ids()
    assert_close(loaded(x), smaller(x))


def test_mlm_head_stays_tied() -> None:
    model = build({"arch": "bert", "vocab_size": 100, "dim": 32, "num_layers": 1, "num_heads": 4,
                   "ffn_dim": 64, "max_position": 12, "task_head": "mlm"}, input_shape=(12,), num_outputs=100)
    smaller, report = prune_heads(model.eval(), 0.5)
    assert smaller.head.decoder.weight is smaller.bert.embeddings.word_embeddings.weight
    x = _ids()
    with torch.no_grad(), gated(model, heads=_gates(report.kept, 4)):
        assert_close(smaller(x), model(x), **TOL)


def test_head_dim_config_is_checked_and_default_unchanged() -> None:
    assert build_bert((8,), 2, vocab_size=50, dim=16, num_heads=2).config.head_dim is None
    with pytest.raises(ConfigError, match="head_dim"):
        build_bert((8,), 2, vocab_size=50, dim=16, num_heads=2, head_dim=0)
    odd = build_bert((8,), 2, vocab_size=50, dim=16, num_heads=3, head_dim=4)  # 3 * 4 != dim is fine
    assert odd(torch.randint(1, 50, (2, 8))).shape == (2, 2)


def test_refuses_other_models_and_bad_amounts() -> None:
    mlp = build({"arch": "mlp", "hidden": [8]}, input_shape=(4,), num_outputs=2)
    with pytest.raises(ConfigError, match="MLP"):
        prune_heads(mlp, 0.5)
    with pytest.raises(ConfigError, match="amount"):
        prune_heads(_bert(), 1.0)


def test_docstring_examples_run() -> None:
    import doctest

    import dlforge.compress.prune_bert as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
