"""``dlforge serve``: run the model server with uvicorn (also ``python -m dlforge.serve``).

Example::

    dlforge serve --registry sqlite:///registry/registry.db --port 8000
    dlforge serve --model iris --max-batch-size 64 --max-wait-ms 5
"""

from __future__ import annotations

import functools
import logging
from typing import List, Optional

import typer

from dlforge.serve.settings import ServeSettings

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def serve_command(
    registry: Optional[str] = typer.Option(None, "--registry", help="registry database: a SQLAlchemy URL or a "
                                           "file path (default: $DLFORGE_REGISTRY or registry/registry.db)"),
    artifacts: Optional[str] = typer.Option(None, "--artifacts", help="artifact folder (default: "
                                            "$DLFORGE_ARTIFACTS or registry/artifacts)"),
    host: str = typer.Option("127.0.0.1", "--host", help="interface to bind; keep 127.0.0.1 unless a proxy or "
                             "the network must reach the server"),
    port: int = typer.Option(8000, "--port", help="TCP port"),
    max_batch_size: int = typer.Option(32, "--max-batch-size", min=1, help="samples per forward pass (1: no batching)"),
    max_wait_ms: float = typer.Option(2.0, "--max-wait-ms", min=0.0, help="how long a batch under load waits to fill"),
    max_queue: int = typer.Option(256, "--max-queue", min=1, help="samples waiting per model before 429"),
    poll_interval: float = typer.Option(2.0, "--poll-interval", min=0.01, help="seconds between checks for "
                                        "registry changes made by other processes"),
    no_auth: bool = typer.Option(False, "--no-auth", help="serve without API keys (only on a trusted machine)"),
    model: Optional[List[str]] = typer.Option(None, "--model", help="serve only this model (repeat for several)"),
    quantize: str = typer.Option("none", "--quantize", help="none, or int8: dynamic int8 Linear layers "
                                 "applied at load (CPU; faster for wide layers, see lab topic 30)"),
    log_level: str = typer.Option("info", "--log-level", help="one of " + ", ".join(LOG_LEVELS)),
) -> None:
    """Serve the registry's models over HTTP (FastAPI + uvicorn, one worker)."""
    import uvicorn

    from dlforge.errors import ConfigError
    from dlforge.serve.main import create_app

    if log_level.lower() not in LOG_LEVELS:
        raise ConfigError(f"unknown log level {log_level!r}", hint="use one of " + ", ".join(LOG_LEVELS))
    if quantize not in ("none", "int8"):
        raise ConfigError(f"unknown --quantize {quantize!r}", hint="use none or int8")
    settings = ServeSettings(registry=registry, artifacts=artifacts, host=host, port=port, require_keys=not no_auth,
                             max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_queue=max_queue,
                             poll_interval=poll_interval, models=list(model) if model else None, quantize=quantize)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if no_auth:
        typer.secho("warning: --no-auth: every route, admin ones included, is open to whoever reaches "
                    f"{host}:{port}", fg=typer.colors.YELLOW, err=True)
    if host not in LOOPBACK:
        typer.echo(f"note: binding {host}: the server is reachable from the network"
                   + ("" if no_auth else "; every request needs an API key (dlforge keys create)"), err=True)
    # One worker: the models, batchers and A/B records live in this process (scale with replicas).
    uvicorn.run(create_app(settings), host=host, port=port, workers=1, log_level=log_level.lower())


def main() -> None:
    """``python -m dlforge.serve``: the same options as ``dlforge serve``."""
    from dlforge.errors import DlforgeError

    @functools.wraps(serve_command)
    def command(**kwargs) -> None:
        try:
            serve_command(**kwargs)
        except DlforgeError as err:
            typer.secho(f"error: {err.message}", fg=typer.colors.RED, err=True)
            if err.hint:
                typer.echo(f"hint: {err.hint}", err=True)
            raise typer.Exit(code=2) from None

    app = typer.Typer(add_completion=False)
    app.command()(command)
    app()
