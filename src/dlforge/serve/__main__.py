"""``python -m dlforge.serve --port 8000 ...``: the same server as ``dlforge serve``.

An entry shim: the command's options live in the CLI layer (:mod:`dlforge.cli.serve`);
nothing imports this module, so the server package itself never depends on the CLI.
"""

from dlforge.cli.serve import main

main()
