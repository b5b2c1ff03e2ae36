"""What every ``dlforge`` command shares: its consoles, literal printing, and the wrapper
that turns input errors into a message, a hint and exit status 2 (no traceback).

Only the CLI layer prints: library functions return results (and write progress to a
stream they are passed), and the command modules here turn them into tables and lines.

Example:
    >>> @friendly
    ... def command() -> None:
    ...     raise DlforgeError("no such model 'x'", hint="dlforge registry list")
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

import typer
from rich.console import Console
from rich.text import Text

from dlforge.errors import DlforgeError

err_console = Console(stderr=True)
out_console = Console()


def say(console: Console, text: str, label: str | None = None, style: str = "bold") -> None:
    """Print ``text`` literally (paths, key paths, names and JSON hold square brackets that
    rich would otherwise read as markup), after an optional styled label."""
    line = Text.assemble((f"{label} ", style), text) if label else Text(text)
    console.print(line, highlight=False, soft_wrap=True)


def friendly(fn: Callable) -> Callable:
    """Turn dlforge's input errors into a message, a hint and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DlforgeError as err:
            rank = os.environ.get("RANK", "0")  # a data-parallel run: every rank reports, rank 0 plainly
            say(err_console, err.message, "error:" if rank == "0" else f"error (rank {rank}):", "bold red")
            if err.hint:
                say(err_console, err.hint, "hint:")
            raise typer.Exit(code=2) from None

    return wrapper
