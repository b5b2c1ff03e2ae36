"""``dlforge predict``: raw input files in, one output row per input out.

The artifact encodes the inputs and refuses what the model cannot take
(:meth:`dlforge.registry.artifact.Artifact.encode`, the one encoder the server uses too);
this module reads text files, keeps what lets a user join answers back to their rows (the
model's ``data.id_column``, else the row number; the path or text of other inputs) and
names the outputs (the target's name for regression; prediction, confidence and
``p_<class>`` for classification). The CLI only prints or writes the rows.

Example:
    >>> result = predict_files("runs/houses-20261204-101500", ["new_houses.csv"])  # doctest: +SKIP
    >>> result.key, result.rows[0]  # doctest: +SKIP
    ('house_id', {'house_id': 'H-17', 'price': 212500.0})
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from dlforge.data.tabular import read_csv
from dlforge.data.text import load_text_table
from dlforge.errors import DataError
from dlforge.registry import load_artifact
from dlforge.registry.artifact import Artifact
from dlforge.registry.segment import class_areas, mask_bytes
from dlforge.train.state_io import atomic_write
from dlforge.user_files import read_text_file


@dataclass
class Predictions:
    """Output rows keyed by ``key`` (``input``, ``row`` or the id column), and what made them."""

    key: str
    rows: list[dict[str, Any]]
    task: str
    kind: str | None  # the encoding kind: tabular, image, text, sequence, segmentation
    masks: list[Any] | None = None  # segmentation: one label map per input


def predict_files(model_dir: str | Path, inputs: Sequence[Path], *, runtime: str = "torch") -> Predictions:
    """Predict with the artifact in ``model_dir`` on a CSV file, image files, text files or
    series files (one window each: the file's last steps); ``runtime="onnxruntime"`` runs
    the artifact's exported ``model.onnx`` instead of the PyTorch model."""
    art = load_artifact(model_dir, runtime=runtime)
    for p in inputs:
        if not p.exists():
            raise DataError(f"input {p} does not exist", hint="pass a CSV file or image files")
    kind = art.preprocessing.get("encoding", {}).get("kind")
    if kind == "segmentation":  # any image size: sliding windows, then the run's post-processing
        masks = art.segment([str(p) for p in inputs])
        rows = [{"input": str(p), "size": "x".join(map(str, m.shape)),
                 **{f"area_{n}": a for n, a in class_areas(m, art.class_names).items()}} for p, m in zip(inputs, masks)]
        return Predictions("input", rows, art.task, kind, masks)
    if kind == "text":
        texts = read_texts(inputs)
        x, key, ids = art.encode(texts), "input", texts
    elif kind == "tabular":
        if len(inputs) != 1 or inputs[0].suffix.lower() != ".csv":
            raise DataError("this model takes tabular rows", hint="pass one CSV file with the training columns")
        table = read_csv(inputs[0])  # read once: encoded, and its id column kept
        x = art.encode(table)
        key, ids = _row_ids(art, table.cells, len(table))
    else:
        x, key, ids = art.encode(inputs), "input", [str(p) for p in inputs]
    return Predictions(key, prediction_rows(art, art.predict(x), key, ids), art.task, kind)


def write_masks(result: Predictions, output: Path) -> list[Path]:
    """Write a segmentation's masks: to ``output`` itself for one input (``.png``; ``.tif``
    for 3D), or as ``output/<input stem>.png`` for several. Returns the files written."""
    assert result.masks is not None
    if len(result.masks) == 1 and output.suffix:
        targets = [output]
    else:
        if output.suffix:
            raise DataError(f"{len(result.masks)} inputs give {len(result.masks)} masks, but {output} is one file",
                            hint="give a folder for --output, e.g. masks/")
        output.mkdir(parents=True, exist_ok=True)
        targets = [output / Path(str(r["input"])).stem for r in result.rows]
    written = []
    for target, mask in zip(targets, result.masks):
        data, media = mask_bytes(mask)
        suffix = ".png" if media == "image/png" else ".tif"
        path = target if target.suffix.lower() in ((".png",) if suffix == ".png" else (".tif", ".tiff")) else \
            target.with_suffix(suffix)
        atomic_write(path, data)
        written.append(path)
    return written


def read_texts(paths: Sequence[Path]) -> list[str]:
    """Texts to classify: .txt files give one text per non-empty line; .jsonl and .csv
    files give their "text" field."""
    texts: list[str] = []
    for p in paths:
        if p.suffix.lower() == ".txt":
            lines = read_text_file(p, "text file", error=DataError).splitlines()
            texts += [line.strip() for line in lines if line.strip()]
        else:
            texts += load_text_table(p, label_column=None).texts
    return texts


def _row_ids(art: Artifact, cells: dict[str, list[str]], n: int) -> tuple[str, list[Any]]:
    """(column name, one id per CSV row): the model's ``data.id_column`` when the CSV has it,
    so predictions join back to the user's rows; else 1-based data-row numbers, as ``row``."""
    id_column = art.preprocessing.get("encoding", {}).get("id_column")
    if id_column and id_column in cells:
        return id_column, cells[id_column]
    return "row", list(range(1, n + 1))


def prediction_rows(art: Artifact, pred: dict, key: str, ids: list[Any]) -> list[dict[str, Any]]:
    """One output row per input: ``key`` (input path or text, id column or row number), then
    the target's value(s) for regression, or prediction, confidence and p_<class>."""
    if art.task != "classification":
        values = pred["values"]
        # named after the target the model learned; artifacts from before it was recorded say "prediction"
        name = art.preprocessing.get("encoding", {}).get("target") or "prediction"
        names = [name] if values.shape[1] == 1 else [f"{name}_{j}" for j in range(values.shape[1])]
        return [{key: i, **dict(zip(names, vals))} for i, vals in zip(ids, values.tolist())]
    probs = pred["probabilities"]
    names = art.class_names or [str(i) for i in range(probs.shape[1])]
    return [
        {key: i, "prediction": label, "confidence": float(p.max()), **{f"p_{n}": float(v) for n, v in zip(names, p)}}
        for i, label, p in zip(ids, pred["labels"], probs)
    ]
