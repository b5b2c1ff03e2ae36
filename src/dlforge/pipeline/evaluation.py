"""Evaluate a saved model: what ``dlforge evaluate`` does, callable from Python.

Two questions, two homes for the answer:

* **its own test split** (no ``data``): a run directory is re-evaluated on the split
  training held out (it is seeded), and its ``evaluation.json`` and ``report.html`` are
  rewritten;
* **other data** (``data``): the data is read the way the *model* was trained, from the
  artifact's own encoding (a CSV's target column, the image size and colour mode, the
  tokenizer), and scored in the target's own units (regression) or by class *names*
  (classification: a class written ``3`` in a CSV is the model's class ``"3"``). The
  result goes to a folder of its own, ``RUN/evaluations/<data>-<time>/`` (or under
  ``out``), and the run's own test evaluation and report are left untouched.

Example:
    >>> evaluation, report = evaluate_path("runs/houses-mlp-20261126-101500",
    ...                                    data="new_houses.csv")  # doctest: +SKIP
    >>> report.parent.parent.name, evaluation.metrics["rmse"]  # doctest: +SKIP
    ('evaluations', 165.2)
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from dlforge.config import load_config
from dlforge.data import encode_array, load_source
from dlforge.data.catalog import builtin_names
from dlforge.data.preprocess import in_target_units
from dlforge.data.tabular import Table, check_no_missing, examples, parse_float, read_csv
from dlforge.data.text import load_text_table
from dlforge.errors import ConfigError, DataError
from dlforge.evaluate import Evaluation, evaluate
from dlforge.evaluate.report import render_report, write_report
from dlforge.pipeline.data import load_data
from dlforge.pipeline.run import new_run_dir, write_json
from dlforge.pipeline.seg_data import SegPrepared
from dlforge.pipeline.seg_eval import rescore_run, score_folder
from dlforge.registry import load_artifact
from dlforge.registry.artifact import Artifact
from dlforge.train.state_io import atomic_write


def evaluate_path(
    path: str | Path, *, data: str | None = None, target: str | None = None, out: str | Path | None = None,
    runtime: str = "torch",
) -> tuple[Evaluation, Path | None]:
    """Evaluate the model in a run directory or artifact folder; returns the evaluation
    and the report it wrote (None when it wrote nothing).

    Without ``data`` a run directory is evaluated on its own test split and its
    ``evaluation.json`` and ``report.html`` are rewritten. With ``data`` (a built-in
    name, CSV, image folder or IDX files) the data is read as the model was trained and
    the results go to ``RUN/evaluations/<data>-<time>/`` (``evaluation.json`` and
    ``report.html``), or under ``out`` when given; an artifact folder without its run and
    without ``out`` writes nothing. ``target`` names the CSV's target column when it
    differs from the one the model was trained on (or the artifact predates recording it).
    ``runtime="onnxruntime"`` scores the artifact's exported ``model.onnx`` instead.

    Example:
        >>> evaluation, report = evaluate_path("runs/digits-cnn-20261126-101500",
        ...                                    data="my_digits/")  # doctest: +SKIP
        >>> str(report)  # doctest: +SKIP
        'runs/digits-cnn-20261126-101500/evaluations/my_digits-20261127-090000/report.html'
    """
    run_dir, art_dir = locate_run(Path(path))
    art = load_artifact(art_dir, runtime=runtime)
    if art.task == "mlm":
        raise DataError("a masked-LM model is scored by its masked-token accuracy in metrics.json",
                        hint="fine-tune it on a labelled task (model.pretrained) and evaluate that model")
    if data is None:
        if out is not None:
            raise ConfigError("--out applies to evaluations on other data (--data)",
                              hint="pass --data too, or drop --out to re-evaluate the run's own test split")
        return _evaluate_own_split(path, run_dir, art)
    if art.task == "segmentation":  # a folder of images/ and masks/, whole images in sliding windows
        if target is not None:
            raise ConfigError("--target names a CSV column; a segmentation model reads masks/", hint="remove --target")
        evaluation = score_folder(art, data)
    else:
        evaluation = evaluate(art, held_out_data(art, data, target=target))
    folder = Path(out) if out is not None else (run_dir / "evaluations" if run_dir is not None else None)
    if folder is None:
        return evaluation, None
    written = _write_data_evaluation(new_run_dir(folder, _data_name(data)), art, evaluation, data)
    return evaluation, written


def locate_run(path: Path) -> tuple[Path | None, Path]:
    """(run directory or None, artifact folder) for a run directory or an artifact folder."""
    if (path / "model" / "model.json").is_file():
        return path, path / "model"
    if path.name == "model" and (path.parent / "config.yaml").is_file():
        return path.parent, path
    return None, path


def run_prepared(run_dir: Path, art: Artifact) -> Any:
    """The run's data split again as its training split it (same config, same seed); text is
    re-tokenized with the model's own tokenizer, not a freshly trained one.

    Example:
        >>> prepared = run_prepared(Path("runs/digits-cnn-20261126-101500"), art)  # doctest: +SKIP
        >>> len(prepared.test)  # doctest: +SKIP
        270
    """
    encoding = art.preprocessing.get("encoding", {})
    tokenizer = Tokenizer.from_str(encoding["tokenizer"]) if encoding.get("kind") == "text" else None
    return load_data(load_config(run_dir / "config.yaml"), tokenizer=tokenizer)


def _evaluate_own_split(path: str | Path, run_dir: Path | None, art: Artifact) -> tuple[Evaluation, Path]:
    """Re-evaluate a run on the split its training held out; rewrite its evaluation and report."""
    if run_dir is None:
        raise DataError(f"{path} is an artifact folder without its run", hint="pass --data to say what to evaluate on")
    prepared = run_prepared(run_dir, art)
    if isinstance(prepared, SegPrepared):  # the held-out regions again, whole, in sliding windows
        scored = rescore_run(art.model, prepared)
        write_json(run_dir / "evaluation.json", scored.record)
        return scored, write_report(run_dir)
    split = "test" if prepared.test is not None else "val"
    held_out = prepared.test if prepared.test is not None else prepared.val
    if held_out is None:
        raise DataError("this run kept no test or validation split", hint="pass --data to say what to evaluate on")
    evaluation = evaluate(art, in_target_units(held_out, prepared))  # the artifact answers in target units
    write_json(run_dir / "evaluation.json", {"split": split, **evaluation.to_dict()})
    return evaluation, write_report(run_dir)


def held_out_data(art: Artifact, data: str | Path, *, target: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Model-ready inputs and targets from ``data``, read the way ``art`` was trained.

    Targets are class indices of the model (matched by class name) or, for regression,
    values in the target's own units (``evaluate`` scores an artifact in those units).

    Example:
        >>> x, y = held_out_data(load_artifact("runs/houses/model"), "new_houses.csv")  # doctest: +SKIP
        >>> y[:2]  # doctest: +SKIP
        tensor([[182000.], [149500.]])
    """
    name = str(data)
    kind = art.preprocessing.get("encoding", {}).get("kind")
    is_csv = name.lower().endswith(".csv")
    if kind == "text":
        table = load_text_table(name, label_column=target or "label")
        bundle = SimpleNamespace(y=table.labels, class_names=table.class_names, task="classification")
        return art.encode(table.texts), _labels_for(art, bundle)
    if kind == "tabular" and is_csv:
        return _csv_held_out(art, Path(name), target)
    if kind == "image" and is_csv:
        raise DataError(f"this model classifies images, but {name} is a CSV file",
                        hint="pass an image folder (one sub-folder per class) or IDX files")
    if kind == "image" and name not in builtin_names():
        # the model's own size and colour mode, whatever the folder's images are
        encoding = art.preprocessing["encoding"]
        color = "grayscale" if encoding["mode"] == "L" else "rgb"
        bundle = load_source(name, image_size=encoding["size"], color=color)
    else:
        bundle = load_source(name, target=target)
    return encode_array(bundle.x, art.preprocessing), _labels_for(art, bundle)


def _csv_held_out(art: Artifact, path: Path, target: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A CSV's rows encoded with the artifact's recipe and its target column as the model's targets."""
    table = read_csv(path)
    column = _target_column(art, table, target)
    check_no_missing(table, column, what="target column", hint="fill in or drop the rows without a true value")
    cells = table.cells[column]
    if art.task == "regression":
        values = [parse_float(cell) for cell in cells]
        if None in values:
            i = values.index(None)
            raise DataError(f"{table.source}: target '{column}' holds '{cells[i]}' at {table.where(i)}, not a number",
                            hint="a regression model is scored on numeric targets; check --target")
        y = torch.tensor(values, dtype=torch.float64)[:, None]  # (N, 1), the target's own units
    else:
        y = _class_indices(art, cells, table.source)
    return art.encode(path), y


def _target_column(art: Artifact, table: Table, target: str | None) -> str:
    """--target when given, else the column the model was trained to predict."""
    trained = art.preprocessing.get("encoding", {}).get("target")
    column = target or trained
    if column is None:
        raise DataError(f"this model does not record its target column, so {table.source} cannot be scored",
                        hint=f"pass --target with the column of true values; the columns are {examples(table.columns)}")
    if column not in table.cells:
        said = "--target" if target else "the model's target column"
        raise DataError(f"{table.source} has no column '{column}' ({said}); its columns are {examples(table.columns)}",
                        hint="pass --target with the column that holds the true values")
    return column


def _class_indices(art: Artifact, cells: list[str], source: str) -> torch.Tensor:
    """Target cells as the model's class indices, matched by name as training named them
    (an integer label written ``3`` or ``3.0`` is class ``"3"``)."""
    index = {name: i for i, name in enumerate(art.class_names or [])}
    by_value = {parse_float(name): i for name, i in index.items() if parse_float(name) is not None}

    def lookup(cell: str) -> int | None:
        number = parse_float(cell)
        return index[cell] if cell in index else by_value.get(number) if number is not None else None

    found = [lookup(cell) for cell in cells]
    unknown = sorted({cell for cell, i in zip(cells, found) if i is None})
    if unknown:
        raise DataError(f"{source}: the labels {examples(unknown)} are not classes of this model",
                        hint=f"evaluate on data labelled with the model's classes: {examples(list(index))}")
    return torch.tensor(found, dtype=torch.long)


def _labels_for(art: Any, bundle: Any) -> torch.Tensor:
    """The bundle's targets as the model's class indices, matched by class name."""
    if art.task != "classification":
        return torch.as_tensor(bundle.y)
    index = {name: i for i, name in enumerate(art.class_names or [])}
    unknown = [name for name in bundle.class_names or [] if name not in index]
    if unknown or bundle.task != "classification":
        what = examples(unknown) if unknown else bundle.task
        raise DataError(f"the data's labels {what} are not classes of this model",
                        hint=f"evaluate on data labelled with the model's classes: {examples(list(index))}")
    lookup = np.array([index[name] for name in bundle.class_names])
    return torch.as_tensor(lookup[bundle.y])


def _data_name(data: str | Path) -> str:
    """A folder-name-safe short name of the data: ``new_houses`` for ``data/new_houses.csv``."""
    name = str(data) if str(data) in builtin_names() else Path(data).stem
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "data"


def _write_data_evaluation(folder: Path, art: Artifact, evaluation: Evaluation, data: str | Path) -> Path:
    """``evaluation.json`` and a small ``report.html`` in ``folder``; returns the report's path."""
    record = {"split": "data", "data": str(data), "model": str(art.path.resolve()),
              "created": datetime.now().isoformat(timespec="seconds"), **evaluation.to_dict()}
    write_json(folder / "evaluation.json", record)
    training = art.meta.get("training") or {}
    run_info = {k: training[k] for k in ("epochs_run", "stop_reason", "best_epoch") if k in training}
    run_info.update(data=str(data), task=art.task, arch=art.meta.get("arch"))
    html = render_report(config=training.get("config") or {}, history=[], evaluation=record, run_info=run_info,
                         title=f"evaluation on {data}")
    atomic_write(folder / "report.html", html.encode("utf-8"))
    return folder / "report.html"
