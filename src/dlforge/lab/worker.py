"""A lab worker process: ``python -m dlforge.lab.worker --threads N [--nice K]``.

It reads one job per line on stdin (``{"topic": 3, "budget": "quick", "seed": 0}``) and
answers each with one JSON line on its own stdout: ``{"finding": ...}`` (the finding's
``to_dict(with_figures=True)``) or ``{"error": "<traceback>"}``. Whatever an experiment
prints goes to stderr, so the answers stay one line each. JSON, not pickle, carries the
findings back (see :class:`dlforge.lab.pool.LabPool`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dlforge.lab.worker")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--nice", type=int, default=0, help="lower this process's CPU priority by K (os.nice)")
    args = parser.parse_args(argv)
    threads = args.threads
    if args.nice and hasattr(os, "nice"):  # Windows has no niceness: the worker runs at normal priority
        os.nice(args.nice)
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # prints (Python or C) land on stderr

    from dlforge.lab import run_topic  # after the redirect: importing may print too

    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        try:
            finding = run_topic(job["topic"], budget=job["budget"], seed=job["seed"], threads=threads)
            answer = {"finding": finding.to_dict(with_figures=True)}
        except Exception:  # noqa: BLE001 - the parent raises it with the topic and seed named
            answer = {"error": traceback.format_exc()}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


if __name__ == "__main__":
    main()
