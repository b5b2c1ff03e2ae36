"""The Open Inference Protocol (KServe V2) over gRPC: ``dlforge serve --grpc-port 8001``.

:mod:`dlforge.serve.grpc_v2.server` serves ``inference.GRPCInferenceService`` with grpcio's
asyncio server, in the process and event loop of uvicorn, on the same functions as the REST
``/v2`` routes (:mod:`dlforge.serve.routers.v2`). grpcio is the optional extra ``dlforge[grpc]``.

Generated code (exempt from the style rules; do not edit): ``grpc_predict_v2_pb2.py`` and
``grpc_predict_v2_pb2_grpc.py``, from ``grpc_predict_v2.proto`` beside them, copied unchanged from
github.com/kserve/kserve ``python/kserve/kserve/protocol/grpc/grpc_predict_v2.proto`` at commit
aaac4e294dae2c7b1aa1886447793f3aa1c30912. Regenerate from ``src/`` with grpcio-tools kept out of
the project's environment (1.81.1 bundles protoc 33.5, whose code needs protobuf >= 6.33.5, < 7)::

    pip install --target /tmp/gt "grpcio-tools==1.81.1" "protobuf==6.33.6"
    cd src && PYTHONPATH=/tmp/gt python -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. \\
        dlforge/serve/grpc_v2/grpc_predict_v2.proto

The generated module registers the protobuf names ``inference.*`` in protobuf's global pool, as
Triton's client (``tritonclient.grpc``) does with its own copy: the two cannot be imported into
one process. So nothing imports :mod:`.server` until a server is asked to serve gRPC.

Example:
    >>> require_grpc()  # raises ConfigError naming the extra where grpcio is missing
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dlforge.errors import ConfigError

if TYPE_CHECKING:
    from dlforge.serve.settings import ServeSettings


def require_grpc() -> None:
    """ConfigError, naming the extra to install, unless grpcio and protobuf can be imported.

    Example:
        >>> require_grpc()
    """
    try:
        import google.protobuf  # noqa: F401
        import grpc  # noqa: F401
    except ImportError:
        raise ConfigError("--grpc-port needs grpcio and protobuf, which are not installed",
                          hint="pip install 'dlforge[grpc]', or serve without --grpc-port (REST /v2 "
                               "speaks the same protocol)") from None


async def start_grpc(app: Any, settings: ServeSettings) -> Any:
    """Start the gRPC server for ``app`` (its lifespan has set ``app.state.pool``) on
    ``settings.host:settings.grpc_port``; returns the started ``grpc.aio.Server`` (stop it with ``await s.stop(grace)``).

    Example:
        >>> server = await start_grpc(app, ServeSettings(grpc_port=8001))  # doctest: +SKIP
    """
    require_grpc()
    # Here, not at the top: the optional extra, and the protobuf names Triton's client also claims (above).
    from dlforge.serve.grpc_v2.server import start

    return await start(app, settings)
