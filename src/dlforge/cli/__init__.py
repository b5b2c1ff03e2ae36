"""The ``dlforge`` command: one Typer app, one module per command group.

Commands parse their options, call one library function and print its result; heavy
libraries (torch, FastAPI, Optuna) are imported inside the commands, so ``dlforge --help``
stays fast. Input errors (config, data, artifact) print one message and a hint, no
traceback, and exit with status 2 (:func:`dlforge.cli._common.friendly`).

Example:
    $ dlforge quickstart
    $ python -c "from dlforge.cli import app; app()" --help
"""

from __future__ import annotations

import typer

from dlforge.cli import compress, experiments, lab, registry, runs, runs_index, serve

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="dlforge: build, train, evaluate and serve deep-learning models.")
app.add_typer(runs.app)  # train, resume, quickstart, predict, evaluate, report
app.add_typer(experiments.app)  # cv, tune, augment-preview, ensemble, learning-curve, datasets
app.add_typer(serve.app)  # serve
app.add_typer(compress.app)  # compress, export, variants
app.add_typer(registry.registry_app, name="registry", help="The versioned model store: register, list, alias, roll back.")
app.add_typer(registry.keys_app, name="keys", help="API keys for dlforge serve (stored hashed).")
app.add_typer(lab.lab_app, name="lab")
app.add_typer(runs_index.runs_index_app, name="runs")  # list, show, compare

__all__ = ["app"]
