"""Reading tables of text cells and encoding them as float features.

Shared by :func:`dlforge.data.load_csv` (training) and
:func:`dlforge.data.encode_rows` (prediction) so both encode a row the same way:
numeric columns become one float each, categorical columns become one-hot blocks
in the place the column had, in sorted category order, and the ``<column>_missing``
indicators of imputed columns come last. The recipe is the tabular ``encoding``
dict (see :func:`encode_table`); :func:`dlforge.data.csv_file.fit_encoding` fits it.

A cell is missing when it is empty, one of the markers in :data:`MISSING_MARKERS`
(any case) or a non-finite number.
"""

from __future__ import annotations

import csv
import io
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dlforge.errors import DataError
from dlforge.user_files import read_text_file


@dataclass
class Table:
    """Text cells by column, with row numbers as the user would count them."""

    columns: list[str]
    cells: dict[str, list[str]]  # column -> one stripped cell per row
    row_numbers: list[int]  # for CSV files the header is row 1, as in a spreadsheet
    source: str  # names the table in messages: a file name or "the given rows"
    has_header: bool = True
    row_note: str | None = None  # how rows are counted, when not as in a spreadsheet

    def __len__(self) -> int:
        return len(self.row_numbers)

    def where(self, i: int) -> str:
        """How messages name the ``i``-th data row (0-based)."""
        note = " (row 1 is the header)" if self.has_header else ""
        if self.row_note:
            note = f" ({self.row_note})"
        return f"row {self.row_numbers[i]}{note}"


# What pandas, R, spreadsheets and UCI files write for a gap, compared case-insensitively.
MISSING_MARKERS = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})


def is_missing(cell: str) -> bool:
    """True for an empty cell, a marker of :data:`MISSING_MARKERS` or a non-finite number.

    Example:
        >>> [is_missing(c) for c in ["", "NA", "?", "inf", "0", "red"]]
        [True, True, True, True, False, False]
    """
    low = cell.lower()
    if low in MISSING_MARKERS:
        return True
    # Only "inf", "infinity" and "nan" spellings parse as non-finite: skip float() for the rest.
    if "inf" not in low and "nan" not in low:
        return False
    value = parse_float(cell)
    return value is not None and not math.isfinite(value)


def examples(values: Iterable[Any], limit: int = 5, *, quote: bool = True) -> str:
    """At most ``limit`` values for a message, then how many more: messages stay short.

    Every list of columns or categories in a data message goes through here (an unseen
    category once printed a 56 KB hint listing every ID). ``quote`` shows strings quoted.

    Example:
        >>> examples(["blue", "red"])
        "'blue', 'red'"
        >>> examples(range(100), limit=3)
        '0, 1, 2, ... (97 more)'
    """
    values = list(values)
    shown = ", ".join(repr(v) if quote else str(v) for v in values[:limit])
    more = len(values) - limit
    return f"{shown}, ... ({more} more)" if more > 0 else shown


def read_csv(path: str | Path) -> Table:
    """Read a CSV file with a header row; cells are stripped of surrounding spaces.

    Blank lines are skipped but still counted, so row numbers match a spreadsheet.

    Example:
        >>> table = read_csv("houses.csv")  # doctest: +SKIP
        >>> table.columns  # doctest: +SKIP
        ['rooms', 'area', 'price']
    """
    path = Path(path)
    # missing, a folder, unreadable, not UTF-8: one message; a byte-order mark is dropped
    text = read_text_file(path, "CSV file", error=DataError)
    try:
        records = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as err:
        raise DataError(f"{path} is not a readable CSV text file: {err}",
                        hint="save it as CSV with UTF-8 encoding") from err
    numbered = [(i, [c.strip() for c in r]) for i, r in enumerate(records, start=1) if r]
    if not numbered:
        raise DataError(f"{path} is empty", hint="a CSV file needs a header row and data rows")
    (_, header), rows = numbered[0], numbered[1:]
    _check_header(header, str(path))
    if not rows:
        raise DataError(f"{path} has a header row but no data rows",
                        hint="add at least one data row below the header")
    for number, row in rows:
        if len(row) != len(header):
            raise DataError(
                f"{path}: row {number} has {len(row)} cells but the header has "
                f"{len(header)} (row 1 is the header)",
                hint="give every row one cell per column; quote cells that contain commas",
            )
    cells = {name: [row[j] for _, row in rows] for j, name in enumerate(header)}
    return Table(header, cells, [n for n, _ in rows], str(path))


def table_from_rows(rows: Sequence[Mapping[str, object]]) -> Table:
    """Make a table from dicts (column -> value); values are turned into text.

    A row without some column, or with None there, has an empty cell; rows are
    numbered from 1.

    Example:
        >>> table_from_rows([{"age": 31, "color": "red"}, {"age": 40}]).cells
        {'age': ['31', '40'], 'color': ['red', '']}
    """
    if not rows or not all(isinstance(row, Mapping) for row in rows):
        raise DataError("expected a non-empty list of rows, each a dict of column -> value",
                        hint='pass e.g. [{"age": 31, "color": "red"}]')
    columns = list(dict.fromkeys(c for row in rows for c in row))  # first-seen order
    cells = {
        str(c): ["" if row.get(c) is None else str(row[c]).strip() for row in rows]
        for c in columns
    }
    return Table(list(cells), cells, list(range(1, len(rows) + 1)), "the given rows", False)


def is_dataframe(obj: object) -> bool:
    """True for a pandas DataFrame; pandas is not imported for the question."""
    pandas = sys.modules.get("pandas")  # a DataFrame exists only once pandas is imported
    return pandas is not None and isinstance(obj, pandas.DataFrame)


def table_from_dataframe(df: Any) -> Table:
    """Make a table from a pandas DataFrame: cells as text, NaN/None/NaT as empty cells.

    Rows are named by position counted from 0, as ``df.iloc`` does; the index is not a
    column (``df.reset_index()`` makes it one).

    Example:
        >>> import pandas as pd
        >>> table_from_dataframe(pd.DataFrame({"age": [31.5, None], "color": ["red", "blue"]})).cells
        {'age': ['31.5', ''], 'color': ['red', 'blue']}
    """
    import pandas as pd  # only a DataFrame's owner gets here, so pandas is loaded already

    if len(df) == 0 or len(df.columns) == 0:
        raise DataError("the DataFrame is empty", hint="pass a DataFrame with columns and rows")
    header = [str(c) for c in df.columns]
    _check_header(header, "the DataFrame")
    def text(value: object) -> str:
        gap = pd.isna(value)  # an array for list-like cells: those are not gaps
        return "" if isinstance(gap, (bool, np.bool_)) and gap else str(value).strip()

    cells = {name: [text(v) for v in df.iloc[:, j].tolist()] for j, name in enumerate(header)}
    return Table(header, cells, list(range(len(df))), "the DataFrame", False,
                 row_note="counted from 0, as df.iloc")


def as_table(source: object) -> Table:
    """A CSV path, a pandas DataFrame, one dict or a list of dicts (column -> value) as a Table
    (a Table passes through).

    Example:
        >>> as_table({"age": 31}).cells
        {'age': ['31']}
    """
    if isinstance(source, Table):
        return source  # already read (e.g. to take its id column too)
    if isinstance(source, (str, Path)):
        return read_csv(source)
    if is_dataframe(source):
        return table_from_dataframe(source)
    if isinstance(source, Mapping):
        return table_from_rows([source])  # one row
    return table_from_rows(source)  # type: ignore[arg-type]


def _check_header(header: list[str], source: str) -> None:
    for j, name in enumerate(header, start=1):
        if not name:
            raise DataError(
                f"{source}: column {j} has no name in the header row",
                hint="name every column (an unnamed first column is often a saved "
                "index: write it with pandas' to_csv(index=False))",
            )
    repeated = sorted({n for n in header if header.count(n) > 1})
    if repeated:
        raise DataError(f"{source}: the header repeats column(s) {repeated}",
                        hint="give every column a different name")


def parse_float(cell: str) -> float | None:
    """The cell as a float, or None when it is not a number."""
    try:
        return float(cell)
    except ValueError:
        return None


def check_no_missing(
    table: Table, column: str, *, what: str = "column", markers: bool = True, hint: str | None = None
) -> None:
    """Raise a DataError naming the column and the first missing cell (see :func:`is_missing`).

    ``markers=False`` is the rule before ``data.missing`` existed (only empty cells and
    non-finite numbers are gaps), kept for models saved then: "NA" was a category to them.
    "nan" counts as missing even in a text column: it is how most tools write a gap.
    """
    for i, cell in enumerate(table.cells[column]):
        value = parse_float(cell)
        legacy_gap = cell == "" or (value is not None and not math.isfinite(value))
        if legacy_gap or (markers and is_missing(cell)):
            shown = "an empty cell" if cell == "" else f"the value '{cell}'"
            raise DataError(
                f"{table.source}: {what} '{column}' has {shown} at {table.where(i)}",
                hint=hint or "fill in or drop rows with missing values, or set data.missing: impute",
            )


def feature_names(
    columns: list[str], categories: Mapping[str, list[str]], indicators: Sequence[str] = ()
) -> list[str]:
    """One name per encoded feature: the column, ``column=category`` for one-hot blocks,
    then ``column_missing`` for each missing-value indicator.

    Example:
        >>> feature_names(["age", "color"], {"color": ["blue", "red"]}, ["age"])
        ['age', 'color=blue', 'color=red', 'age_missing']
    """
    names: list[str] = []
    for c in columns:
        names += [f"{c}={v}" for v in categories[c]] if c in categories else [c]
    return names + [f"{c}_missing" for c in indicators]


def encode_table(table: Table, encoding: Mapping) -> np.ndarray:
    """Encode ``table`` with a tabular ``encoding`` as a float32 ``(N, F)`` array.

    Keys of ``encoding``: ``columns`` (the inputs, in order; other table columns are
    ignored), ``categories`` (column -> known categories: one-hot), ``missing``
    (``"impute"``: missing cells take ``fill[column]`` and the columns in ``indicators``
    add a 0/1 ``<column>_missing`` feature; ``"error"``: refuse them) and
    ``unknown_category`` (``"ignore"``: an unseen category is an all-zero block;
    ``"error"``: refuse it). An encoding saved before these keys existed encodes as it
    did then: gaps refused, unseen categories refused.

    Example:
        >>> t = table_from_rows([{"age": 3, "color": "red"}, {"color": "blue"}])
        >>> enc = {"columns": ["age", "color"], "categories": {"color": ["blue", "red"]},
        ...        "missing": "impute", "fill": {"age": 5.0}, "indicators": ["age"]}
        >>> encode_table(t, enc)
        array([[3., 0., 1., 0.],
               [5., 1., 0., 1.]], dtype=float32)
    """
    columns, categories = list(encoding["columns"]), encoding["categories"]
    absent = [c for c in columns if c not in table.cells]
    if absent:
        raise DataError(
            f"{table.source}: missing column(s) {examples(absent)}",
            hint=f"the model was trained on the columns {examples(columns, 10)}",
        )
    policy = encoding.get("missing")  # None: saved before data.missing existed
    fill = encoding.get("fill", {}) if policy == "impute" else {}
    if policy != "impute":
        for c in columns:
            check_no_missing(table, c, markers=policy is not None)
    blocks = []
    for c in columns:
        if c in categories:
            unknown = encoding.get("unknown_category", "error")
            blocks.append(_one_hot(table, c, categories[c], fill.get(c), unknown))  # (N, K)
        else:
            blocks.append(_numbers(table, c, fill.get(c)))  # (N, 1)
    for c in encoding.get("indicators", []) if policy == "impute" else []:
        blocks.append(np.array([[float(is_missing(cell))] for cell in table.cells[c]]))  # (N, 1)
    x = np.concatenate(blocks, axis=1) if blocks else np.zeros((len(table), 0))
    return x.astype(np.float32)


def _numbers(table: Table, column: str, fill: float | None) -> np.ndarray:
    cells = table.cells[column]
    values = [fill if fill is not None and is_missing(cell) else parse_float(cell) for cell in cells]
    if None in values:
        i = values.index(None)
        raise DataError(
            f"{table.source}: column '{column}' is numeric but {table.where(i)} "
            f"holds '{cells[i]}'",
            hint="give a number in every cell of this column",
        )
    return np.asarray(values, dtype=np.float64)[:, None]  # (N, 1)


def _one_hot(
    table: Table, column: str, known: list[str], fill: str | None, unknown: str
) -> np.ndarray:
    index = {v: k for k, v in enumerate(known)}
    out = np.zeros((len(table), len(known)), dtype=np.float64)  # (N, K)
    for i, cell in enumerate(table.cells[column]):
        imputed = fill is not None and is_missing(cell)
        k = index.get(fill if imputed else cell)
        if k is not None:
            out[i, k] = 1.0
        # A gap in a column that had none in training has no block entry: all zeros.
        elif not imputed and unknown != "ignore":
            raise DataError(
                f"{table.source}: column '{column}' has the category '{cell}' at "
                f"{table.where(i)}, which was not seen in training",
                hint=f"use one of the {len(known)} known categories: {examples(known)}; "
                "or train with data.unknown_category: ignore",
            )
    return out
