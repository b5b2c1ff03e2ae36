"""``dlforge lab list | run | report``: the lab's thirty experiments from the shell.

Example:
    $ dlforge lab run 12 --budget quick
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

import typer
from rich.table import Table

from dlforge.cli._common import err_console, out_console
from dlforge.cli._common import friendly as _friendly
from dlforge.cli._common import say as _say

lab_app = typer.Typer(no_args_is_help=True, help="The lab: thirty claims of the guide, each tested by a measured experiment.")


@lab_app.command("list")
@_friendly
def lab_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """List the lab's experiments by level."""
    from dlforge.lab import available_topics, experiment
    from dlforge.lab.finding import level_of

    rows = [{"topic": t, "level": level_of(t), "title": experiment(t).TITLE, "claim": experiment(t).CLAIM}
            for t in available_topics()]
    if as_json:
        print(json.dumps(rows))
        return
    table = Table(title="the lab")
    for col in ("topic", "level", "title", "claim"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r["topic"]), r["level"], r["title"], r["claim"])
    out_console.print(table)


def _run_findings(topics: list[int], budget: str, seeds: int | None, first_seed: int, workers: int, threads: int,
                  quiet: bool) -> list:
    import time

    from dlforge.lab import available_topics, run_topics

    chosen = topics or available_topics()
    if not quiet:
        how = f"{seeds} seeds each" if seeds else "each topic's seeds"
        _say(err_console, f"running {len(chosen)} topic(s) at the {budget} budget, {how} from seed {first_seed}, "
                          f"{workers} worker(s) x {threads} thread(s)...")
    start = time.perf_counter()
    findings = run_topics(chosen, budget, range(first_seed, first_seed + seeds) if seeds else None,
                          first_seed=first_seed, workers=workers, threads=threads)
    if not quiet:
        _say(err_console, f"{len(findings)} finding(s) in {time.perf_counter() - start:.0f} s of wall time")
    return findings


# Shared by `lab run` and `lab report`.
SEEDS = typer.Option(None, "--seeds", min=1, help="seeds per topic (default: the topic's own, 3+ quick, 5+ full)")
FIRST_SEED = typer.Option(0, "--first-seed", min=0, help="the first seed (another seed set: e.g. 100)")
WORKERS = typer.Option(2, "--workers", min=1, help="worker processes running seeds side by side")
THREADS = typer.Option(1, "--threads", min=1, help="CPU threads per worker")


@lab_app.command("run")
@_friendly
def lab_run(
    topics: List[int] = typer.Argument(None, help="topic numbers (default: all)"),
    all_topics: bool = typer.Option(False, "--all", help="every topic (the default when none is named)"),
    budget: str = typer.Option("quick", help="quick (seconds each) or full (minutes)"),
    seeds: int = SEEDS, first_seed: int = FIRST_SEED, workers: int = WORKERS, threads: int = THREADS,
    as_json: bool = typer.Option(False, "--json", help="print a JSON list of findings"),
    save: Path = typer.Option(None, "--save", help="also write the findings, figures included, to this JSON file "
                                                    "(dlforge lab report --from reads it)"),
) -> None:
    """Run experiments over their seeds and print each finding, its intervals and its verdict."""
    from dlforge.lab.report import format_interval, save_findings

    findings = _run_findings([] if all_topics else topics or [], budget, seeds, first_seed, workers, threads, as_json)
    if save is not None:
        save_findings(findings, save)
    if as_json:
        print(json.dumps([f.to_dict() for f in findings]))
        return
    table = Table(title=f"lab findings ({budget})")
    for col in ("topic", "level", "title", "verdict", "checks held", "seeds", "seconds"):
        table.add_column(col)
    for f in findings:
        results = f.check_results()
        held = sum(c["holds"] for c in results)
        table.add_row(str(f.topic), f.level, f.title, f.verdict, f"{held}/{len(results)}", str(len(f.seeds)),
                      f"{f.seconds:.1f}")
    out_console.print(table)
    for f in findings:  # what did not hold is the interesting part
        for c in f.check_results():
            if not c["holds"]:
                _say(out_console, f"topic {f.topic}: {c['check']} is {c['outcome']} "
                                  f"(measured {format_interval(c)}, bound {c['bound']:.4g})")
    _say(out_console, "numbers, rules and figures: dlforge lab run --json, or dlforge lab report")


@lab_app.command("report")
@_friendly
def lab_report(
    topics: List[int] = typer.Argument(None, help="topic numbers (default: all)"),
    budget: str = typer.Option("quick", help="quick or full"),
    seeds: int = SEEDS, first_seed: int = FIRST_SEED, workers: int = WORKERS, threads: int = THREADS,
    output: Path = typer.Option(Path("lab_report.html"), "--output", "-o"),
    sources: List[Path] = typer.Option(None, "--from", help="findings saved by `dlforge lab run --save` (repeatable; "
                                                            "a later file's topic replaces an earlier one's): "
                                                            "nothing is run"),
) -> None:
    """Run experiments over their seeds and write one HTML page with every finding."""
    from dlforge.lab.report import load_findings, write_lab_report

    if sources:
        findings = load_findings(sources, topics or [])
    else:
        findings = _run_findings(topics or [], budget, seeds, first_seed, workers, threads, False)
    path = write_lab_report(findings, output)
    _say(out_console, f"wrote {path}")
