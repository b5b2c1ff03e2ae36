"""``python -m dlforge.cli ...``: the same as the ``dlforge`` command."""

from dlforge.cli import app

app()
