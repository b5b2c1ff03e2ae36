"""``dlforge compress``, ``dlforge export`` and ``dlforge variants``: smaller, faster copies of
a trained run, each an artifact folder, and one report that measures them all.

Example:
    $ dlforge compress runs/digits-cnn-20261126-101500 --method quantize-static
    $ dlforge export runs/digits-cnn-20261126-101500 --format onnx --quantize dynamic
    $ dlforge variants runs/digits-cnn-20261126-101500     # writes RUN/variants/report.html
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import typer

from dlforge.cli._common import err_console, friendly, out_console, say

app = typer.Typer()


def _student(text: Optional[str]) -> Any:
    """The --student spec: inline YAML/JSON (``{arch: mlp, hidden: [32]}``) or a YAML file."""
    if text is None:
        return None
    from dlforge.errors import ConfigError
    from dlforge.user_files import parse_yaml, read_yaml

    spec = (read_yaml(text, "student spec") if Path(text).suffix in (".yaml", ".yml", ".json")
            else parse_yaml(text, "--student"))
    if not isinstance(spec, dict):
        raise ConfigError("--student must be a model spec mapping", hint="e.g. --student '{arch: mlp, hidden: [32]}'")
    return spec


@app.command("compress")
@friendly
def compress_command(
    run: Path = typer.Argument(..., help="a run directory (its data is used to calibrate, retrain or distill)"),
    method: str = typer.Option(..., "--method", help="distill, prune, prune-structured, quantize-dynamic, "
                               "quantize-static or qat"),
    out: Optional[Path] = typer.Option(None, "--out", help="the variant's folder (default RUN/variants/<method>-<time>)"),
    amount: Optional[float] = typer.Option(None, "--amount", help="prune: share of weights (or units) to remove"),
    scope: Optional[str] = typer.Option(None, "--scope", help="prune: global (all layers ranked together) or layer"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="retraining epochs (prune: per round; qat) or the "
                                         "student's (distill)"),
    steps: Optional[int] = typer.Option(None, "--steps", help="prune with --epochs: prune-retrain rounds"),
    rewind: bool = typer.Option(False, "--rewind", help="prune: rewind surviving weights to the parent's before "
                                "each retraining (lottery-ticket rewinding)"),
    student: Optional[str] = typer.Option(None, "--student", help="distill: the student spec, inline YAML or a file"),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="distill: softening temperature T"),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="distill: weight of the hard labels (1 - alpha: teacher)"),
    intermediate: bool = typer.Option(False, "--intermediate", help="distill, two BERTs: match hidden states and "
                                      "attention too (DistilBERT / MiniLM style)"),
    as_json: bool = typer.Option(False, "--json", help="print the variant's record as one JSON object"),
) -> None:
    """Make a smaller or faster variant of a trained run: an artifact that evaluate, predict,
    the registry and the server use unchanged."""
    from dlforge.pipeline.compression import compress_run
    from dlforge.registry.artifact import META_FILE

    given = {"amount": amount, "scope": scope, "epochs": epochs, "steps": steps, "rewind": rewind or None,
             "student": _student(student), "temperature": temperature, "alpha": alpha,
             "intermediate": intermediate or None}
    folder = compress_run(run, method, out=out, **{k: v for k, v in given.items() if v is not None})
    record = json.loads((folder / META_FILE).read_text(encoding="utf-8"))["variant"]
    if as_json:
        print(json.dumps({"path": str(folder), **record}))
        return
    say(out_console, str(folder), "wrote:")
    for key in ("sparsity", "parameters_before", "parameters_after"):
        if key in record:
            say(out_console, str(record[key]), f"{key}:")
    metric = "accuracy" if "accuracy" in record.get("metrics", {}) else "rmse"
    if metric in record.get("metrics", {}):
        say(out_console, f"{record['metrics'][metric]:.4f} (parent {record['parent_metrics'][metric]:.4f})",
            f"test {metric}:")
    say(err_console, f"compare every variant: dlforge variants {run}", "next:")


@app.command("export")
@friendly
def export_command(
    run: Path = typer.Argument(..., help="a run directory or an artifact folder"),
    fmt: str = typer.Option("onnx", "--format", help="onnx"),
    quantize: str = typer.Option("none", "--quantize", help="none, dynamic (ONNX Runtime int8) or static "
                                 "(QDQ int8 calibrated on the run's training split)"),
    out: Optional[Path] = typer.Option(None, "--out", help="the exported artifact's folder "
                                       "(default RUN/variants/onnx-<time>)"),
    as_json: bool = typer.Option(False, "--json", help="print the parity record as one JSON object"),
) -> None:
    """Export a model to ONNX (dynamic batch and sequence length) beside its weights, with a
    parity check against PyTorch on held-out data; run it with --runtime onnxruntime."""
    from dlforge.pipeline.compression import export_run
    from dlforge.registry.artifact import META_FILE

    folder = export_run(run, fmt=fmt, quantize=quantize, out=out)
    onnx = json.loads((folder / META_FILE).read_text(encoding="utf-8"))["onnx"]
    if as_json:
        print(json.dumps({"path": str(folder), **onnx}))
        return
    say(out_console, str(folder / onnx["file"]), "wrote:")
    parity = onnx["parity"]
    say(out_console, f"max |onnx - torch| {parity['max_abs_diff']:.2e}, argmax agreement "
                     f"{parity['argmax_agreement']:.4f} on {parity['n']} held-out samples", "parity:")
    say(err_console, f"dlforge predict {folder} INPUTS --runtime onnxruntime", "next:")


@app.command("variants")
@friendly
def variants_command(
    run: Path = typer.Argument(..., help="a run directory"),
    variants: Optional[List[Path]] = typer.Argument(None, help="variant folders (default: every RUN/variants/*)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="the report (default RUN/variants/report.html)"),
    calls: int = typer.Option(30, "--calls", min=3, help="timed forward calls per batch size and thread count"),
    as_json: bool = typer.Option(False, "--json", help="print the rows as JSON"),
) -> None:
    """Measure the run and its variants (size, latency at batch 1 and 32 with 1 and 2
    threads, held-out metric) and write the compression report."""
    from rich.table import Table

    from dlforge.pipeline.compression_report import compare_variants

    rows, page = compare_variants(run, variants, out=out, calls=calls)
    if as_json:
        print(json.dumps({"report": str(page), "rows": rows}))
        return
    table = Table()
    for col in ("variant", "method", "runtime", "parameters", "KiB", "b1 p50 ms", "b32 p50 ms", "metric"):
        table.add_column(col, justify="left" if col in ("variant", "method", "runtime") else "right",
                         overflow="fold")
    for r in rows:
        one = {(t["threads"], t["batch"]): t["p50_ms"] for t in r["timings"]}
        table.add_row(r["name"], r["method"], r["runtime"], f"{r['parameters']:,}", f"{r['file_bytes'] / 1024:.1f}",
                      f"{one.get((1, 1), float('nan')):.3f}", f"{one.get((1, 32), float('nan')):.3f}",
                      "n/a" if r["metric"] is None else f"{r['metric']:.4f}")
    out_console.print(table)
    say(out_console, str(page), "report:")
