"""BERT intermediate distillation: captured states and attention against the model's own,
the loss terms against their formulas on hand values, and a tiny run that lowers the loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close
from torch.utils.data import TensorDataset

from dlforge.compress.distill_bert import (
    IntermediateLoss,
    attention_kl,
    capture,
    distill_bert,
    hidden_mse,
    uniform_layer_map,
)
from dlforge.errors import ConfigError
from dlforge.models import build
from dlforge.models.bert import build_bert
from dlforge.nn import scaled_dot_product_attention

FIT = {"batch_size": 16, "optim": {"name": "adam", "lr": 3e-3}, "device": "cpu", "seed": 0}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _bert(dim: int = 32, layers: int = 2, heads: int = 4, seed: int = 0, **options):
    torch.manual_seed(seed)
    return build_bert((12,), 3, vocab_size=100, dim=dim, num_layers=layers, num_heads=heads, ffn_dim=2 * dim,
                      dropout=0.0, attention_dropout=0.0, **options).eval()


def _ids(n: int = 6, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, 100, (n, 12), generator=g)
    x[::2, 7:] = 0  # padding in half the rows
    return x


def test_hidden_mse_by_hand() -> None:
    s = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]]])  # (1, 3, 2); the last token is padding
    t = torch.tensor([[[0.0, 0.0], [3.0, 2.0], [0.0, 0.0]]])
    keep = torch.tensor([[True, True, False]])
    assert hidden_mse(s, t, keep).item() == (1 + 4 + 0 + 4) / 4


def test_attention_kl_by_hand() -> None:
    # one head, two real queries over keys (real, real, padding)
    teacher = torch.tensor([[0.25, 0.75, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]]).log()[None, None]
    student = torch.tensor([[0.5, 0.5, 0.0], [0.9, 0.1, 0.0], [0.2, 0.2, 0.6]]).log()[None, None]
    keep = torch.tensor([[True, True, False]])
    kl0 = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    kl1 = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert_close(attention_kl(student, teacher, keep), torch.tensor((kl0 + kl1) / 2))


@pytest.mark.parametrize("skip_padding", [True, False])
def test_captured_states_and_attention_match_the_model(skip_padding) -> None:
    model = _bert()
    model.bert.skip_padding = skip_padding
    x = _ids()
    keep = x != 0
    with torch.no_grad():
        reference = model.bert(x, attention_mask=keep, output_hidden_states=True).hidden_states
        plain = model(x)
        with capture(model) as seen:
            captured = model(x)
    assert torch.equal(captured, plain)  # capturing changes nothing
    (c,) = seen
    assert torch.equal(c.keep, keep) and len(c.states) == 3
    for mine, ref in zip(c.states, reference):
        assert_close(mine[keep], ref[keep])
    layer = model.bert.encoder.layer[1].attention
    h = reference[1]  # (B, T, dim): layer 2's input
    q, k = (p(h).view(6, 12, 4, 8).transpose(1, 2) for p in (layer.query, layer.key))
    _, weights = scaled_dot_product_attention(q, k, k, mask=keep[:, None, None, :], return_weights=True)
    with torch.no_grad():
        mine = c.attention_logprobs(2).exp()  # (B, H, T, T)
    rows = keep[:, None, :, None].expand_as(mine)  # real query rows
    assert_close(mine[rows], weights[rows])


def test_intermediate_loss_equals_the_formula() -> None:
    teacher, student = _bert(dim=32, layers=4, seed=0), _bert(dim=16, layers=2, seed=1)
    objective = IntermediateLoss(16, 32, {0: 0, 1: 2, 2: 4}, hidden_weight=0.7, attention_weight=0.3)
    x = _ids()
    keep = x != 0
    with torch.no_grad(), capture(teacher) as t, capture(student) as s:
        teacher(x)
        student(x)
        total = objective(s[0], t[0])
        W = objective.projection.weight  # (32, 16)
        hidden = [F.mse_loss(s[0].states[a][keep] @ W.T, t[0].states[b][keep]) for a, b in [(0, 0), (1, 2), (2, 4)]]
        kl = []
        for a, b in [(1, 2), (2, 4)]:
            ls, lt = s[0].attention_logprobs(a), t[0].attention_logprobs(b)  # (B, H, T, T)
            terms = [F.kl_div(ls[i, h, q, keep[i]], lt[i, h, q, keep[i]], log_target=True, reduction="sum")
                     for i in range(6) for h in range(4) for q in range(12) if keep[i, q]]
            kl.append(torch.stack(terms).mean())
    expected = 0.7 * torch.stack(hidden).mean() + 0.3 * torch.stack(kl).mean()
    assert_close(total, expected, rtol=1e-5, atol=1e-6)


def test_same_width_has_no_projection_and_uniform_map() -> None:
    assert isinstance(IntermediateLoss(8, 8, {1: 1}, hidden_weight=1, attention_weight=1).projection, torch.nn.Identity)
    assert uniform_layer_map(2, 6) == {1: 3, 2: 6}
    assert uniform_layer_map(3, 3) == {1: 1, 2: 2, 3: 3}


def test_a_tiny_run_lowers_the_loss_and_leaves_the_teacher_alone() -> None:
    teacher, student = _bert(dim=32, layers=4, seed=0), _bert(dim=16, layers=2, seed=1)
    teacher.train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    g = torch.Generator().manual_seed(5)
    x, y = torch.randint(1, 100, (64, 12), generator=g), torch.randint(0, 3, (64,), generator=g)
    x[::3, 9:] = 0
    data = TensorDataset(x, y)
    result = distill_bert(teacher, student, data, data, hidden_weight=1.0, attention_weight=1.0, epochs=3, **FIT)
    losses = [e["train_loss"] for e in result.epochs]
    assert losses[-1] < 0.8 * losses[0]
    assert "val_accuracy" in result.epochs[-1]
    assert teacher.training  # mode restored
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k])


def test_hidden_only_mapping_with_different_heads_and_embeddings() -> None:
    teacher, student = _bert(dim=32, layers=2, heads=4), _bert(dim=16, layers=1, heads=2, seed=1)
    data = TensorDataset(_ids(16), torch.randint(0, 3, (16,)))
    result = distill_bert(teacher, student, data, layer_map={0: 0, 1: 2}, attention_weight=0.0, epochs=1, **FIT)
    assert result.epochs_run == 1


def test_errors() -> None:
    teacher, student = _bert(), _bert(heads=2, seed=1)
    data = TensorDataset(_ids(8), torch.randint(0, 3, (8,)))
    with pytest.raises(ConfigError, match="heads"):
        distill_bert(teacher, student, data, epochs=1, **FIT)
    with pytest.raises(ConfigError, match="teacher layer 5"):
        distill_bert(teacher, student, data, layer_map={1: 5}, attention_weight=0, epochs=1, **FIT)
    mlp = build({"arch": "mlp", "hidden": [8]}, input_shape=(12,), num_outputs=3)
    with pytest.raises(ConfigError, match="not a sequence-classifying bert"):
        distill_bert(mlp, student, data, epochs=1, **FIT)
    with pytest.raises(ConfigError, match="loss"):
        distill_bert(teacher, _bert(seed=1), data, loss="mse", epochs=1, **FIT)


def test_docstring_examples_run() -> None:
    import doctest

    import dlforge.compress.distill_bert as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
