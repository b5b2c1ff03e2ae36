"""Labelled and unlabelled text: :class:`TextTable`, its loaders and its bundles.

Text comes from a built-in set (:func:`text_builtin_names`) or a ``.csv`` / ``.jsonl``
file (:func:`load_text_table`). :func:`text_bundle` tokenizes a labelled table into
a ``kind="text"`` :class:`DataBundle` whose ``encoding`` carries the tokenizer's
own JSON, so :func:`encode_text_inputs` can turn new strings into the same ids.

Example:
    >>> from dlforge.data.tokenizer import load_tokenizer
    >>> table = load_text_table("stdlib_docs")
    >>> bundle = text_bundle(table, load_tokenizer("minilm"), max_len=32)
    >>> bundle.kind, bundle.x.dtype, bundle.input_shape, bundle.class_names
    ('text', dtype('int64'), (32,), ['collections', 'datetime', 'logging', 'math', 'os', 're'])
"""

from __future__ import annotations

import csv
import importlib
import inspect
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from dlforge.data.bundle import DataBundle
from dlforge.data.corpus import pydoc_corpus
from dlforge.data.preprocess import _encoding
from dlforge.data.tabular import examples, read_csv
from dlforge.data.tokenizer import encode_texts, special_ids
from dlforge.errors import DataError
from dlforge.user_files import read_text_file

# stdlib_docs: module -> the module names its objects report (os functions live in posix/nt).
STDLIB_DOCS_MODULES = {
    "collections": ("collections", "_collections"),
    "datetime": ("datetime", "_datetime"),
    "logging": ("logging",),
    "math": ("math",),
    "os": ("os", "posix", "nt"),
    "re": ("re",),
}
MIN_DOC_WORDS = 5  # shorter first paragraphs ("Return self.") say nothing about the module


@dataclass(repr=False)
class TextTable:
    """Texts with optional int64 labels ``(N,)`` indexing ``class_names``.

    Example:
        >>> t = TextTable("demo", ["good film", "bad film"], np.array([1, 0]), ["neg", "pos"])
        >>> len(t), t.subset(np.array([1])).texts
        (2, ['bad film'])
    """

    name: str
    texts: list[str]
    labels: np.ndarray | None
    class_names: list[str] | None

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: np.ndarray | Sequence[int]) -> TextTable:
        """The texts (and labels) at ``idx``, in that order."""
        idx = np.asarray(idx, dtype=np.int64)
        labels = None if self.labels is None else self.labels[idx]
        return TextTable(self.name, [self.texts[i] for i in idx], labels, self.class_names)

    def __repr__(self) -> str:
        classes = None if self.class_names is None else len(self.class_names)
        return f"TextTable(name={self.name!r}, n={len(self)}, classes={classes})"


# ----------------------------------------------------------------------------- built-ins
def _first_paragraph(doc: str | None) -> str:
    if not doc:
        return ""
    return " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())


def _module_docs(module: str) -> list[str]:
    """First docstring paragraphs of the module's public functions, classes and methods."""
    mod = importlib.import_module(module)
    owners = STDLIB_DOCS_MODULES[module]
    docs = []
    for name in sorted(dir(mod)):
        obj = getattr(mod, name)
        if name.startswith("_") or not (inspect.isroutine(obj) or inspect.isclass(obj)):
            continue
        if getattr(obj, "__module__", None) not in owners:  # re-exported from elsewhere
            continue
        # __doc__ rather than inspect.getdoc: an undocumented override would otherwise
        # borrow its base class's docstring, e.g. dict's under collections.
        docs.append(_first_paragraph(obj.__doc__))
        if inspect.isclass(obj):
            for attr, member in sorted(vars(obj).items()):
                if not attr.startswith("_") and (inspect.isroutine(member) or isinstance(
                        member, (classmethod, staticmethod))):
                    docs.append(_first_paragraph(getattr(obj, attr).__doc__))
    # "re.compile" or "datetime object" would name the label: cut the module's name out.
    own_name = re.compile(rf"\b{re.escape(module)}\b\.?", flags=re.IGNORECASE)
    return [" ".join(own_name.sub(" ", d).split()) for d in docs]


def stdlib_docs() -> TextTable:
    """Which standard-library module does a docstring come from? Six classes.

    The texts are the first paragraphs of the docstrings of the public functions,
    classes and methods of ``collections``, ``datetime``, ``logging``, ``math``, ``os``
    and ``re`` in the running Python's standard library, labelled by module. The
    module's own name is cut out of its texts, paragraphs under 5 words are dropped
    and a text that occurs twice is kept once (or dropped, when two modules share
    it). On CPython 3.11 (Linux) there are 418 texts: collections 40, datetime 42,
    logging 93, math 47, os 167, re 29. Order is fixed: by module, then by name.

    Example:
        >>> t = stdlib_docs()
        >>> t.class_names, bool(np.bincount(t.labels).min() >= 20)
        (['collections', 'datetime', 'logging', 'math', 'os', 're'], True)
    """
    labels_of: dict[str, set[int]] = {}
    order: list[str] = []
    class_names = sorted(STDLIB_DOCS_MODULES)
    for label, module in enumerate(class_names):
        for text in _module_docs(module):
            if len(text.split()) < MIN_DOC_WORDS:
                continue
            if text not in labels_of:
                labels_of[text] = set()
                order.append(text)
            labels_of[text].add(label)
    texts = [t for t in order if len(labels_of[t]) == 1]  # a shared text has no one label
    labels = np.asarray([next(iter(labels_of[t])) for t in texts], dtype=np.int64)
    return TextTable("stdlib_docs", texts, labels, class_names)


def pydoc_topics() -> TextTable:
    """Unlabelled English paragraphs of the pydoc help topics, for MLM pretraining.

    See :func:`dlforge.data.corpus.pydoc_corpus`; about 1,280 passages on CPython 3.11.

    Example:
        >>> pydoc_topics().labels is None
        True
    """
    return TextTable("pydoc_topics", pydoc_corpus(), None, None)


TEXT_BUILTINS: dict[str, Callable[[], TextTable]] = {
    "stdlib_docs": stdlib_docs,
    "pydoc_topics": pydoc_topics,
}


def text_builtin_names() -> list[str]:
    """Names of the built-in text sets.

    Example:
        >>> text_builtin_names()
        ['stdlib_docs', 'pydoc_topics']
    """
    return list(TEXT_BUILTINS)


# ----------------------------------------------------------------------------- files
_TEXT_HINT = "set data.text_column to the column that holds the text"
_LABEL_HINT = "set data.target to the label column, or to null for unlabelled text"


def _read_csv_records(path: Path, text_column: str, label_column: str | None
                      ) -> list[tuple[str, str, str | None]]:
    table = read_csv(path)  # names empty files, bad headers and ragged rows itself
    for column, hint in ((text_column, _TEXT_HINT), (label_column, _LABEL_HINT)):
        if column is not None and column not in table.cells:
            raise DataError(f"{path} has no column '{column}'; its columns are {examples(table.columns, 10)}",
                            hint=hint)
    labels = table.cells[label_column] if label_column is not None else [None] * len(table)
    return [(table.where(i), text, label)
            for i, (text, label) in enumerate(zip(table.cells[text_column], labels))]


def _read_jsonl_records(path: Path, text_column: str, label_column: str | None
                        ) -> list[tuple[str, str, str | None]]:
    lines = read_text_file(path, "text file", error=DataError).splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue  # blank lines are skipped but counted, so line numbers match an editor
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: line {number} is not valid JSON ({err.msg} at column "
                            f"{err.colno})", hint='write one JSON object per line, e.g. '
                            '{"text": "a fine film", "label": "pos"}') from err
        if not isinstance(obj, dict):
            raise DataError(f"{path}: line {number} holds a {type(obj).__name__}, not a JSON "
                            "object", hint='write one object per line, e.g. {"text": "..."}')
        for column, hint in ((text_column, _TEXT_HINT), (label_column, _LABEL_HINT)):
            if column is not None and column not in obj:
                raise DataError(f"{path}: line {number} has no '{column}' key; its keys are "
                                f"{examples(obj, 10)}", hint=hint)
        text = obj[text_column]
        if not isinstance(text, str):
            raise DataError(f"{path}: line {number}: '{text_column}' holds a "
                            f"{type(text).__name__}, not a string", hint=_TEXT_HINT)
        label = None if label_column is None else _label_text(obj[label_column])  # null -> ""
        records.append((f"line {number}", text.strip(), label))
    if not records:
        raise DataError(f"{path} is empty", hint='write one JSON object per line, e.g. '
                        '{"text": "a fine film", "label": "pos"}')
    return records


def _label_text(value: object) -> str:
    # JSON 1 and "1" are the same class; 1.0 too.
    if value is None:
        return ""  # reported as an empty label, like an empty CSV cell
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, str) else json.dumps(value)


def _class_order(labels: set[str]) -> list[str]:
    # Integer labels sort as numbers ("2" before "10") so class i is usually label i.
    if all(re.fullmatch(r"-?\d+", label) for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def _table_from_records(name: str, source: Path, records: list[tuple[str, str, str | None]],
                        text_column: str, label_column: str | None) -> TextTable:
    for where, text, label in records:
        if not text:
            raise DataError(f"{source}: the text in column '{text_column}' is empty at {where}",
                            hint="fill in or drop rows with empty text, or set "
                            "data.text_column to the column that holds the text")
        if label_column is not None and not label.strip():
            raise DataError(f"{source}: the label in column '{label_column}' is empty at {where}",
                            hint="fill in or drop unlabelled rows, or set data.target: null "
                            "for unlabelled text")
    texts = [text for _, text, _ in records]
    if label_column is None:
        return TextTable(name, texts, None, None)
    labels = [label.strip() for _, _, label in records]
    class_names = _class_order(set(labels))
    if len(class_names) < 2:
        raise DataError(f"{source}: label column '{label_column}' has a single class "
                        f"({class_names[0]!r})",
                        hint="classification needs at least two classes; check data.target")
    index = {c: i for i, c in enumerate(class_names)}
    return TextTable(name, texts, np.asarray([index[label] for label in labels], dtype=np.int64),
                     class_names)


def load_text_table(
    source: str | Path, *, text_column: str = "text", label_column: str | None = "label"
) -> TextTable:
    """Load a built-in text set, a ``.csv`` file (with a header row) or a ``.jsonl`` file.

    A JSONL file holds one JSON object per line. Labels are read as strings and
    become class names in sorted order (numerically when all are integers);
    ``label_column=None`` loads unlabelled text. Errors name the file, the row or
    line and the config key to change.

    Example:
        >>> table = load_text_table("stdlib_docs")
        >>> len(table.class_names), table.texts[0][:28]
        (6, 'A ChainMap groups multiple d')
    """
    name = str(source)
    if name in TEXT_BUILTINS:
        table = TEXT_BUILTINS[name]()
        return table if label_column is not None else TextTable(table.name, table.texts,
                                                                None, None)
    path = Path(source)
    if path.suffix.lower() not in (".csv", ".jsonl"):
        raise DataError(f"'{source}' is neither a built-in text set nor a .csv or .jsonl file",
                        hint=f"set data.source to one of {text_builtin_names()} or to a "
                        ".csv / .jsonl file")
    if not path.exists():  # a folder or an unreadable file: read_text_file says so
        raise DataError(f"text file {path} not found",
                        hint="check the path in data.source")
    read = _read_csv_records if path.suffix.lower() == ".csv" else _read_jsonl_records
    try:
        records = read(path, text_column, label_column)
    except csv.Error as err:  # read_csv catches the common ones; this is a safety net
        raise DataError(f"{path} is not readable CSV: {err}", hint="save it as CSV") from err
    return _table_from_records(path.stem, path, records, text_column, label_column)


# ----------------------------------------------------------------------------- tensors
def text_bundle(table: TextTable, tokenizer: Tokenizer, max_len: int) -> DataBundle:
    """Tokenize a labelled table into a ``kind="text"`` classification bundle.

    ``x`` is int64 ``(N, max_len)`` from :func:`dlforge.data.tokenizer.encode_texts`;
    ``encoding`` stores ``max_len``, the pad id, the vocabulary size and the tokenizer's
    JSON text (rebuilt with ``Tokenizer.from_str``; nothing is pickled).

    Example:
        >>> from dlforge.data.tokenizer import load_tokenizer
        >>> t = TextTable("demo", ["good film", "bad film"], np.array([1, 0]), ["neg", "pos"])
        >>> text_bundle(t, load_tokenizer("minilm"), max_len=6).x
        array([[ 101, 2204, 2143,  102,    0,    0],
               [ 101, 2919, 2143,  102,    0,    0]])
    """
    if table.labels is None or table.class_names is None:
        raise DataError(f"text set '{table.name}' has no labels, so it cannot be a "
                        "classification task",
                        hint="load it with a label column (data.target), or use it for "
                        "masked-language-model pretraining instead")
    return DataBundle(
        name=table.name,
        x=encode_texts(tokenizer, table.texts, max_len),  # (N, max_len)
        y=np.asarray(table.labels, dtype=np.int64),
        task="classification",
        kind="text",
        class_names=list(table.class_names),
        feature_names=None,
        encoding=text_encoding(tokenizer, max_len),
    )


def text_encoding(tokenizer: Tokenizer, max_len: int) -> dict:
    """The JSON-able recipe that turns strings into a text model's input (see
    :func:`encode_text_inputs`): length, pad id, vocabulary size and the tokenizer's JSON.

    Example:
        >>> from dlforge.data.tokenizer import load_tokenizer
        >>> sorted(text_encoding(load_tokenizer("minilm"), 16))
        ['kind', 'max_len', 'pad_id', 'tokenizer', 'vocab_size']
    """
    return {"kind": "text", "max_len": int(max_len), "pad_id": special_ids(tokenizer)["pad"],
            "vocab_size": tokenizer.get_vocab_size(), "tokenizer": tokenizer.to_str()}


@lru_cache(maxsize=8)
def _tokenizer_from_json(text: str) -> Tokenizer:
    # A server encodes many requests with one model: parse its tokenizer once.
    return Tokenizer.from_str(text)


def encode_text_inputs(texts: Sequence[str] | str, preprocessing: Mapping) -> torch.Tensor:
    """Raw strings as the model's input: int64 token ids ``(N, max_len)``.

    Uses the tokenizer and length stored in ``preprocessing["encoding"]`` (see
    :func:`text_bundle`), so the ids equal the training rows for the same texts.

    Example:
        >>> encode_text_inputs(["a fine film"], prepared.preprocessing)  # doctest: +SKIP
        tensor([[ 101, 1037, 2986, 2143,  102,    0,    0,    0]])
    """
    encoding = _encoding(preprocessing, "text")
    if isinstance(texts, str):
        texts = [texts]  # one text
    if not texts or not all(isinstance(t, str) for t in texts):
        raise DataError("expected a non-empty list of strings",
                        hint='pass e.g. ["a fine film", "a dull film"]')
    try:
        tokenizer = _tokenizer_from_json(encoding["tokenizer"])
    except Exception as err:  # tokenizers raises a bare Exception
        raise DataError(f"the stored tokenizer cannot be rebuilt: {err}",
                        hint="the saved preprocessing is damaged; retrain") from err
    return torch.from_numpy(encode_texts(tokenizer, list(texts), encoding["max_len"]))
