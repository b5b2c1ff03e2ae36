"""``dlforge serve``: run the model server with uvicorn (also ``python -m dlforge.cli serve``).

Example::

    dlforge serve --registry sqlite:///registry/registry.db --port 8000
    dlforge serve --model iris --max-batch-size 64 --max-wait-ms 5
    dlforge serve --grpc-port 8001          # also the V2 protocol over gRPC (pip install 'dlforge[grpc]')
    dlforge serve --header-timeout 10 --body-timeout 30 --keep-alive 5 --max-connections 900
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from typing import List, Optional

import typer

from dlforge.cli._common import friendly
from dlforge.serve.settings import ServeSettings

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
_DEFAULT = {name: field.default for name, field in ServeSettings.model_fields.items()}


@friendly  # input errors (a bad option, too low an open-files limit): a message, a hint, exit 2
def serve_command(
    registry: Optional[str] = typer.Option(None, "--registry", help="registry database: a SQLAlchemy URL or a "
                                           "file path (default: $DLFORGE_REGISTRY or registry/registry.db)"),
    artifacts: Optional[str] = typer.Option(None, "--artifacts", help="artifact folder (default: "
                                            "$DLFORGE_ARTIFACTS or registry/artifacts)"),
    host: str = typer.Option("127.0.0.1", "--host", help="interface to bind; keep 127.0.0.1 unless a proxy or "
                             "the network must reach the server"),
    port: int = typer.Option(8000, "--port", help="TCP port"),
    grpc_port: Optional[int] = typer.Option(None, "--grpc-port", min=1, max=65535, help="also serve the Open "
                                            "Inference Protocol over gRPC on this port (needs dlforge[grpc])"),
    max_batch_size: int = typer.Option(32, "--max-batch-size", min=1, help="samples per forward pass (1: no batching)"),
    max_wait_ms: float = typer.Option(2.0, "--max-wait-ms", min=0.0, help="how long a batch under load waits to fill"),
    max_queue: int = typer.Option(256, "--max-queue", min=1, help="samples waiting per model before 429"),
    poll_interval: float = typer.Option(2.0, "--poll-interval", min=0.01, help="seconds between checks for "
                                        "registry changes made by other processes"),
    no_auth: bool = typer.Option(False, "--no-auth", help="serve without API keys (only on a trusted machine)"),
    model: Optional[List[str]] = typer.Option(None, "--model", help="serve only this model (repeat for several)"),
    quantize: str = typer.Option("none", "--quantize", help="none, or int8: dynamic int8 Linear layers "
                                 "applied at load (CPU; faster for wide layers, see lab topic 30)"),
    runtime: str = typer.Option("torch", "--runtime", help="torch, or onnxruntime: serve each version's "
                                "model.onnx (made by dlforge export; a version without one fails to load)"),
    max_tokens: int = typer.Option(_DEFAULT["max_tokens"], "--max-tokens", min=1, help="text tokens per predict "
                                   "request, after truncation (413 above)"),
    max_image_pixels: int = typer.Option(_DEFAULT["max_image_pixels"], "--max-image-pixels", min=1,
                                         help="pixels (voxels) per segmentation image (413 above)"),
    header_timeout: float = typer.Option(_DEFAULT["header_timeout_s"], "--header-timeout", min=0.01, help="seconds "
                                         "a client has to send a request's line and headers (slow clients: closed)"),
    body_timeout: float = typer.Option(_DEFAULT["body_timeout_s"], "--body-timeout", min=0.01, help="seconds a "
                                       "request's whole body has to arrive (408; uploads: between reads)"),
    keep_alive: float = typer.Option(_DEFAULT["keep_alive_s"], "--keep-alive", min=0.01, help="seconds an idle "
                                     "keep-alive connection stays open"),
    max_connections: Optional[int] = typer.Option(None, "--max-connections", min=1, help="open connections at "
                                                  "most (default: what the open-files limit leaves, see "
                                                  "docs/production.md); beyond it the longest-idle one is closed"),
    log_level: str = typer.Option("info", "--log-level", help="one of " + ", ".join(LOG_LEVELS)),
) -> None:
    """Serve the registry's models over HTTP (FastAPI + uvicorn, one worker)."""
    from dlforge.errors import ConfigError
    from dlforge.serve.grpc_v2 import require_grpc
    from dlforge.serve.server import run

    if log_level.lower() not in LOG_LEVELS:
        raise ConfigError(f"unknown log level {log_level!r}", hint="use one of " + ", ".join(LOG_LEVELS))
    if quantize not in ("none", "int8"):
        raise ConfigError(f"unknown --quantize {quantize!r}", hint="use none or int8")
    if runtime not in ("torch", "onnxruntime"):
        raise ConfigError(f"unknown --runtime {runtime!r}", hint="use torch or onnxruntime")
    if grpc_port is not None:
        require_grpc()  # a ConfigError naming the extra, before anything starts
        if grpc_port == port:
            raise ConfigError(f"--grpc-port {grpc_port} is also the HTTP --port", hint="give gRPC its own port, "
                              "e.g. --port 8000 --grpc-port 8001")
    if runtime != "torch" and quantize != "none":
        raise ConfigError("--quantize int8 applies to the PyTorch runtime",
                          hint="export an int8 model.onnx instead: dlforge export RUN --quantize dynamic")
    for option, number in (("--port", port), ("--grpc-port", grpc_port)):
        if number is not None:
            check_port_free(host, number, option)  # before any model loads (a taken gRPC port once failed after)
    settings = ServeSettings(registry=registry, artifacts=artifacts, host=host, port=port, grpc_port=grpc_port,
                             require_keys=not no_auth,
                             max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_queue=max_queue,
                             poll_interval=poll_interval, models=list(model) if model else None, quantize=quantize,
                             runtime=runtime, max_tokens=max_tokens, max_image_pixels=max_image_pixels, header_timeout_s=header_timeout, body_timeout_s=body_timeout,
                             keep_alive_s=keep_alive, max_connections=max_connections,
                             admin_keys=_env_keys("DLFORGE_ADMIN_KEYS"), predict_keys=_env_keys("DLFORGE_PREDICT_KEYS"))
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if no_auth:
        typer.secho("warning: --no-auth: every route, admin ones included, is open to whoever reaches "
                    f"{host}:{port}", fg=typer.colors.YELLOW, err=True)
    if host not in LOOPBACK:
        typer.echo(f"note: binding {host}: the server is reachable from the network"
                   + ("" if no_auth else "; every request needs an API key (dlforge keys create)"), err=True)
    run(settings, log_level=log_level.lower())  # one worker; the connection limits are in serve/server.py


app = typer.Typer()  # mounted by dlforge.cli as the `serve` command
app.command("serve")(serve_command)


def check_port_free(host: str, port: int, option: str = "--port") -> None:
    """ConfigError (exit 2) when another process listens on ``host:port``.

    It binds a throwaway socket the way uvicorn binds its own (``SO_REUSEADDR``, so a port left
    in TIME_WAIT by a server that just stopped is free); any other bind failure (an address
    that is not this machine's) is left to the server, which names it.

    Example:
        >>> check_port_free("127.0.0.1", 0)  # port 0: any free port, never taken
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as err:
        if err.errno != errno.EADDRINUSE:
            return
        from dlforge.errors import ConfigError

        raise ConfigError(f"port {port} is in use: {option} {port} cannot listen on {host}",
                          hint=f"pick another {option}, or stop the process that holds it "
                               f"(`ss -ltnp 'sport = :{port}'` or `lsof -i :{port}` names it)") from None


def _env_keys(name: str) -> list[str]:
    """The comma-separated API keys in ``$name`` (a Secret's value): made valid at start-up."""
    return [k.strip() for k in os.environ.get(name, "").split(",") if k.strip()]
