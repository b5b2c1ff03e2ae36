"""Data: load a source into a :class:`DataBundle`, split it and prepare tensors.

Sources are built-in sets (:func:`list_builtin`), CSV files, folders of images with
one sub-folder per class, and MNIST-style IDX files; :func:`load_source` picks the
loader. :func:`prepare` makes train/val/test tensor datasets standardised with
train-split statistics; :func:`encode_rows`, :func:`encode_images` and
:func:`encode_array` turn raw inputs into the same tensors for prediction.

Example:
    >>> from dlforge.data import load_source, prepare
    >>> prepared = prepare(load_source("circles", n_samples=400), val=0.2, test=0.2)
    >>> len(prepared.train), prepared.num_outputs
    (240, 2)
"""

from __future__ import annotations

from dlforge.data.augment import AugmentConfig, BatchAugment, build_augment, resolve_augment
from dlforge.data.augment_preview import preview_grid
from dlforge.data.bundle import DataBundle
from dlforge.data.imbalance import (
    ImbalanceConfig, balanced_order, class_counts, imbalance_note, make_imbalanced, resample, resample_dataset,
)
from dlforge.data.catalog import list_builtin, load_builtin
from dlforge.data.corpus import pydoc_corpus
from dlforge.data.csv_file import load_csv
from dlforge.data.idx import load_idx, write_idx
from dlforge.data.image_folder import load_image_folder
from dlforge.data.mlm import MaskedLMDataset, mask_tokens
from dlforge.data.preprocess import (
    Prepared,
    Standardizer,
    encode_array,
    encode_pixels,
    encode_images,
    encode_rows,
    prepare,
    sample_shape,
)
from dlforge.data.sequences import (
    adding_problem, copy_memory_sequences, key_value_retrieval, key_value_tokens, recall_first,
    sequence_reversal, sequence_sorting,
)
from dlforge.data.seg_patches import SegAugmentConfig, augment_pair, sample_patches
from dlforge.data.segmentation import SegmentationBundle, load_segmentation_folder
from dlforge.data.segmentation_synthetic import synthetic_nuclei
from dlforge.data.sources import load_source
from dlforge.data.splits import Splits, split, split_indices
from dlforge.data.timeseries import (
    SERIES, ForecastContext, Series, forecast_evaluation, load_series, make_windows, prepare_series,
    seasonal_naive,
)
from dlforge.data.text import (
    TEXT_BUILTINS, TextTable, encode_text_inputs, load_text_table, text_builtin_names, text_bundle,
)
from dlforge.data.tokenizer import (
    SPECIAL_TOKENS, encode_texts, load_tokenizer, special_ids, train_wordpiece,
)

__all__ = [
    "DataBundle",
    "Prepared",
    "Splits",
    "Standardizer",
    "encode_array",
    "encode_pixels",
    "encode_images",
    "encode_rows",
    "list_builtin",
    "load_builtin",
    "load_csv",
    "load_idx",
    "load_image_folder",
    "load_source",
    "prepare",
    "sample_shape",
    "split",
    "split_indices",
    "write_idx",
    # generated sequence tasks (sequences.py)
    "adding_problem",
    "copy_memory_sequences",
    "key_value_retrieval",
    "key_value_tokens",
    "recall_first",
    "sequence_reversal",
    "sequence_sorting",
    # text: tokenizers, corpora, text tables, MLM masking (tokenizer, corpus, text, mlm)
    "AugmentConfig", "BatchAugment", "build_augment", "preview_grid", "resolve_augment",
    "ImbalanceConfig", "balanced_order", "class_counts", "imbalance_note", "make_imbalanced", "resample",
    "resample_dataset",
    "SERIES",
    "ForecastContext",
    "Series",
    "forecast_evaluation",
    "load_series",
    "make_windows",
    "prepare_series",
    "seasonal_naive",
    # segmentation: image + mask folders, synthetic nuclei (segmentation, segmentation_synthetic)
    "SegmentationBundle", "load_segmentation_folder", "synthetic_nuclei",
    # segmentation training: patches with foreground oversampling, joint image/mask augmentation (seg_patches)
    "SegAugmentConfig", "augment_pair", "sample_patches",
    "MaskedLMDataset",
    "SPECIAL_TOKENS",
    "TEXT_BUILTINS",
    "TextTable",
    "encode_text_inputs",
    "encode_texts",
    "load_text_table",
    "load_tokenizer",
    "mask_tokens",
    "pydoc_corpus",
    "special_ids",
    "text_builtin_names",
    "text_bundle",
    "train_wordpiece",
]
