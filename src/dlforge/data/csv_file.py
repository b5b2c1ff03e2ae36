"""Load a CSV file with a header row into a tabular :class:`DataBundle`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dlforge.data._checks import check_choice
from dlforge.data.bundle import DataBundle
from dlforge.data.tabular import (
    Table,
    check_no_missing,
    encode_features,
    feature_names,
    parse_float,
    read_csv,
)
from dlforge.errors import DataError

TASK_CHOICES = ("auto", "classification", "regression")
CATEGORICAL_CHOICES = ("onehot", "reject")
# task="auto" treats an integer target with at most this many values as class labels.
MAX_AUTO_CLASSES = 20


def load_csv(
    path: str | Path, *, target: str | None, task: str = "auto", categorical: str = "onehot"
) -> DataBundle:
    """Load a CSV file; ``target`` names the column to predict, the others are inputs.

    A column is numeric when every cell parses as a number; other input columns are
    one-hot encoded in sorted category order (``categorical="onehot"``) or refused
    (``"reject"``). ``task="auto"`` picks classification for a text target or an
    integer target with at most 20 distinct values, and regression otherwise.
    Missing values are refused, never imputed.

    Example:
        >>> bundle = load_csv("houses.csv", target="price")  # doctest: +SKIP
        >>> bundle.task, bundle.feature_names  # doctest: +SKIP
        ('regression', ['rooms', 'area', 'street=elm', 'street=oak'])
    """
    check_choice(task, TASK_CHOICES, "data.task")
    check_choice(categorical, CATEGORICAL_CHOICES, "data.categorical")
    table = read_csv(path)
    if target not in table.cells:
        named = "no target column was given" if target is None else f"no column '{target}'"
        raise DataError(f"{table.source} has {named}; its columns are {table.columns}",
                        hint="set data.target to the column to predict")
    columns = [c for c in table.columns if c != target]
    if not columns:
        raise DataError(f"{table.source} has no input columns besides the target '{target}'",
                        hint="add feature columns, or pick another data.target")

    categories: dict[str, list[str]] = {}
    for c in columns:
        check_no_missing(table, c)
        if any(parse_float(cell) is None for cell in table.cells[c]):
            categories[c] = sorted(set(table.cells[c]))
    if categories and categorical == "reject":
        raise DataError(
            f"{table.source}: column(s) {list(categories)} are not numeric",
            hint="set data.categorical: onehot to one-hot encode them, or drop them",
        )

    x = encode_features(table, columns, categories)  # (N, F)
    y, task, class_names = _encode_target(table, target, task)
    return DataBundle(
        name=Path(path).stem,
        x=x,
        y=y,
        task=task,
        kind="tabular",
        class_names=class_names,
        feature_names=feature_names(columns, categories),
        encoding={"kind": "tabular", "columns": columns, "categories": categories},
    )


def _encode_target(
    table: Table, target: str, task: str
) -> tuple[np.ndarray, str, list[str] | None]:
    check_no_missing(table, target, what="target column")
    cells = table.cells[target]
    numbers = [parse_float(cell) for cell in cells]
    numeric = None not in numbers
    if task == "auto":
        few_integers = numeric and len(set(numbers)) <= MAX_AUTO_CLASSES and all(
            v.is_integer() for v in numbers
        )
        task = "classification" if not numeric or few_integers else "regression"

    if task == "regression":
        if not numeric:
            i = numbers.index(None)
            raise DataError(
                f"{table.source}: target '{target}' is not numeric ({table.where(i)} holds "
                f"'{cells[i]}'), so it cannot be a regression target",
                hint="set data.task: classification, or pick another data.target",
            )
        return np.asarray(numbers, dtype=np.float32)[:, None], task, None  # (N, 1)

    # Numeric labels sort numerically ("2" before "10") and "3.0" is class "3".
    keys = numbers if numeric else cells
    distinct = sorted(set(keys))
    if len(distinct) < 2:
        raise DataError(
            f"{table.source}: target '{target}' has a single class ({_label(distinct[0])!r})",
            hint="classification needs at least two classes; check data.target",
        )
    index = {k: i for i, k in enumerate(distinct)}
    y = np.asarray([index[k] for k in keys], dtype=np.int64)  # (N,)
    return y, task, [_label(k) for k in distinct]


def _label(key: float | str) -> str:
    if isinstance(key, float):
        return str(int(key)) if key.is_integer() else repr(key)
    return key
