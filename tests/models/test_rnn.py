"""Recurrent models: explicit cells and fused kernels against torch.nn.RNN/LSTM/GRU."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dlforge.errors import ConfigError, DataError
from dlforge.models import build, spec_of
from dlforge.models.rnn import (
    Recurrent,
    RNNClassifier,
    RNNConfig,
    build_rnn,
    gru_cell,
    lstm_cell,
    rnn_cell,
)
from dlforge.train import fit

F_IN, H, B, T = 3, 4, 3, 5
REFERENCES = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
CASES = list(itertools.product(["rnn", "lstm", "gru"], [1, 2], [False, True]))


def make_pair(
    kind: str, layers: int, bidirectional: bool, **options
) -> tuple[Recurrent, nn.Module]:
    """A float64 Recurrent and a torch reference holding a copy of its weights, by name."""
    torch.manual_seed(0)
    rec = Recurrent(kind, F_IN, H, layers, bidirectional=bidirectional, **options).double()
    extra = {"nonlinearity": options["nonlinearity"]} if "nonlinearity" in options else {}
    ref = REFERENCES[kind](
        F_IN, H, layers, batch_first=True, bidirectional=bidirectional, **extra
    ).double()
    ref.load_state_dict(rec.rnn.state_dict())  # strict: the names must match
    return rec, ref


def states(state) -> list[torch.Tensor]:
    return list(state) if isinstance(state, tuple) else [state]


def run_with_grads(module: nn.Module, x: torch.Tensor, call) -> tuple[list, list]:
    """Outputs, final states and the gradients of every parameter and of the input."""
    x = x.clone().requires_grad_(True)
    module.zero_grad()
    out, state = call(module, x)
    # A weighted sum reaches every output and state element with a distinct weight.
    # Not randn_like: it follows strides, and the fused output is laid out time-major.
    g = torch.Generator().manual_seed(1)
    loss = sum(
        (t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum()
        for t in [out, *states(state)]
    )
    loss.backward()
    grads = [p.grad.clone() for _, p in sorted(module.named_parameters())]
    return [out.detach(), *[s.detach() for s in states(state)]], [*grads, x.grad]


@pytest.mark.parametrize(("kind", "layers", "bidirectional"), CASES)
def test_explicit_fused_and_torch_agree_on_values_and_gradients(
    kind: str, layers: int, bidirectional: bool
) -> None:
    rec, ref = make_pair(kind, layers, bidirectional)
    x = torch.randn(B, T, F_IN, dtype=torch.float64)
    D = 2 if bidirectional else 1
    h0 = torch.randn(layers * D, B, H, dtype=torch.float64)
    state0 = (h0, torch.randn_like(h0)) if kind == "lstm" else h0

    expected = run_with_grads(ref, x, lambda m, x: m(x, state0))
    for path in ("fused", "explicit"):
        rec.path = path
        got = run_with_grads(rec, x, lambda m, x: m(x, state0))
        torch.testing.assert_close(got, expected)
    assert expected[0][0].shape == (B, T, D * H)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_elman_nonlinearity_matches_torch(nonlinearity: str) -> None:
    rec, ref = make_pair("rnn", 2, True, nonlinearity=nonlinearity, path="explicit")
    x = torch.randn(B, T, F_IN, dtype=torch.float64)
    torch.testing.assert_close(rec(x), ref(x))


@pytest.mark.parametrize(("kind", "layers", "bidirectional"), CASES)
def test_variable_lengths_equal_each_sequence_alone(
    kind: str, layers: int, bidirectional: bool
) -> None:
    rec, _ = make_pair(kind, layers, bidirectional)
    lengths = torch.tensor([T, 2, 4])
    x = torch.randn(B, T, F_IN, dtype=torch.float64)
    for path in ("fused", "explicit"):
        rec.path = path
        out, state = rec(x, lengths=lengths)
        for b, n in enumerate(lengths.tolist()):
            alone_out, alone_state = rec(x[b : b + 1, :n])
            torch.testing.assert_close(out[b : b + 1, :n], alone_out)
            assert torch.equal(out[b, n:], torch.zeros_like(out[b, n:]))  # zero past the end
            for s, s_alone in zip(states(state), states(alone_state)):
                torch.testing.assert_close(s[:, b : b + 1], s_alone)


def test_both_paths_give_the_same_gradients_with_lengths() -> None:
    rec, _ = make_pair("lstm", 2, True)
    x = torch.randn(B, T, F_IN, dtype=torch.float64)
    lengths = torch.tensor([1, T, 3])
    results = []
    for path in ("fused", "explicit"):
        rec.path = path
        results.append(run_with_grads(rec, x, lambda m, x: m(x, lengths=lengths)))
    torch.testing.assert_close(results[0], results[1])


def test_functional_cells_match_torch_cells() -> None:
    torch.manual_seed(0)
    x, h, c = torch.randn(B, F_IN), torch.randn(B, H), torch.randn(B, H)
    pairs = [(nn.RNNCell, rnn_cell), (nn.LSTMCell, lstm_cell), (nn.GRUCell, gru_cell)]
    for cell_cls, ours in pairs:
        cell = cell_cls(F_IN, H)
        weights = (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
        if cell_cls is nn.LSTMCell:
            torch.testing.assert_close(ours(x, h, c, *weights), cell(x, (h, c)))
        else:
            torch.testing.assert_close(ours(x, h, *weights), cell(x, h))


@pytest.mark.parametrize("path", ["fused", "explicit"])
def test_dropout_between_layers_only_in_train_mode(path: str) -> None:
    rec, ref = make_pair("gru", 2, False, dropout=0.5, path=path)
    x = torch.randn(B, T, F_IN, dtype=torch.float64)
    rec.eval()
    # In eval mode dropout is off: the reference has no dropout at all and still agrees.
    torch.testing.assert_close(rec(x), ref(x))
    rec.train()
    first, second = rec(x)[0], rec(x)[0]
    assert not torch.allclose(first, second)
    assert not torch.allclose(first, ref(x)[0])
    # One layer has no "between": train mode is deterministic and equals the reference.
    single, single_ref = make_pair("gru", 1, False, dropout=0.5, path=path)
    torch.testing.assert_close(single.train()(x), single_ref(x))


@pytest.mark.parametrize("head", ["last", "mean"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_classifier_heads_summarise_valid_steps(head: str, bidirectional: bool) -> None:
    torch.manual_seed(0)
    model = build_rnn(
        (T, F_IN), 2, kind="lstm", hidden_size=H, num_layers=2, bidirectional=bidirectional,
        head=head,
    ).double()
    ref = nn.LSTM(F_IN, H, 2, batch_first=True, bidirectional=bidirectional).double()
    ref.load_state_dict(model.recurrent.rnn.state_dict())
    x = torch.randn(B, T, F_IN, dtype=torch.float64)
    lengths = torch.tensor([T, 2, 4])
    logits = model(x, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        out, (h_n, _) = ref(x[b : b + 1, :n])
        if head == "mean":
            summary = out.mean(dim=1)
        else:  # the top layer's final state of each direction: h_n's last D entries
            summary = torch.cat(list(h_n[-(2 if bidirectional else 1) :]), dim=1)
        torch.testing.assert_close(logits[b : b + 1], model.head(summary))
    # Without lengths every step is valid.
    torch.testing.assert_close(model(x), model(x, lengths=torch.full((B,), T)))


def test_build_and_spec_round_trip() -> None:
    spec = {"arch": "rnn", "kind": "gru", "hidden_size": 6, "num_layers": 2,
            "bidirectional": True, "path": "explicit", "head": "mean"}
    model = build(spec, input_shape=(T, F_IN), num_outputs=3)
    assert isinstance(model, RNNClassifier) and isinstance(model.recurrent.rnn, nn.GRU)
    saved = spec_of(model)
    assert saved["input_shape"] == [T, F_IN] and saved["num_outputs"] == 3
    assert {k: saved[k] for k in spec} == spec
    rebuilt = build(saved)
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, T, F_IN)
    torch.testing.assert_close(rebuilt(x), model(x))
    with pytest.raises(DataError, match=r"expected \(B, T, 3\)"):
        model(torch.zeros(2, T, 4))
    with pytest.raises(DataError, match="lengths"):
        model(x, lengths=torch.tensor([0, T]))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kind": "elman"}, "model.kind is 'elman'"),
        ({"hidden_size": 0}, "model.hidden_size is 0"),
        ({"num_layers": 0}, "model.num_layers is 0"),
        ({"dropout": 1.0}, "model.dropout is 1.0"),
        ({"nonlinearity": "gelu"}, "model.nonlinearity is 'gelu'"),
        ({"kind": "lstm", "nonlinearity": "relu"}, "model.nonlinearity is 'relu'"),
        ({"path": "cuda"}, "model.path is 'cuda'"),
        ({"head": "first"}, "model.head is 'first'"),
        ({"task_head": "tag"}, "model.task_head is 'tag'"),
        ({"bidirectional": "yes"}, "model.bidirectional has the wrong type"),
        ({"hidden": 8}, "model.hidden is not a setting of the rnn model"),
    ],
)
def test_config_errors_name_the_key(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        build({"arch": "rnn", **options}, input_shape=(T, F_IN), num_outputs=2)


def test_input_shape_must_be_steps_by_features() -> None:
    with pytest.raises(ConfigError, match=r"model.input_shape is \[1, 8, 8\]"):
        RNNConfig(input_shape=(1, 8, 8), num_outputs=2)


def test_lstm_learns_the_sign_of_a_sum() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(448, 12, 1, generator=g)  # (N, T, F)
    y = (x.sum(dim=(1, 2)) > 0).long()  # needs every step, so the state must carry it
    train = TensorDataset(x[:320], y[:320])
    val = TensorDataset(x[320:], y[320:])
    model = build_rnn((12, 1), 2, kind="lstm", hidden_size=8)
    result = fit(model, train, val, epochs=6, batch_size=32,
                 optim={"name": "adam", "lr": 0.03}, seed=0)
    assert result.final["val_accuracy"] >= 0.9
