"""``dlforge variants``: measure a run and every variant made from it, then write the report.

Each variant (``RUN/variants/*``, or the folders given) is loaded as ``dlforge predict``
loads it, scored on the run's held-out split, and timed at batch 1 and 32 with 1 and 2
threads (:mod:`dlforge.compress.measure`). An exported variant is measured in ONNX Runtime
(its PyTorch weights are the parent's); the others in PyTorch.

Example:
    >>> rows, page = compare_variants("runs/digits-cnn-20261126-101500")  # doctest: +SKIP
    >>> [(r["name"], r["runtime"]) for r in rows][:2]  # doctest: +SKIP
    [('parent', 'torch'), ('quantize-static-20261205-030000', 'torch')]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dlforge.compress.measure import file_bytes, latency_grid, parameter_count, zero_share
from dlforge.compress.report import write_compression_report
from dlforge.data.preprocess import in_target_units
from dlforge.errors import ArtifactError, ConfigError, DataError
from dlforge.evaluate import evaluate
from dlforge.pipeline.compression import open_run
from dlforge.pipeline.evaluation import run_prepared
from dlforge.pipeline.run import first_samples
from dlforge.registry import load_artifact
from dlforge.registry.artifact import META_FILE, WEIGHTS_FILE, Artifact

PRIMARY_METRIC = {"classification": "accuracy", "regression": "rmse"}


def variant_folders(run_dir: Path) -> list[Path]:
    """The variant artifacts under ``RUN/variants``, oldest first."""
    root = run_dir / "variants"
    return sorted((p for p in root.iterdir() if (p / META_FILE).is_file()), key=lambda p: p.name) if root.is_dir() else []


def compare_variants(path: str | Path, variants: Sequence[str | Path] | None = None, *,
                     out: str | Path | None = None, calls: int = 30, threads: Sequence[int] = (1, 2),
                     batches: Sequence[int] = (1, 32)) -> tuple[list[dict[str, Any]], Path]:
    """Rows for the parent and each variant, and the report written to ``out`` (default
    ``RUN/variants/report.html``)."""
    run_dir, parent = open_run(path)
    if run_dir is None:
        raise ArtifactError(f"{path} is an artifact folder without its run", hint="pass the run directory")
    if parent.task not in PRIMARY_METRIC:
        raise ConfigError(f"comparing {parent.task} variants is not supported", hint="compare classification or regression runs")
    folders = [Path(v) for v in variants] if variants else variant_folders(run_dir)
    for folder in folders:
        if not (folder / META_FILE).is_file():
            raise ArtifactError(f"{folder} is not an artifact folder", hint="pass folders made by dlforge compress or export")
    prepared = run_prepared(run_dir, parent)
    held_out = prepared.test if prepared.test is not None else prepared.val
    if held_out is None:
        raise DataError("this run kept no test or validation split to score the variants on")
    data = in_target_units(held_out, prepared)
    sample = first_samples(held_out, max(batches))[0]
    metric = PRIMARY_METRIC[parent.task]
    measure = {"data": data, "sample": sample, "metric": metric, "calls": calls, "threads": threads, "batches": batches}
    rows = [_row("parent", "trained", "torch", parent, parent.path, **measure) | {"parent": True}]
    for folder in folders:
        art = load_artifact(folder)
        method = art.meta.get("variant", {}).get("method", "unknown")
        if art.meta.get("onnx"):
            rows.append(_row(folder.name, method, "onnxruntime", load_artifact(folder, runtime="onnxruntime"), folder,
                             **measure))
        else:
            rows.append(_row(folder.name, method, "torch", art, folder, **measure))
    target = Path(out) if out is not None else run_dir / "variants" / "report.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    summary = [("run", str(run_dir)), ("held-out samples", str(len(held_out))), ("metric", metric),
               ("threads available", str(torch.get_num_threads())), ("timed calls", str(calls))]
    page = write_compression_report(target, title=f"{run_dir.name} · variants", rows=rows, metric=metric, summary=summary)
    return rows, page


def _row(name: str, method: str, runtime: str, art: Artifact, folder: Path, *, data: Any, sample: torch.Tensor,
         metric: str, calls: int, threads: Sequence[int], batches: Sequence[int]) -> dict[str, Any]:
    files = ("model.onnx",) if runtime == "onnxruntime" else (WEIGHTS_FILE,)
    if runtime == "onnxruntime":
        from dlforge.registry.runtimes import OrtModule

        def model_for(t: int) -> Any:  # a session's thread count is fixed when it is made
            return OrtModule(folder / art.meta["onnx"]["file"], threads=t)
    else:
        def model_for(t: int) -> Any:
            return art.model

    timings = latency_grid(model_for, sample.to(torch.long if not torch.is_floating_point(sample) else torch.float32),
                           batches=batches, threads=threads, calls=calls)
    return {
        "name": name, "method": method, "runtime": runtime, "path": str(folder),
        "parameters": parameter_count(art.meta["spec"]), "file_bytes": file_bytes(folder, *files),
        "sparsity": zero_share(art.model) if runtime == "torch" else None,
        "metric": evaluate(art, data).metrics.get(metric), "timings": [t.to_dict() for t in timings],
    }


__all__ = ["PRIMARY_METRIC", "compare_variants", "variant_folders"]
