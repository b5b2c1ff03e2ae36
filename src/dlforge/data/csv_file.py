"""Load a table (a CSV file with a header row, or a pandas DataFrame) into a :class:`DataBundle`.

Loading fits the tabular ``encoding`` (see :func:`dlforge.data.tabular.encode_table`) that
prediction replays: which columns are inputs, their types and categories, and how gaps
are filled. Fill values come from the train split only when ``fit_split`` names it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dlforge.data._checks import check_choice
from dlforge.data.bundle import DataBundle
from dlforge.data.splits import split_indices
from dlforge.data.tabular import (
    Table,
    as_table,
    check_no_missing,
    encode_table,
    examples,
    feature_names,
    is_dataframe,
    is_missing,
    parse_float,
)
from dlforge.errors import DataError

TASK_CHOICES = ("auto", "classification", "regression")
CATEGORICAL_CHOICES = ("onehot", "reject")
MISSING_CHOICES = ("impute", "error")
UNKNOWN_CATEGORY_CHOICES = ("error", "ignore")
# task="auto" treats an integer target as class labels only with at most this many values.
MAX_AUTO_CLASSES = 20
MISSING_CATEGORY = "missing"  # what a gap in a text column becomes under data.missing: impute
# Identifier checks need enough rows for "unique" to mean something.
ID_MIN_ROWS = 20
ID_DISTINCT_SHARE = 0.95  # a text column this close to one value per row names rows
MAX_ONEHOT = 50  # a text column with more categories, most of them rare, is refused too
_ID_WORD = re.compile(r"(^|[\s_.-])(id|ids|idx|index|uuid)$", re.IGNORECASE)
_ID_CAMEL = re.compile(r"[a-z0-9](Id|ID)$")  # userId, customerID (not "paid", "valid")
_SAVED_INDEX = re.compile(r"^Unnamed: \d+$")  # pandas' name for a saved index column


def load_csv(
    source: str | Path | Any,
    *,
    target: str | None,
    task: str = "auto",
    categorical: str = "onehot",
    drop: Sequence[str] = (),
    id_column: str | None = None,
    missing: str = "impute",
    unknown_category: str = "error",
    fit_split: Mapping[str, Any] | None = None,
    keep: Sequence[str] = (),
) -> DataBundle:
    """Load a CSV file or a pandas DataFrame; ``target`` names the column to predict.

    Every other column is an input, except those in ``drop`` and the ``id_column`` (its
    values are kept as ``bundle.ids`` so predictions can be joined back). A column is
    numeric when every present cell parses as a number; other input columns are one-hot
    encoded in sorted category order (``categorical="onehot"``) or refused (``"reject"``).
    Columns that name rows rather than describe them are refused (:func:`refuse_identifiers`)
    unless listed in ``keep``.

    ``missing="impute"`` fills a gap with the column's median (numbers) or the category
    ``"missing"`` (text) and adds a 0/1 ``<column>_missing`` input for each column with a
    gap in the fitted rows; ``"error"`` refuses gaps. Gaps are empty cells, NA, N/A, NaN,
    null, None, ? (any case) and non-finite numbers. A gap in the target is always
    refused with its row: a row without an answer cannot be learned from or scored.
    Fill values are fitted on the train part of the split that
    :func:`dlforge.data.split_indices` makes with ``fit_split`` (its keyword arguments:
    val, test, stratify, seed), or on all rows when it is None. ``unknown_category``
    (``"error"`` or ``"ignore"``) is stored for prediction. ``task="auto"``: see
    :func:`auto_task`.

    Example:
        >>> bundle = load_csv("houses.csv", target="price", drop=["notes"])  # doctest: +SKIP
        >>> bundle.task, bundle.feature_names  # doctest: +SKIP
        ('regression', ['rooms', 'area', 'street=elm', 'street=oak'])
    """
    check_choice(task, TASK_CHOICES, "data.task")
    check_choice(categorical, CATEGORICAL_CHOICES, "data.categorical")
    check_choice(missing, MISSING_CHOICES, "data.missing")
    check_choice(unknown_category, UNKNOWN_CATEGORY_CHOICES, "data.unknown_category")
    table = as_table(source if is_dataframe(source) else Path(source))
    columns = input_columns(table, target, drop, id_column)
    y, task, class_names, task_note = _encode_target(table, target, task)
    fit_rows = _fit_rows(y, task, class_names, fit_split)
    unknown = [c for c in keep if c not in columns]
    if unknown:
        raise DataError(f"data.keep names {examples(unknown)}, not an input column of {table.source}",
                        hint=f"its input columns are {examples(columns, 10)}")
    encoding = fit_encoding(table, columns, fit_rows, categorical=categorical, missing=missing,
                            unknown_category=unknown_category, keep=keep)
    encoding.update(target=target, id_column=id_column)
    x = encode_table(table, encoding)  # (N, F)
    notes = [n for n in (task_note, fill_note(table, encoding)) if n]
    return DataBundle(
        name="dataframe" if is_dataframe(source) else Path(source).stem,
        x=x,
        y=y,
        task=task,
        kind="tabular",
        class_names=class_names,
        feature_names=feature_names(columns, encoding["categories"], encoding["indicators"]),
        encoding=encoding,
        notes=notes,
        ids=None if id_column is None else list(table.cells[id_column]),
    )


def input_columns(
    table: Table, target: str | None, drop: Sequence[str], id_column: str | None
) -> list[str]:
    """The table's columns less the target, ``drop`` and ``id_column``; names are checked."""
    if target not in table.cells:
        named = "no target column was given" if target is None else f"no column '{target}'"
        raise DataError(f"{table.source} has {named}; its columns are [{examples(table.columns, 10)}]",
                        hint="set data.target to the column to predict")
    for key, names in (("data.drop", list(drop)), ("data.id_column", [id_column] if id_column else [])):
        unknown = [n for n in names if n not in table.cells]
        if unknown:
            raise DataError(f"{key} names {examples(unknown)}, not a column of {table.source}",
                            hint=f"its columns are {examples(table.columns, 10)}")
        if target in names:
            raise DataError(f"{key} names the target '{target}'",
                            hint=f"remove '{target}' from {key}, or pick another data.target")
    excluded = {target, id_column, *drop}
    columns = [c for c in table.columns if c not in excluded]
    if not columns:
        raise DataError(f"{table.source} has no input columns besides the target '{target}'"
                        + (" and the dropped or id columns" if len(excluded) > 1 else ""),
                        hint="add feature columns, or pick another data.target")
    return columns


def _fit_rows(
    y: np.ndarray, task: str, class_names: list[str] | None, fit_split: Mapping[str, Any] | None
) -> np.ndarray:
    """Row indices fill values are fitted on: the train split prepare() will make, or all rows."""
    if fit_split is None:
        return np.arange(len(y))
    # The split only looks at y, the task and the classes, so this is prepare()'s split.
    index = DataBundle(name="rows", x=np.zeros((len(y), 0), np.float32), y=y, task=task,
                       kind="tabular", class_names=class_names, feature_names=None, encoding={})
    return split_indices(index, **fit_split)[0]


def fit_encoding(
    table: Table, columns: list[str], fit_rows: np.ndarray, *, categorical: str = "onehot",
    missing: str = "impute", unknown_category: str = "error", keep: Sequence[str] = (),
) -> dict:
    """The tabular encoding of ``columns``: types, categories, fill values, indicators, ranges.

    Types and categories come from all rows (a validation row must not hold a category
    the model has no input for); medians, indicators and the numeric ``ranges``
    (``[min, max]``) come from ``fit_rows`` only.

    Example:
        >>> from dlforge.data.tabular import table_from_rows
        >>> t = table_from_rows([{"age": 30, "city": "Oslo"}, {"age": "", "city": "Rome"}])
        >>> enc = fit_encoding(t, ["age", "city"], np.arange(2))
        >>> enc["types"], enc["fill"], enc["indicators"]
        ({'age': 'number', 'city': 'category'}, {'age': 30.0, 'city': 'missing'}, ['age'])
    """
    if missing == "error":
        for c in columns:
            check_no_missing(table, c, hint="fill in or drop those rows, or set data.missing: impute")
    present = {c: [cell for cell in table.cells[c] if not is_missing(cell)] for c in columns}
    empty = [c for c in columns if not present[c]]
    if empty:
        raise DataError(f"{table.source}: column(s) {examples(empty)} have no values, only gaps",
                        hint=f"add them to data.drop, e.g. data.drop: [{empty[0]}]")
    types = {c: "number" if all(parse_float(v) is not None for v in present[c]) else "category"
             for c in columns}
    text = [c for c in columns if types[c] == "category"]
    if text and categorical == "reject":
        raise DataError(
            f"{table.source}: column(s) {examples(text)} are not numeric",
            hint="set data.categorical: onehot to one-hot encode them, or add them to data.drop",
        )
    refuse_identifiers(table, {c: present[c] for c in columns if c not in keep}, types)

    gaps = {c: [is_missing(table.cells[c][i]) for i in fit_rows] for c in columns}
    fill: dict[str, float | str] = {}
    ranges: dict[str, list[float]] = {}
    for c in columns:
        if types[c] == "category":
            fill[c] = MISSING_CATEGORY
            continue
        train = [parse_float(table.cells[c][i]) for i, gap in zip(fit_rows, gaps[c]) if not gap]
        values = np.asarray(train or [parse_float(v) for v in present[c]], dtype=np.float64)
        fill[c] = float(np.median(values))
        ranges[c] = [float(values.min()), float(values.max())]
    categories = {c: sorted({fill[c] if is_missing(v) else v for v in table.cells[c]}) for c in text}
    return {
        "kind": "tabular",
        "columns": columns,
        "categories": categories,
        "types": types,
        "ranges": ranges,
        "missing": missing,
        "fill": fill if missing == "impute" else {},
        "indicators": [c for c in columns if any(gaps[c])] if missing == "impute" else [],
        "unknown_category": unknown_category,
    }


def refuse_identifiers(table: Table, present: Mapping[str, list[str]], types: Mapping[str, str]) -> None:
    """Refuse input columns that name rows instead of describing them.

    As an input an identifier lets a model memorise the training rows (one-hot, one
    input per row) and makes every new row an unseen category. The rule looks only at
    text and integer columns with at least 20 present cells, since unique floats
    (3.14159, 2.71828) are measurements, not names:

    * text: distinct values in at least 95% of the rows (a respondent ID, a name), or more
      than 50 categories in more than half the rows (a one-hot block wider than useful);
    * integers: one value per row and either strictly monotone in file order (a row
      counter, a sorted key), a run of consecutive integers in any order (row numbers,
      sequential IDs), or a name like ``id``, ``user_id``, ``userId``, ``index`` or
      pandas' ``Unnamed: 0``. Unique integers alone are not enough: areas or incomes in a
      small table are unique too.

    Example:
        >>> from dlforge.data.tabular import table_from_rows
        >>> t = table_from_rows([{"row": i, "x": i % 3} for i in range(30)])
        >>> refuse_identifiers(t, t.cells, {"row": "number", "x": "number"})
        Traceback (most recent call last):
        ...
        dlforge.errors.DataError: the given rows: column 'row' looks like an identifier, ...
    """
    reasons = {c: r for c, cells in present.items() if (r := _identifier_reason(c, cells, types[c]))}
    if not reasons:
        return
    names = list(reasons)
    first = names[0]
    subject = f"column '{first}' looks" if len(names) == 1 else f"columns {examples(names, 3)} look"
    raise DataError(
        f"{table.source}: {subject} like an identifier, not a feature: {reasons[first]}",
        hint=f"add {'it' if len(names) == 1 else 'them'} to data.drop, set data.id_column: {first} "
        f"(kept beside the predictions), or data.keep: [{first}] if it is a real feature",
    )


def _identifier_reason(column: str, cells: list[str], kind: str) -> str | None:
    """Why ``column`` looks like an identifier, or None."""
    n, distinct = len(cells), len(set(cells))
    if n < ID_MIN_ROWS:
        return None
    if kind == "category":
        if distinct >= ID_DISTINCT_SHARE * n:
            return f"{distinct} distinct texts in {n} rows"
        if distinct > MAX_ONEHOT and distinct > n / 2:
            return f"{distinct} categories in {n} rows would be {distinct} one-hot inputs"
        return None
    values = [parse_float(c) for c in cells]
    if not all(v.is_integer() for v in values) or len(set(values)) < n:
        return None
    lo, hi = int(min(values)), int(max(values))
    steps = np.diff(values)
    if np.all(steps > 0) or np.all(steps < 0):
        return f"integers {int(values[0])}..{int(values[-1])}, one per row, in order"
    if hi - lo + 1 == n:
        return f"integers {lo}..{hi}, one per row"
    if _ID_WORD.search(column) or _ID_CAMEL.search(column) or _SAVED_INDEX.match(column):
        return "a different integer in every row under an identifier's name"
    return None


def fill_note(table: Table, encoding: Mapping) -> str | None:
    """``"filled 12 missing cells: age 10 (median 31.0), city 2 ('missing')"``, or None."""
    if encoding.get("missing") != "impute":
        return None
    counts = {c: sum(map(is_missing, table.cells[c])) for c in encoding["columns"]}
    filled = {c: k for c, k in counts.items() if k}
    if not filled:
        return None
    fill = encoding["fill"]
    parts = [f"{c} {k} ({'median ' if isinstance(fill[c], float) else ''}{fill[c]!r})"
             for c, k in sorted(filled.items(), key=lambda item: -item[1])]
    indicators = encoding["indicators"]
    added = f"; added {len(indicators)} <column>_missing input(s)" if indicators else ""
    return (f"filled {sum(filled.values())} missing cells: {examples(parts, quote=False)}{added} "
            "(set data.missing: error to refuse gaps instead)")


def auto_task(values: list[float | None]) -> str:
    """``"classification"`` or ``"regression"`` for a target's parsed cells, as a person would.

    Text (None values) names classes. Numbers are class codes only when they are
    integers, at most 20 distinct, and either two values (0/1, -1/1) or a run with no
    gaps (1..5 ratings, 0..9 digits, 0/1/2 labels). Integers with gaps between them
    (body weights 120, 135, 150 ...) are measured amounts: regression.

    Example:
        >>> auto_task([0.0, 2.0, 1.0, 1.0]), auto_task([120.0, 135.0, 150.0, 120.0])
        ('classification', 'regression')
    """
    if None in values:
        return "classification"
    distinct = sorted(set(values))
    if not all(v.is_integer() for v in distinct) or len(distinct) > MAX_AUTO_CLASSES:
        return "regression"
    run = distinct[-1] - distinct[0] + 1 == len(distinct)
    return "classification" if len(distinct) == 2 or run else "regression"


def _encode_target(
    table: Table, target: str, task: str
) -> tuple[np.ndarray, str, list[str] | None, str | None]:
    check_no_missing(table, target, what="target column",
                     hint="fill in the target or remove those rows: a row without an answer "
                     "cannot be trained on or scored")
    cells = table.cells[target]
    numbers = [parse_float(cell) for cell in cells]
    numeric = None not in numbers
    note = None
    if task == "auto":
        task = auto_task(numbers)
        # Only integers are ambiguous: decimals are amounts and two values are labels by any reading.
        if numeric and len(set(numbers)) > 2 and all(v.is_integer() for v in numbers):
            note = _task_note(target, task, numbers)

    if task == "regression":
        if not numeric:
            i = numbers.index(None)
            raise DataError(
                f"{table.source}: target '{target}' is not numeric ({table.where(i)} holds "
                f"'{cells[i]}'), so it cannot be a regression target",
                hint="set data.task: classification, or pick another data.target",
            )
        return np.asarray(numbers, dtype=np.float32)[:, None], task, None, note  # (N, 1)

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
    return y, task, [_label(k) for k in distinct], note


def _task_note(target: str, task: str, numbers: list[float]) -> str:
    distinct = len(set(numbers))
    other = ("classification to treat them as classes" if task == "regression"
             else "regression to predict them as amounts")
    return (f"task: auto chose {task} for '{target}' (integer, {distinct} distinct values in "
            f"{len(numbers)} rows); set data.task: {other}")


def _label(key: float | str) -> str:
    if isinstance(key, float):
        return str(int(key)) if key.is_integer() else repr(key)
    return key
