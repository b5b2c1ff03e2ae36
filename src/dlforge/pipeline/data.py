"""The ``data`` section of a run config, turned into model-ready splits (:class:`Prepared`).

Three families of source, told apart by ``data.source``:

* tables, images and generated sets (a built-in name, a ``.csv``, an image folder, IDX
  files): :func:`dlforge.data.load_source`, then a seeded (stratified) split;
* text (a built-in text set, a ``.jsonl`` file, or a ``.csv`` with ``data.text_column``):
  tokenized with the pretrained model's tokenizer, ``data.tokenizer``, or a WordPiece
  vocabulary trained on the train split only; ``data.task: mlm`` makes masked-LM
  pretraining data (fresh masks every epoch for train, fixed seeded masks for val/test);
* time series (``sunspots``, ``co2``): windows split in time order, scaled with
  statistics of the train span only (:func:`dlforge.data.timeseries.prepare_series`);
* segmentation (a folder with ``images/`` and ``masks/``, ``nuclei``, ``synthetic_nuclei``):
  random patches and held-out regions (:func:`dlforge.pipeline.seg_data.load_segmentation`).

A key that does not apply to the chosen source is an error, not silently ignored.

Example:
    >>> from dlforge.config import validate_config
    >>> cfg = validate_config({"data": {"source": "sunspots", "window": 22},
    ...                        "model": {"arch": "rnn"}})
    >>> prepared = load_data(cfg)
    >>> prepared.kind, prepared.input_shape
    ('sequence', (22, 1))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from torch.utils.data import TensorDataset

from dlforge.config import DataConfig, RunConfig
from dlforge.data import Prepared, load_source, prepare
from dlforge.data.bundle import DataBundle
from dlforge.data.mlm import MaskedLMDataset, mask_tokens
from dlforge.data.splits import split_indices
from dlforge.data.text import load_text_table, text_builtin_names, text_bundle, text_encoding
from dlforge.data.timeseries import SERIES, ForecastContext, Series, load_series, prepare_series
from dlforge.pipeline.seg_data import SEG_KEYS, is_segmentation, load_segmentation
from dlforge.data.tokenizer import MINILM, encode_texts, load_tokenizer, special_ids, train_wordpiece
from dlforge.errors import ConfigError

DEFAULT_MAX_LEN = 128  # tokens per text, [CLS] and [SEP] included
DEFAULT_VOCAB_SIZE = 8000
DEFAULT_MASK_PROB = 0.15  # BERT's share of masked tokens
TEXT_KEYS = ("text_column", "max_len", "tokenizer", "vocab_size", "mask_prob")
SERIES_KEYS = ("window", "horizon")
# Options of tables only (CSV files, DataFrames): refused for text and series, and for images by load_source.
OWN_TABLE_KEYS = ("drop", "keep", "id_column", "missing", "unknown_category")
TABLE_KEYS = ("target", "categorical", "image_size", "color", "n_samples", "noise", "standardize", *OWN_TABLE_KEYS)


def source_family(d: DataConfig) -> str:
    """``"series"``, ``"text"``, ``"segmentation"`` or ``"table"`` (tables, images and generated sets)."""
    if is_segmentation(d):
        return "segmentation"
    if d.source in SERIES:
        return "series"
    suffix = Path(d.source).suffix.lower()
    if d.source in text_builtin_names() or suffix == ".jsonl" or (suffix == ".csv" and d.text_column):
        return "text"
    return "table"


def _reject(d: DataConfig, keys: tuple[str, ...], family: str) -> None:
    # Compared with the defaults, not model_fields_set: a resolved config.yaml writes every key.
    given = [k for k in keys if getattr(d, k) != DataConfig.model_fields[k].get_default(call_default_factory=True)
             and not (k == "color" and d.color == "grayscale")]  # the color default of older run configs
    if given:
        raise ConfigError(f"data.{given[0]} does not apply to {family} data (source {d.source!r})",
                          hint=f"remove data.{given[0]} from the config")


def load_data(cfg: RunConfig, tokenizer: Tokenizer | None = None, frame: Any = None) -> Prepared:
    """Load and split the configured data; statistics and vocabularies come from train only.

    ``tokenizer`` overrides how text is tokenized (used to re-evaluate a saved model with
    its own tokenizer). ``frame`` is a pandas DataFrame to use as the table instead of
    ``data.source`` (which then only names it). A note from :func:`dlforge.config.load_config`
    about where a relative ``data.source`` was found comes first in the notes.
    """
    prepared = _load_family(cfg, tokenizer, frame)
    prepared.notes[:0] = cfg.source_notes
    return prepared


def _load_family(cfg: RunConfig, tokenizer: Tokenizer | None, frame: Any = None) -> Prepared:
    d = cfg.data
    family = source_family(d)
    if d.task == "mlm" and family != "text":
        raise ConfigError(f"data.task mlm needs text, but {d.source!r} is {family} data",
                          hint="use a text source (e.g. pydoc_topics, a .jsonl file) or another task")
    if frame is not None and family != "table":
        raise ConfigError(f"a DataFrame is a table, but data.source {d.source!r} names {family} data",
                          hint="set data.source to a name for the table, e.g. dataframe")
    if family != "segmentation":
        _reject(d, SEG_KEYS, family)
    if family == "segmentation":
        _reject(d, TEXT_KEYS + SERIES_KEYS + ("target", "categorical", "image_size", "standardize_target",
                                              *OWN_TABLE_KEYS), "segmentation")
        if d.task not in ("auto", "segmentation"):
            raise ConfigError(f"{d.source} is segmentation data, not {d.task}", hint="set data.task: auto")
        return load_segmentation(cfg)
    if family == "series":
        _reject(d, TEXT_KEYS + TABLE_KEYS, "time-series")
        return load_forecast(cfg)[0]
    if family == "text":
        _reject(d, SERIES_KEYS + ("categorical", "image_size", "color", "n_samples", "noise", "standardize",
                                  "standardize_target", *OWN_TABLE_KEYS), "text")
        return load_text(cfg, tokenizer)
    bundle = load_bundle(cfg, frame)
    return prepare(bundle, val=d.split.val, test=d.split.test, stratify=d.split.stratify,
                   seed=cfg.data_seed, standardize=d.standardize, standardize_target=d.standardize_target)


def load_bundle(cfg: RunConfig, frame: Any = None, *, fill_from_split: bool = True) -> DataBundle:
    """The table, image folder or generated set ``data`` names, before any split.

    Fill values for gaps in a table come from the train rows of the run's split
    (``fill_from_split``), or from every row (cross-validation, which has no one split).

    Example:
        >>> from dlforge.config import validate_config
        >>> load_bundle(validate_config({"data": {"source": "iris"}, "model": {"arch": "mlp"}})).x.shape
        (150, 4)
    """
    d = cfg.data
    _reject(d, TEXT_KEYS + SERIES_KEYS, "table or image")
    split = {"val": d.split.val, "test": d.split.test, "stratify": d.split.stratify, "seed": cfg.data_seed}
    return load_source(
        d.source if frame is None else frame, target=d.target, task=d.task, categorical=d.categorical, image_size=d.image_size,
        color=d.color, n_samples=d.n_samples, noise=d.noise, seed=cfg.data_seed,
        drop=d.drop, keep=d.keep, id_column=d.id_column, missing=d.missing, unknown_category=d.unknown_category,
        fit_split=split if fill_from_split else None,
    )


# ----------------------------------------------------------------------------- time series

def load_forecast(cfg: RunConfig) -> tuple[Prepared, ForecastContext, Series]:
    """A time-series config's splits, the context to score forecasts, and the series.

    ``data.window`` defaults to two seasons of the series.
    """
    d = cfg.data
    if d.task not in ("auto", "regression"):
        raise ConfigError(f"{d.source} is forecast by regression, not {d.task}", hint="set data.task: auto")
    series = load_series(d.source)
    window = d.window or 2 * series.period
    prepared, context = prepare_series(series, window=window, horizon=d.horizon or 1,
                                       val=d.split.val, test=d.split.test)
    return prepared, context, series


# ----------------------------------------------------------------------------- text

def pretrained_tokenizer(cfg: RunConfig) -> tuple[Tokenizer | None, int | None]:
    """The tokenizer (and text length) that ``data.tokenizer`` or ``model.pretrained`` implies.

    A Hugging Face folder (or ``minilm``) brings its vocabulary; a dlforge artifact trained
    on text brings the tokenizer and length stored in its preprocessing.
    """
    if cfg.data.tokenizer:
        return load_tokenizer(cfg.data.tokenizer), None
    pretrained = cfg.model.get("pretrained")
    if not pretrained:
        return None, None
    if pretrained == MINILM:
        return load_tokenizer(MINILM), None
    path = Path(pretrained)
    art = path / "model" if (path / "model" / "model.json").is_file() else path
    if (art / "model.json").is_file():
        encoding = json.loads((art / "model.json").read_text(encoding="utf-8")).get("preprocessing", {}).get("encoding", {})
        if encoding.get("kind") != "text":
            raise ConfigError(f"model.pretrained {pretrained} was not trained on text",
                              hint="pretrain on text first (data.task: mlm), or use a Hugging Face BERT folder")
        return Tokenizer.from_str(encoding["tokenizer"]), int(encoding["max_len"])
    if (path / "config.json").is_file():
        return load_tokenizer(path), None
    raise ConfigError(f"model.pretrained {pretrained} is neither a dlforge artifact nor a Hugging Face folder",
                      hint="point it at a run directory, its model/ folder, a folder with config.json, or 'minilm'")


def load_text(cfg: RunConfig, tokenizer: Tokenizer | None = None) -> Prepared:
    """Tokenized text splits: classification by label, or masked-LM pretraining."""
    d = cfg.data
    mlm = d.task == "mlm"
    if d.task == "regression":
        raise ConfigError("text tasks are classification or mlm", hint="set data.task: auto, classification or mlm")
    table = load_text_table(d.source, text_column=d.text_column or "text",
                            label_column=None if mlm else (d.target or "label"))
    labels = table.labels if table.labels is not None and not mlm else np.zeros(len(table), dtype=np.int64)
    # Split indices first, so a trained vocabulary only sees the train split's texts.
    index = DataBundle(name=table.name, x=np.zeros((len(table), 1), np.float32), y=labels, task="classification",
                       kind="tabular", class_names=table.class_names or ["text"], feature_names=None, encoding={})
    train_idx, val_idx, test_idx = split_indices(index, val=d.split.val, test=d.split.test,
                                                 stratify=d.split.stratify and not mlm, seed=cfg.data_seed)
    max_len = d.max_len
    if tokenizer is None:
        tokenizer, pretrained_len = pretrained_tokenizer(cfg)
        max_len = max_len or pretrained_len
        if tokenizer is None:
            tokenizer = train_wordpiece([table.texts[i] for i in train_idx],
                                        vocab_size=d.vocab_size or DEFAULT_VOCAB_SIZE)
    max_len = max_len or DEFAULT_MAX_LEN
    if not mlm:
        bundle = text_bundle(table, tokenizer, max_len)
        # prepare() makes the same seeded split as split_indices above.
        return prepare(bundle, val=d.split.val, test=d.split.test, stratify=d.split.stratify, seed=cfg.data_seed)

    ids = encode_texts(tokenizer, table.texts, max_len)  # (N, max_len)
    special = special_ids(tokenizer)
    masking = {"mask_id": special["mask"], "vocab_size": tokenizer.get_vocab_size(), "special_ids": special,
               "prob": d.mask_prob or DEFAULT_MASK_PROB}

    def held_out(idx: np.ndarray | None, offset: int) -> TensorDataset | None:
        # One fixed, seeded masking, so every epoch is scored on the same question.
        if idx is None:
            return None
        g = torch.Generator().manual_seed(cfg.data_seed * 1_000_003 + offset)
        return TensorDataset(*mask_tokens(torch.as_tensor(ids[idx]), generator=g, **masking))

    return Prepared(
        name=table.name, task="mlm", kind="text",
        train=MaskedLMDataset(ids[train_idx], seed=cfg.seed, **masking),
        val=held_out(val_idx, 1), test=held_out(test_idx, 2),
        class_names=None, feature_names=None, input_shape=(max_len,), num_outputs=tokenizer.get_vocab_size(),
        preprocessing={"encoding": text_encoding(tokenizer, max_len), "standardize": None},
    )

