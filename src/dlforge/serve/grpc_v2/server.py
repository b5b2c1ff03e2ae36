"""``inference.GRPCInferenceService`` on grpcio's asyncio server: the REST ``/v2`` routes' functions over gRPC.

Every RPC is a thin wrapper: ModelInfer turns the protobuf request into the REST form (a JSON
header, then ``raw_input_contents`` as binary tensor data; typed ``contents`` become the header's
``data``) and calls :func:`~dlforge.serve.v2_codec.decode_request` and
:func:`~dlforge.serve.v2_infer.infer_outputs`, then sends the outputs as ``raw_output_contents``
(what Triton sends) read from :func:`~dlforge.serve.v2_codec.encode_response`'s binary form. So
versions and aliases (``model_version`` is a number or an alias name; the request parameter
``alias`` too), keys, batching, the traffic split, metrics and drift are REST's.

Keys: the ``authorization: Bearer <key>`` metadata on ModelReady, ModelMetadata and ModelInfer,
checked through the app's key cache (ServerLive, ServerReady, ServerMetadata are open, as on REST).

Ids, as REST's headers (:mod:`dlforge.serve.security`): each of those calls gets a server id
(uuid4 hex; ModelInfer's answer also carries it as the parameter ``request_id``); a client's own
``x-request-id`` metadata (1-64 of ``A-Za-z0-9._-``) is only a correlation id: logged with the
server's id and stored beside the A/B record. Both come back in the trailing metadata,
``x-request-id`` and ``x-correlation-id``, on answers and errors alike.

Errors carry REST's message; the HTTP status maps to a gRPC code (:data:`CODES`): 400 and 422
INVALID_ARGUMENT, 401 UNAUTHENTICATED, 404 NOT_FOUND, 413 and 429 RESOURCE_EXHAUSTED,
503 UNAVAILABLE, anything unexpected INTERNAL ("internal error", logged). A message above
``max_body_bytes`` is refused by grpcio (RESOURCE_EXHAUSTED), as REST answers 413.

Example:
    >>> server = await start(app, ServeSettings(grpc_port=8001))  # doctest: +SKIP
    >>> await server.stop(5.0)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, TypeVar

import grpc
import orjson
from starlette.datastructures import Headers

from dlforge.errors import ConfigError, UnavailableError
from dlforge.registry.names import validate_name
from dlforge.serve.dependencies import key_cache_of
from dlforge.serve.errors import ApiError
from dlforge.serve.grpc_v2 import grpc_predict_v2_pb2 as pb
from dlforge.serve.grpc_v2 import grpc_predict_v2_pb2_grpc as pb_grpc
from dlforge.serve import v2_infer
from dlforge.serve.routers import v2
from dlforge.serve.security import correlation_of
from dlforge.serve.service import PredictionService
from dlforge.serve.settings import ServeSettings
from dlforge.serve.v2_codec import Output, TensorError, decode_request, encode_response

CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT, 422: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED, 403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED, 503: grpc.StatusCode.UNAVAILABLE, 507: grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# The typed ``contents`` field of each datatype (FP16 has none: raw_input_contents only).
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
            "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}
T = TypeVar("T")
log = logging.getLogger("dlforge.serve")


class Call(NamedTuple):
    """What every keyed RPC knows about its call: the server's id, the metadata, the client's correlation id."""

    request_id: str
    headers: Headers
    correlation_id: str | None


async def start(app: Any, settings: ServeSettings) -> grpc.aio.Server:
    """Serve ``app``'s models over gRPC on ``settings.host:settings.grpc_port`` (ConfigError if the port is taken)."""
    # so_reuseport off: with it (grpcio's default on Linux) a second server on a port another
    # gRPC server holds would start and silently share its traffic instead of failing.
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", settings.max_body_bytes),
                                      ("grpc.so_reuseport", 0)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(app), server)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    try:
        server.add_insecure_port(f"{host}:{settings.grpc_port}")
    except RuntimeError:
        raise ConfigError(f"cannot listen for gRPC on {settings.host}:{settings.grpc_port}",
                          hint="the port is taken or the address is not this machine's; pass another --grpc-port") from None
    await server.start()
    return server


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The six RPCs of the protocol over ``app.state`` (pool, registry, settings, key cache)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.service = PredictionService(app.state.pool)  # the pool lives as long as this server (one lifespan)

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest,
                          context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.app.state.pool.ready())

    async def ServerMetadata(self, request: pb.ServerMetadataRequest,
                             context: grpc.aio.ServicerContext) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**(await v2.server_metadata()).model_dump())

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        async def ready(call: Call) -> pb.ModelReadyResponse:
            try:  # NotFoundError (unknown model, version or alias) goes to the client as NOT_FOUND
                v2_infer.chosen_version(self.app.state.pool, validate_name(request.name), request.version or None)
            except UnavailableError:
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(ready=True)

        return await self._call(context, ready)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest,
                            context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        async def metadata(call: Call) -> pb.ModelMetadataResponse:
            meta = v2_infer.describe_model(self.app.state.pool, validate_name(request.name), request.version or None)
            tensor = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(name=meta.name, versions=meta.versions, platform=meta.platform,
                                            inputs=[tensor(**t.model_dump()) for t in meta.inputs],
                                            outputs=[tensor(**t.model_dump()) for t in meta.outputs])

        return await self._call(context, metadata)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        async def infer(call: Call) -> pb.ModelInferResponse:
            name = validate_name(request.model_name)
            infer_request, tensors = decode_request(*rest_body(request))
            header, outputs, _ = await v2_infer.infer_outputs(self.service, name, request.model_version or None,
                                                              infer_request, tensors, request_id=call.request_id,
                                                              headers=call.headers, correlation_id=call.correlation_id)
            return infer_response(header, outputs)

        return await self._call(context, infer)

    async def _call(self, context: grpc.aio.ServicerContext, work: Callable[[Call], Awaitable[T]]) -> T:
        """``work(call)`` behind the key check, the ids in the trailing metadata (see the module);
        an error aborts the call with REST's message."""
        headers = Headers({k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)})
        call = Call(uuid.uuid4().hex, headers, correlation_of(headers))
        ids = (("x-request-id", call.request_id),) + (
            (("x-correlation-id", call.correlation_id),) if call.correlation_id is not None else ())
        if call.correlation_id is not None:  # as REST's middleware: the one line that joins the two ids
            log.info("request %s has correlation id %s (gRPC %s)", call.request_id, call.correlation_id,
                     getattr(work, "__name__", ""))
        try:
            await self._check_key(headers)
            answer = await work(call)
            context.set_trailing_metadata(ids)
            return answer
        except Exception as exc:  # noqa: BLE001  (answered; error_of logs the unexpected ones)
            status, message, extra = v2_infer.error_of(exc, call.request_id)
        trailing = ids + tuple((k.lower(), v) for k, v in extra.items())  # Retry-After, as REST sends it
        await context.abort(CODES.get(status, grpc.StatusCode.INTERNAL), message, trailing_metadata=trailing)
        raise AssertionError("unreachable: abort raises")

    async def _check_key(self, headers: Headers) -> None:
        """A predict or admin key in the ``authorization`` metadata, as REST's ``require_predict_key``."""
        if not self.app.state.settings.require_keys:
            return
        scheme, _, key = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(401, "unauthorized", "this call needs an API key",
                           hint="send the metadata 'authorization: Bearer <key>'; create a key with `dlforge keys create`")
        registry = self.app.state.registry
        role = await key_cache_of(self.app).role(key.strip(), lambda k: asyncio.to_thread(registry.check_key, k))
        if not role:  # the key itself is never echoed back
            raise ApiError(401, "unauthorized", "the API key is not valid (unknown or revoked)",
                           hint="check the key, or ask an admin for a new one")


# ---------------------------------------------------------------------------- protobuf <-> the REST form
def rest_body(request: pb.ModelInferRequest) -> tuple[bytes, int]:
    """(body, Inference-Header-Content-Length) of the REST request that says what ``request`` says.

    Example:
        >>> r = pb.ModelInferRequest(inputs=[pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32",
        ...                          shape=[1, 1])], raw_input_contents=[bytes(4)])
        >>> rest_body(r)
        (b'{"inputs":[{"name":"input","shape":[1,1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}\\x00\\x00\\x00\\x00', 97)
    """
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise TensorError(f"raw_input_contents: {len(raw)} entries for {len(request.inputs)} inputs",
                          hint="send raw contents for every input, or typed contents for every input")
    inputs = []
    for i, tensor in enumerate(request.inputs):
        entry: dict[str, Any] = {"name": tensor.name, "shape": list(tensor.shape), "datatype": tensor.datatype}
        parameters = _parameters(tensor.parameters)
        if raw:
            if tensor.HasField("contents"):
                raise TensorError(f"inputs[{i}]: give contents or raw_input_contents, not both")
            parameters["binary_data_size"] = len(raw[i])
        else:
            entry["data"] = _contents(tensor, f"inputs[{i}]")
        if parameters:
            entry["parameters"] = parameters
        inputs.append(entry)
    header: dict[str, Any] = {"inputs": inputs}
    if request.id:
        header["id"] = request.id
    if request.parameters:
        header["parameters"] = _parameters(request.parameters)
    if request.outputs:
        header["outputs"] = [{"name": o.name, "parameters": _parameters(o.parameters)} for o in request.outputs]
    head = orjson.dumps(header)
    return head + b"".join(raw), len(head)


def _contents(tensor: pb.ModelInferRequest.InferInputTensor, where: str) -> list[Any]:
    """The typed contents of ``datatype``'s field as a JSON list (BYTES as UTF-8 text)."""
    field = CONTENTS.get(tensor.datatype)
    if field is None:
        if tensor.datatype == "FP16":
            raise TensorError(f"{where}.contents: FP16 has no typed contents; send it in raw_input_contents")
        return []  # an unknown datatype: the header's validation names it
    values = list(getattr(tensor.contents, field))
    if tensor.datatype != "BYTES":
        return values
    texts = []
    for j, value in enumerate(values):
        try:
            texts.append(value.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise TensorError(f"{where}.contents.bytes_contents[{j}]: not valid UTF-8 text (byte {err.start}); "
                              "send UTF-8") from None
    return texts


def _parameters(parameters: Any) -> dict[str, Any]:
    """A protobuf ``map<string, InferParameter>`` as plain values (an unset one is None, refused later)."""
    out = {}
    for key, value in parameters.items():
        kind = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, kind) if kind else None
    return out


def infer_response(header: dict[str, Any], outputs: list[Output]) -> pb.ModelInferResponse:
    """The protobuf answer of :func:`~dlforge.serve.v2_infer.infer_outputs`: every output as raw contents.

    Example:
        >>> import numpy as np
        >>> r = infer_response({"model_name": "m", "model_version": "1"}, [Output("y", "FP32", np.ones((1, 2), np.float32))])
        >>> r.outputs[0].shape, len(r.raw_output_contents[0])
        ([1, 2], 8)
    """
    body, size = encode_response(header, outputs, binary={o.name for o in outputs})
    size = len(body) if size is None else size
    head = orjson.loads(body[:size])
    response = pb.ModelInferResponse(model_name=head["model_name"], model_version=head.get("model_version") or "",
                                     id=head.get("id") or "")
    for key, value in (head.get("parameters") or {}).items():
        response.parameters[key].CopyFrom(_parameter(value))
    offset = size
    for entry in head["outputs"]:
        length = entry["parameters"]["binary_data_size"]
        response.outputs.add(name=entry["name"], datatype=entry["datatype"], shape=entry["shape"])
        response.raw_output_contents.append(body[offset:offset + length])
        offset += length
    return response


def _parameter(value: Any) -> pb.InferParameter:
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return pb.InferParameter(int64_param=value)
    return pb.InferParameter(string_param=str(value))
