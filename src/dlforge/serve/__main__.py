"""``python -m dlforge.serve --port 8000 ...``: the same server as ``dlforge serve``."""

from dlforge.serve.cli import main

main()
