"""Transformer encoder: layers and stack against torch.nn.TransformerEncoder[Layer]."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dlforge.data.sequences import recall_first
from dlforge.errors import ConfigError, DataError
from dlforge.models import build, spec_of
from dlforge.nn import alibi_bias
from dlforge.models.transformer import (
    EncoderLayer,
    TransformerClassifier,
    TransformerEncoder,
    TransformerConfig,
    build_transformer,
)
from dlforge.train import fit

B, T, D, HEADS, FFN = 3, 6, 16, 4, 24


def copy_layer(ours: EncoderLayer, ref: nn.TransformerEncoderLayer) -> None:
    """Copy our layer's weights into torch's, stacking q/k/v into its in_proj."""
    attn = ours.self_attn
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(
            torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
        ref.self_attn.in_proj_bias.copy_(
            torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]))
        ref.self_attn.out_proj.load_state_dict(attn.out_proj.state_dict())
        ref.linear1.load_state_dict(ours.ff.linear1.state_dict())
        ref.linear2.load_state_dict(ours.ff.linear2.state_dict())
        ref.norm1.load_state_dict(ours.norm1.state_dict())
        ref.norm2.load_state_dict(ours.norm2.state_dict())


def reference_layer(norm_first: bool, activation: str) -> nn.TransformerEncoderLayer:
    return nn.TransformerEncoderLayer(D, HEADS, FFN, dropout=0.1, activation=activation,
                                      batch_first=True, norm_first=norm_first).double().eval()


def randomize_norms(module: nn.Module) -> None:
    # Default LayerNorm weights are 1 and 0: random ones catch a swapped norm1/norm2.
    for m in module.modules():
        if isinstance(m, nn.LayerNorm):
            nn.init.normal_(m.weight)
            nn.init.normal_(m.bias)


PADDING = torch.tensor([[False] * T, [False] * 4 + [True] * 2, [False] + [True] * (T - 1)])
LAYER_CASES = [(nf, act, pad) for nf in (True, False) for act in ("gelu", "relu")
               for pad in (None, PADDING)]


@pytest.mark.parametrize(("norm_first", "activation", "padding"), LAYER_CASES)
def test_encoder_layer_matches_torch(norm_first: bool, activation: str,
                                     padding: torch.Tensor | None) -> None:
    torch.manual_seed(0)
    ours = EncoderLayer(D, HEADS, FFN, dropout=0.1, activation=activation,
                        norm_first=norm_first).double().eval()
    randomize_norms(ours)
    ref = reference_layer(norm_first, activation)
    copy_layer(ours, ref)
    x = torch.randn(B, T, D, dtype=torch.float64)
    out, weights = ours(x, padding)
    assert weights is None
    torch.testing.assert_close(out, ref(x, src_key_padding_mask=padding))


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("padding", [None, PADDING])
def test_encoder_stack_matches_torch_transformer_encoder(
    norm_first: bool, padding: torch.Tensor | None
) -> None:
    torch.manual_seed(0)
    config = TransformerConfig(input_shape=(T, 5), num_outputs=2, dim=D, num_heads=HEADS,
                               num_layers=3, ffn_dim=FFN, norm_first=norm_first,
                               positional="none")
    ours = TransformerEncoder(config).double().eval()
    randomize_norms(ours)
    # torch adds no final norm unless given one; ours has one exactly for pre-LN.
    final_norm = None
    if norm_first:
        final_norm = nn.LayerNorm(D).double()
        final_norm.load_state_dict(ours.norm.state_dict())
    ref = nn.TransformerEncoder(reference_layer(norm_first, "gelu"), num_layers=3,
                                norm=final_norm, enable_nested_tensor=False).eval()
    for layer, ref_layer in zip(ours.layers, ref.layers, strict=True):
        copy_layer(layer, ref_layer)
    x = torch.randn(B, T, 5, dtype=torch.float64)
    expected = ref(ours.embedding(x), src_key_padding_mask=padding)
    torch.testing.assert_close(ours(x, padding), expected)


def test_sinusoidal_positions_are_added_to_the_embedding() -> None:
    torch.manual_seed(0)
    config = TransformerConfig(input_shape=(T,), num_outputs=2, vocab_size=7, dim=D,
                               num_heads=HEADS)
    enc = TransformerEncoder(config).eval()
    tokens = torch.randint(0, 7, (B, T))
    expected = enc.embedding.weight[tokens] + enc.positional.table[:T]  # (B, T, D)
    torch.testing.assert_close(enc.embed(tokens), expected)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_classifier_heads_read_cls_or_the_mean_of_real_tokens(pool: str) -> None:
    torch.manual_seed(0)
    model = build_transformer((T,), 3, vocab_size=9, dim=D, num_heads=HEADS, pool=pool).eval()
    tokens = torch.randint(0, 9, (B, T))
    logits = model(tokens, padding_mask=PADDING)
    assert logits.shape == (B, 3)
    for b in range(B):
        n = int((~PADDING[b]).sum())
        h = model.encoder.embed(tokens[b : b + 1, :n])  # the sequence alone, unpadded
        if pool == "cls":
            h = torch.cat([model.cls, h], dim=1)
        h, _ = model.encoder.encode(h)
        summary = h[:, 0] if pool == "cls" else h.mean(dim=1)
        torch.testing.assert_close(logits[b : b + 1], model.head(summary))
    # No mask equals an all-False mask.
    torch.testing.assert_close(model(tokens), model(tokens, torch.zeros(B, T, dtype=torch.bool)))


def test_attention_maps_rows_sum_to_one_and_padding_gets_no_weight() -> None:
    torch.manual_seed(0)
    model = build_transformer((T, 4), 2, dim=D, num_heads=HEADS, num_layers=3).eval()
    x = torch.randn(B, T, 4)
    maps = model.attention_maps(x, padding_mask=PADDING)
    assert len(maps) == 3
    for weights in maps:
        assert weights.shape == (B, HEADS, T + 1, T + 1)  # index 0 is [CLS]
        torch.testing.assert_close(weights.sum(dim=-1), torch.ones(B, HEADS, T + 1))
        key_pad = torch.cat([torch.zeros(B, 1, dtype=torch.bool), PADDING], dim=1)
        assert torch.equal(weights.masked_select(key_pad[:, None, None, :]),
                           torch.zeros(int(key_pad.sum()) * HEADS * (T + 1)))
    # The maps come from the same pass that forward makes.
    h = model.encoder.layers[0].norm1(
        torch.cat([model.cls.expand(B, -1, -1), model.encoder.embed(x)], dim=1))
    pad = torch.cat([torch.zeros(B, 1, dtype=torch.bool), PADDING], dim=1)
    _, first = model.encoder.layers[0].self_attn(h, key_padding_mask=pad, need_weights=True)
    torch.testing.assert_close(maps[0], first)


def test_build_with_a_vocabulary_and_with_features_and_spec_round_trip() -> None:
    torch.manual_seed(0)
    tokens = build({"arch": "transformer", "vocab_size": 11, "dim": 32},
                   input_shape=(T,), num_outputs=5)
    assert isinstance(tokens, TransformerClassifier)
    assert isinstance(tokens.encoder.embedding, nn.Embedding)
    assert tokens.config.max_len == T  # filled in from the input length
    assert tokens(torch.randint(0, 11, (2, T))).shape == (2, 5)
    assert tokens(torch.randint(0, 11, (2, T - 2))).shape == (2, 5)  # shorter is fine

    spec = {"arch": "transformer", "dim": 24, "num_heads": 3, "num_layers": 1,
            "ffn_dim": 40, "dropout": 0.0, "norm_first": False, "activation": "relu",
            "positional": "learned", "max_len": 10, "pool": "mean"}
    model = build(spec, input_shape=(T, 4), num_outputs=3).eval()
    assert isinstance(model.encoder.embedding, nn.Linear)
    saved = json.loads(json.dumps(spec_of(model)))
    assert saved["input_shape"] == [T, 4] and saved["vocab_size"] is None
    assert {k: saved[k] for k in spec} == spec
    rebuilt = build(saved).eval()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert spec_of(rebuilt) == saved
    x = torch.randn(2, T, 4)
    torch.testing.assert_close(rebuilt(x), model(x))


def test_bad_inputs_are_data_errors() -> None:
    model = build_transformer((T, 4), 2, dim=D, num_heads=HEADS)
    with pytest.raises(DataError, match=r"expected \(B, T, 4\)"):
        model(torch.zeros(2, T, 3))
    with pytest.raises(DataError, match="more than model.max_len=6"):
        model(torch.zeros(2, T + 1, 4))
    with pytest.raises(DataError, match="padding_mask has shape"):
        model(torch.zeros(2, T, 4), padding_mask=torch.zeros(2, T + 1, dtype=torch.bool))
    token_model = build_transformer((T,), 2, vocab_size=5, dim=D, num_heads=HEADS)
    with pytest.raises(DataError, match="integer token ids"):
        token_model(torch.zeros(2, T))


@pytest.mark.parametrize(
    ("options", "input_shape", "message"),
    [
        ({}, (T,), r"model.input_shape is \[6\], but a transformer over features needs"),
        ({"vocab_size": 10}, (T, 4),
         r"model.input_shape is \[6, 4\], but a transformer over tokens"),
        ({"vocab_size": 0}, (T,), "model.vocab_size is 0"),
        ({"dim": 30, "num_heads": 4}, (T, 4),
         "model.dim is 30, not divisible by model.num_heads=4"),
        ({"dim": 0}, (T, 4), "model.dim is 0"),
        ({"num_layers": 0}, (T, 4), "model.num_layers is 0"),
        ({"ffn_dim": -1}, (T, 4), "model.ffn_dim is -1"),
        ({"dim": 9, "num_heads": 3}, (T, 4), "model.dim is 9, but sinusoidal"),
        ({"dropout": 1.0}, (T, 4), "model.dropout is 1.0"),
        ({"activation": "tanh"}, (T, 4), "model.activation is 'tanh'"),
        ({"positional": "rope"}, (T, 4), "model.positional is 'rope'"),
        ({"max_len": 4}, (T, 4), "model.max_len is 4, shorter than the 6 steps"),
        ({"pool": "max"}, (T, 4), "model.pool is 'max'"),
        ({"task_head": "step"}, (T, 4), "model.task_head is 'step'"),
        ({"positional": "rotary", "dim": 12, "num_heads": 4}, (T, 4),
         "model.dim / model.num_heads is 3, but rotary"),
        ({"norm_first": "yes"}, (T, 4), "model.norm_first has the wrong type"),
        ({"heads": 2}, (T, 4), "model.heads is not a setting of the transformer model"),
    ],
)
def test_config_errors_name_the_key(options: dict, input_shape: tuple, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build({"arch": "transformer", **options}, input_shape=input_shape, num_outputs=2)


def test_dropout_only_in_train_mode() -> None:
    torch.manual_seed(0)
    model = build_transformer((T, 4), 2, dim=D, num_heads=HEADS, dropout=0.3)
    x = torch.randn(B, T, 4)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    assert not torch.allclose(model(x), model(x))


def test_positions_let_it_recall_the_first_symbol() -> None:
    """recall_first needs order: without positions attention sees a bag of symbols."""
    bundle = recall_first(600, length=8, n_symbols=4, seed=0)
    x, y = torch.from_numpy(bundle.x), torch.from_numpy(bundle.y)
    train, val = TensorDataset(x[:450], y[:450]), TensorDataset(x[450:], y[450:])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        accuracy = {}
        for positional in ("sinusoidal", "none"):
            torch.manual_seed(0)
            model = build_transformer((8, 5), 4, dim=32, num_heads=4, ffn_dim=64,
                                      num_layers=1, dropout=0.0, positional=positional)
            result = fit(model, train, val, epochs=5, batch_size=32,
                         optim={"name": "adam", "lr": 3e-3}, seed=0)
            accuracy[positional] = result.final["val_accuracy"]
    finally:
        torch.set_num_threads(threads)
    assert accuracy["sinusoidal"] >= 0.9  # chance is 0.25
    assert accuracy["sinusoidal"] > accuracy["none"] + 0.2


# ---- token head, regression, rotary and ALiBi positions ----------------------------------

@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_token_head_gives_one_output_per_step_without_cls(pool: str) -> None:
    torch.manual_seed(0)
    model = build_transformer((T,), 3, vocab_size=9, dim=D, num_heads=HEADS, pool=pool,
                              task_head="token").eval()
    tokens = torch.randint(0, 9, (B, T))
    out = model(tokens, padding_mask=PADDING)
    assert out.shape == (B, T, 3)
    h = model.encoder.embed(tokens)
    if pool == "cls":
        h = torch.cat([model.cls.expand(B, -1, -1), h], dim=1)
        pad = torch.cat([torch.zeros(B, 1, dtype=torch.bool), PADDING], dim=1)
    else:
        pad = PADDING
    h, _ = model.encoder.encode(h, pad)
    expected = model.head(h[:, 1:] if pool == "cls" else h)  # [CLS] is not a token
    torch.testing.assert_close(out, expected)


def _train_quietly(model: nn.Module, train: TensorDataset, epochs: int, lr: float = 3e-3):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fit(model, train, epochs=epochs, batch_size=32,
                   optim={"name": "adam", "lr": lr}, device="cpu", seed=0)
    finally:
        torch.set_num_threads(threads)


def test_token_head_learns_to_tag_the_previous_tokens_parity() -> None:
    """Tag step t with the parity of token t-1 (step 0: of itself): needs the neighbour."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 6, (320, 8), generator=g)
    y = torch.cat([x[:, :1], x[:, :-1]], dim=1) % 2  # (N, T)
    torch.manual_seed(0)
    model = build_transformer((8,), 2, vocab_size=6, dim=32, num_heads=4, ffn_dim=64,
                              num_layers=1, dropout=0.0, positional="rotary", pool="mean",
                              task_head="token")
    _train_quietly(model, TensorDataset(x[:256], y[:256]), epochs=12, lr=1e-2)
    model.eval()
    with torch.no_grad():
        accuracy = (model(x[256:]).argmax(-1) == y[256:]).float().mean().item()
    assert accuracy >= 0.95  # chance is 0.5


def test_regression_target_trains_through_num_outputs() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(320, 6, 2, generator=g)
    y = x[..., :1].mean(dim=1) * 2  # (N, 1): twice the mean of the first feature
    torch.manual_seed(0)
    model = build_transformer((6, 2), 1, dim=16, num_heads=2, ffn_dim=32, num_layers=1,
                              dropout=0.0, pool="mean")
    _train_quietly(model, TensorDataset(x[:256], y[:256]), epochs=15)
    model.eval()
    with torch.no_grad():
        mse = nn.functional.mse_loss(model(x[256:]), y[256:]).item()
    baseline = y[256:].var(unbiased=False).item()  # predicting the mean
    assert model(x[:4]).shape == (4, 1)
    assert mse < 0.1 * baseline


def _heads(layer: EncoderLayer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    attn = layer.self_attn
    q = attn.q_proj(x).view(*x.shape[:2], HEADS, -1).transpose(1, 2)  # (B, h, T, d)
    k = attn.k_proj(x).view(*x.shape[:2], HEADS, -1).transpose(1, 2)
    return q, k


def test_rotary_scores_equal_a_complex_number_reference_and_only_see_distance() -> None:
    torch.manual_seed(0)
    layer = EncoderLayer(D, HEADS, FFN, relative="rotary").double().eval()
    x = torch.randn(B, T, D, dtype=torch.float64)
    _, weights = layer(x, need_weights=True)
    # LLaMA's reference: adjacent features are a complex number, turned by e^{i p theta_j}.
    q, k = _heads(layer, layer.norm1(x))
    d = D // HEADS
    theta = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # (d/2,)
    turn = torch.polar(torch.ones(T, d // 2, dtype=torch.float64),
                       torch.arange(T, dtype=torch.float64)[:, None] * theta)  # (T, d/2)
    q_c = torch.view_as_complex(q.reshape(B, HEADS, T, d // 2, 2).contiguous()) * turn
    k_c = torch.view_as_complex(k.reshape(B, HEADS, T, d // 2, 2).contiguous()) * turn
    scores = (q_c[..., :, None, :] * k_c[..., None, :, :].conj()).real.sum(-1) / d**0.5
    torch.testing.assert_close(weights, scores.softmax(dim=-1))
    # Shifting every position by the same amount leaves the scores and the output alone.
    shifted_out, shifted = layer(x, need_weights=True, positions=torch.arange(T) + 37)
    torch.testing.assert_close(shifted, weights)
    torch.testing.assert_close(shifted_out, layer(x)[0])  # the fused path agrees too
    # And the positions do matter: reversing them changes the scores.
    assert not torch.allclose(layer(x, need_weights=True, positions=torch.arange(T).flip(0))[1],
                              weights)


@pytest.mark.parametrize("padding", [None, PADDING])
def test_alibi_layer_equals_torch_layer_with_alibi_bias_as_its_mask(
    padding: torch.Tensor | None
) -> None:
    torch.manual_seed(0)
    ours = EncoderLayer(D, HEADS, FFN, dropout=0.1, relative="alibi").double().eval()
    randomize_norms(ours)
    ref = reference_layer(True, "gelu")
    copy_layer(ours, ref)
    x = torch.randn(B, T, D, dtype=torch.float64)
    bias = alibi_bias(HEADS, T, T).double()  # (h, T, T)
    # torch wants both masks of one type: the padding as a float mask, -inf at padding.
    float_pad = None if padding is None else torch.zeros(B, T, dtype=torch.float64).masked_fill(
        padding, float("-inf"))
    expected = ref(x, src_mask=bias.repeat(B, 1, 1), src_key_padding_mask=float_pad)
    torch.testing.assert_close(ours(x, padding)[0], expected)


@pytest.mark.parametrize("positional", ["rotary", "alibi"])
def test_relative_positions_make_the_encoder_invariant_to_a_shift(positional: str) -> None:
    torch.manual_seed(0)
    enc = TransformerEncoder(TransformerConfig(
        input_shape=(T,), num_outputs=2, vocab_size=7, dim=D, num_heads=HEADS,
        positional=positional)).double().eval()
    assert enc.positional is None  # nothing is added to the embeddings
    h = enc.embed(torch.randint(0, 7, (B, T)))
    base, _ = enc.encode(h, PADDING)
    torch.testing.assert_close(enc.encode(h, PADDING, positions=torch.arange(T) + 1000)[0], base)


def test_max_len_limits_only_absolute_positions() -> None:
    torch.manual_seed(0)
    x = torch.randint(0, 5, (2, 3 * T))
    for positional in ("rotary", "alibi", "none"):
        model = build_transformer((T,), 2, vocab_size=5, dim=D, num_heads=HEADS,
                                  positional=positional, task_head="token")
        assert model(x).shape == (2, 3 * T, 2)  # trained on T steps, reads 3T
    learned = build_transformer((T,), 2, vocab_size=5, dim=D, num_heads=HEADS,
                                positional="learned")
    with pytest.raises(DataError, match="learned positions exist for 6 steps only"):
        learned(x)
    sinusoidal = build_transformer((T,), 2, vocab_size=5, dim=D, num_heads=HEADS,
                                   max_len=3 * T)  # the table is built long enough
    assert sinusoidal(x).shape == (2, 2)


def test_relative_positions_add_no_weights() -> None:
    torch.manual_seed(0)
    options = {"vocab_size": 5, "dim": D, "num_heads": HEADS}
    plain = build_transformer((T,), 2, positional="none", **options)
    for positional in ("rotary", "alibi"):
        model = build_transformer((T,), 2, positional=positional, **options)
        model.load_state_dict(plain.state_dict(), strict=True)
        assert spec_of(model)["positional"] == positional
