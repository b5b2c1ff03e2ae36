"""Reading tables of text cells and encoding them as float features.

Shared by :func:`dlforge.data.load_csv` (training) and
:func:`dlforge.data.encode_rows` (prediction) so both encode a row the same way:
numeric columns become one float each, categorical columns become one-hot blocks
in the place the column had, in sorted category order.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlforge.errors import DataError


@dataclass
class Table:
    """Text cells by column, with row numbers as the user would count them."""

    columns: list[str]
    cells: dict[str, list[str]]  # column -> one stripped cell per row
    row_numbers: list[int]  # for CSV files the header is row 1, as in a spreadsheet
    source: str  # names the table in messages: a file name or "the given rows"
    has_header: bool = True

    def __len__(self) -> int:
        return len(self.row_numbers)

    def where(self, i: int) -> str:
        """How messages name the ``i``-th data row (0-based)."""
        note = " (row 1 is the header)" if self.has_header else ""
        return f"row {self.row_numbers[i]}{note}"


def read_csv(path: str | Path) -> Table:
    """Read a CSV file with a header row; cells are stripped of surrounding spaces.

    Blank lines are skipped but still counted, so row numbers match a spreadsheet.

    Example:
        >>> table = read_csv("houses.csv")  # doctest: +SKIP
        >>> table.columns  # doctest: +SKIP
        ['rooms', 'area', 'price']
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CSV file {path} not found", hint="check the path")
    try:
        # utf-8-sig drops the byte-order mark that spreadsheet programs often write.
        with path.open(newline="", encoding="utf-8-sig") as f:
            records = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as err:
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


def check_no_missing(table: Table, column: str, *, what: str = "column") -> None:
    """Raise a DataError naming the column and the first empty, NaN or infinite cell.

    "nan" counts as missing even in a text column: it is how most tools write a gap.
    """
    for i, cell in enumerate(table.cells[column]):
        value = parse_float(cell)
        if cell == "" or (value is not None and not math.isfinite(value)):
            shown = "an empty cell" if cell == "" else f"the value '{cell}'"
            raise DataError(
                f"{table.source}: {what} '{column}' has {shown} at {table.where(i)}",
                hint="fill in or drop rows with missing values; dlforge does not impute them",
            )


def feature_names(columns: list[str], categories: Mapping[str, list[str]]) -> list[str]:
    """One name per encoded feature: the column, or ``column=category`` for one-hot blocks.

    Example:
        >>> feature_names(["age", "color"], {"color": ["blue", "red"]})
        ['age', 'color=blue', 'color=red']
    """
    names: list[str] = []
    for c in columns:
        names += [f"{c}={v}" for v in categories[c]] if c in categories else [c]
    return names


def encode_features(
    table: Table, columns: list[str], categories: Mapping[str, list[str]]
) -> np.ndarray:
    """Encode ``columns`` of ``table`` as a float32 ``(N, F)`` array; other columns are ignored.

    Example:
        >>> t = table_from_rows([{"age": 3, "color": "red"}])
        >>> encode_features(t, ["age", "color"], {"color": ["blue", "red"]})
        array([[3., 0., 1.]], dtype=float32)
    """
    missing = [c for c in columns if c not in table.cells]
    if missing:
        raise DataError(
            f"{table.source}: missing column(s) {missing}",
            hint=f"the model was trained on the columns {columns}",
        )
    blocks = []
    for c in columns:
        check_no_missing(table, c)
        cells = table.cells[c]
        if c in categories:
            blocks.append(_one_hot(table, c, categories[c]))  # (N, K)
            continue
        values = [parse_float(cell) for cell in cells]
        if None in values:
            i = values.index(None)
            raise DataError(
                f"{table.source}: column '{c}' is numeric but {table.where(i)} "
                f"holds '{cells[i]}'",
                hint="give a number in every cell of this column",
            )
        blocks.append(np.asarray(values, dtype=np.float64)[:, None])  # (N, 1)
    x = np.concatenate(blocks, axis=1) if blocks else np.zeros((len(table), 0))
    return x.astype(np.float32)


def _one_hot(table: Table, column: str, known: list[str]) -> np.ndarray:
    index = {v: k for k, v in enumerate(known)}
    out = np.zeros((len(table), len(known)), dtype=np.float64)  # (N, K)
    for i, cell in enumerate(table.cells[column]):
        k = index.get(cell)
        if k is None:
            raise DataError(
                f"{table.source}: column '{column}' has the category '{cell}' at "
                f"{table.where(i)}, which was not seen in training",
                hint=f"use one of the known categories: {known}",
            )
        out[i, k] = 1.0
    return out
