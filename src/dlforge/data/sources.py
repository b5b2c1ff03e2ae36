"""One entry point for every data source: :func:`load_source`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dlforge.data._checks import check_choice
from dlforge.data.bundle import DataBundle
from dlforge.data.catalog import builtin_names, load_builtin, suggest_builtin
from dlforge.data.csv_file import (
    CATEGORICAL_CHOICES, MISSING_CHOICES, TASK_CHOICES, UNKNOWN_CATEGORY_CHOICES, load_csv,
)
from dlforge.data.idx import find_idx_images, is_idx_images_file, load_idx
from dlforge.data.image_folder import COLOR_MODES, load_image_folder
from dlforge.data.segmentation import SegmentationBundle, load_segmentation_folder
from dlforge.data.tabular import is_dataframe
from dlforge.errors import DataError

_SOURCE_KINDS = ("a .csv file, a folder with one sub-folder of images per class, "
                 "a folder with images/ and masks/ (segmentation), an MNIST-style IDX folder or images file")


def _not_found(source: str) -> DataError:
    guess = suggest_builtin(source)
    names = ", ".join(builtin_names())
    if guess:
        hint = f"did you mean the built-in set '{guess}'? built-in sets: {names}"
    else:
        hint = f"set data.source to {_SOURCE_KINDS}, or a built-in set: {names}"
    return DataError(f"data source '{source}' does not exist", hint=hint)


def _reject_unused(source: str, **options: object) -> None:
    """Options that the source would silently ignore are most likely a config mistake."""
    for key, value in options.items():
        if value is not None:
            raise DataError(f"data.{key} does not apply to the source '{source}'",
                            hint=f"remove data.{key} from the config")


def load_source(
    source: str | Path | Any,
    *,
    target: str | None = None,
    task: str = "auto",
    categorical: str = "onehot",
    image_size: Sequence[int] | None = None,
    color: str | None = None,
    n_samples: int | None = None,
    noise: float | None = None,
    seed: int = 0,
    drop: Sequence[str] = (),
    id_column: str | None = None,
    missing: str = "impute",
    unknown_category: str = "error",
    fit_split: Mapping[str, Any] | None = None,
    keep: Sequence[str] = (),
) -> DataBundle | SegmentationBundle:
    """Load a built-in set name, a CSV file, a pandas DataFrame, an image folder or MNIST IDX files.

    A folder holding ``images/`` and ``masks/`` is a segmentation set
    (:func:`dlforge.data.load_segmentation_folder`, class-index masks).

    ``drop``, ``keep``, ``id_column``, ``missing``, ``unknown_category`` and ``fit_split`` apply to
    tables (CSV files and DataFrames, see :func:`dlforge.data.load_csv`).

    Built-in names win over a folder of the same name in the working directory;
    write ``./iris`` for the folder. ``target``, ``task`` and ``categorical`` apply to
    CSV files, ``image_size`` and ``color`` (None: from the images) to image folders, ``n_samples``, ``noise``
    and ``seed`` to the generated built-in sets.

    Example:
        >>> load_source("xor", n_samples=200, seed=3).x.shape
        (200, 2)
        >>> load_source("data/houses.csv", target="price").task  # doctest: +SKIP
        'regression'
    """
    check_choice(task, TASK_CHOICES, "data.task")
    check_choice(categorical, CATEGORICAL_CHOICES, "data.categorical")
    if color is not None:
        check_choice(color, tuple(COLOR_MODES), "data.color")
    check_choice(missing, MISSING_CHOICES, "data.missing")
    check_choice(unknown_category, UNKNOWN_CATEGORY_CHOICES, "data.unknown_category")
    table_options = {"drop": drop, "id_column": id_column, "missing": missing,
                     "unknown_category": unknown_category, "fit_split": fit_split, "keep": keep}
    # Defaults count as not given: only a table option the user set is refused for other sources.
    table_only = {"drop": list(drop) or None, "keep": list(keep) or None, "id_column": id_column,
                  "missing": None if missing == "impute" else missing,
                  "unknown_category": None if unknown_category == "error" else unknown_category}
    if is_dataframe(source):
        _reject_unused("dataframe", image_size=image_size, n_samples=n_samples, noise=noise)
        return load_csv(source, target=target, task=task, categorical=categorical, **table_options)
    name = str(source)
    unset_color = None if color == "grayscale" else color  # grayscale: the default of older run configs
    if name in builtin_names():
        _reject_unused(name, target=target, image_size=image_size, color=unset_color, **table_only)
        bundle = load_builtin(name, n_samples=n_samples, noise=noise, seed=seed)
        if task not in ("auto", bundle.task):
            raise DataError(f"'{name}' is a {bundle.task} data set, not {task}",
                            hint="set data.task: auto, or remove it")
        return bundle

    path = Path(name).expanduser()
    if not path.exists():
        raise _not_found(name)
    _reject_unused(name, n_samples=n_samples, noise=noise)
    if path.is_file() and path.suffix.lower() == ".csv":
        _reject_unused(name, image_size=image_size, color=unset_color)
        return load_csv(path, target=target, task=task, categorical=categorical, **table_options)
    if path.is_dir() and (path / "images").is_dir() and (path / "masks").is_dir():
        _reject_unused(name, target=target, image_size=image_size, **table_only)
        if task != "auto":
            raise DataError(f"'{name}' holds images/ and masks/, a segmentation set, so the task cannot be {task}",
                            hint="set data.task: auto, or remove it")
        return load_segmentation_folder(path, color=color)

    # Everything below is image classification.
    _reject_unused(name, target=target, **table_only)
    if task not in ("auto", "classification"):
        raise DataError(f"images in '{name}' are labelled by class, so the task cannot be {task}",
                        hint="set data.task: classification, or remove it")
    if (path.is_dir() and find_idx_images(path)) or is_idx_images_file(path):
        _reject_unused(name, image_size=image_size, color=unset_color)
        return load_idx(path)
    if path.is_dir():
        return load_image_folder(path, image_size=image_size, color=color)
    raise DataError(f"cannot tell how to load the file '{name}'",
                    hint=f"set data.source to {_SOURCE_KINDS}, or a built-in set name")
