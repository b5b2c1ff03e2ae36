"""The Open Inference Protocol's (KServe V2) tensors, as pure functions: bytes in, numpy out, and back.

A request body is a JSON header, optionally followed by binary tensor data (Triton's binary
tensor extension): ``Inference-Header-Content-Length`` says where the JSON ends, and each input
whose ``parameters.binary_data_size`` is set takes that many bytes, in input order. The header is
read with orjson and validated with pydantic *without* its ``data`` arrays, which go straight to
numpy (``np.asarray`` for JSON lists, ``np.frombuffer`` for binary: little-endian, row-major).
BYTES elements are strings in JSON and ``<4-byte little-endian length><bytes>`` in binary.

Every refusal is a :class:`TensorError` naming the field (``inputs[0].data[5]``,
``inputs[1].parameters.binary_data_size``); the server answers it 400 in the protocol's error
object. The REST routes (routers/v2.py) and the gRPC service (grpc_v2) both use it.

Example:
    >>> body = b'{"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}'
    >>> header, tensors = decode_request(body, None)
    >>> header.inputs[0].name, tensors[0].dtype, tensors[0].shape
    ('input', dtype('float32'), (1, 2))
    >>> body, size = encode_response({"model_name": "m", "outputs": []},
    ...                              [Output("y", "FP32", np.ones((1, 2), np.float32))], binary={"y"})
    >>> size, len(body) - size
    (111, 8)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from dlforge.errors import DlforgeError

# Little-endian numpy dtypes of the protocol's numeric datatypes (BF16 has none: refused).
DTYPES: dict[str, np.dtype] = {name: np.dtype(code) for name, code in {
    "BOOL": "?", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "<i1",
    "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}.items()}
Datatype = Literal["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
                   "FP16", "FP32", "FP64", "BYTES"]
Scalar = Union[StrictBool, StrictInt, StrictFloat, StrictStr]
MAX_ELEMENTS = 1 << 31  # a shape claiming more elements than this is refused before any allocation


class TensorError(DlforgeError):
    """A V2 request (header or tensor data) the server cannot read; the message names the field (400)."""


# ------------------------------------------------------------------------------ the header
class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RequestInput(_Spec):
    """``$request_input``: one input tensor (``data`` is read apart from the header, see the module)."""

    name: str = Field(min_length=1, max_length=256)
    shape: list[Annotated[StrictInt, Field(ge=0)]]
    datatype: Datatype
    parameters: dict[str, Scalar] | None = None
    data: list[Any] | None = None


class RequestOutput(_Spec):
    """``$request_output``: an output the client asks for (``parameters.binary_data``: send it as binary)."""

    name: str = Field(min_length=1, max_length=256)
    parameters: dict[str, Scalar] | None = None


class InferRequest(_Spec):
    """``$inference_request``."""

    id: str | None = Field(None, max_length=256)
    parameters: dict[str, Scalar] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(_Spec):
    """``$response_output``: ``data`` (flat, row-major) or ``parameters.binary_data_size``."""

    name: str
    shape: list[int]
    datatype: Datatype
    parameters: dict[str, Scalar] | None = None
    data: list[Any] | None = None


class InferResponse(_Spec):
    """``$inference_response``."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Scalar] | None = None
    outputs: list[ResponseOutput]


class TensorMetadata(_Spec):
    """``$metadata_tensor``: -1 in ``shape`` is a size the request chooses (the batch)."""

    name: str
    datatype: Datatype
    shape: list[int]


class ModelMetadata(_Spec):
    """``$metadata_model_response``."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(_Spec):
    """``$metadata_server_response``."""

    name: str
    version: str
    extensions: list[str]


# ------------------------------------------------------------------------------ decoding
def decode_request(body: bytes, header_length: int | None) -> tuple[InferRequest, list[np.ndarray | list[str]]]:
    """(validated header, one numpy array or list of strings per input) of a V2 infer body.

    ``header_length`` is the ``Inference-Header-Content-Length`` header (None: the body is JSON
    only). Numeric tensors come back in their datatype's dtype, shaped as declared; BYTES
    tensors as a flat list of ``str`` (UTF-8, checked). Raises TensorError naming the field.

    Example:
        >>> import struct
        >>> head = b'{"inputs": [{"name": "t", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}}]}'
        >>> decode_request(head + struct.pack("<I", 2) + b"hi", len(head))[1]
        [['hi']]
    """
    if header_length is None:
        head, rest = body, b""
    elif not 0 < header_length <= len(body):
        raise TensorError(f"Inference-Header-Content-Length is {header_length}, but the body holds {len(body)} bytes",
                          hint="send the length of the JSON header in bytes, followed by the binary tensor data")
    else:
        head, rest = body[:header_length], body[header_length:]
    try:
        raw = orjson.loads(head)
    except orjson.JSONDecodeError as err:
        raise TensorError(f"the request header is not valid JSON: {err}") from None
    datas = _pop_data(raw)
    try:
        request = InferRequest.model_validate(raw)
    except ValidationError as err:
        raise TensorError(_pydantic_message(err)) from None
    tensors, offset = [], 0
    for i, (tensor, data) in enumerate(zip(request.inputs, datas)):
        where = f"inputs[{i}]"
        _check_shape(tensor.shape, where)
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is not None:
            if data is not None:
                raise TensorError(f"{where}: give data or parameters.binary_data_size, not both")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise TensorError(f"{where}.parameters.binary_data_size: expected a byte count, got {size!r}")
            if offset + size > len(rest):
                raise TensorError(f"{where}.parameters.binary_data_size: {size} bytes from byte {offset} of the "
                                  f"binary data, which holds {len(rest)}", hint="check Inference-Header-Content-Length")
            tensors.append(decode_binary(rest[offset:offset + size], tensor.datatype, tensor.shape, where))
            offset += size
        elif data is None:
            raise TensorError(f"{where}.data: missing (send data, or binary data with parameters.binary_data_size)")
        else:
            tensors.append(decode_json(data, tensor.datatype, tensor.shape, where))
    if offset != len(rest):
        raise TensorError(f"the body holds {len(rest) - offset} bytes of binary data that no input claims",
                          hint="set parameters.binary_data_size on each binary input")
    return request, tensors


def _pop_data(raw: Any) -> list[Any]:
    """Take each input's ``data`` out of the header (pydantic never walks a large array)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("inputs"), list):
        return []
    datas = []
    for item in raw["inputs"]:
        data = item.pop("data", None) if isinstance(item, dict) else None
        if data is not None and not isinstance(data, list):
            data = [data]  # a single element: the spec allows it for shape [1]
        datas.append(data)
    return datas


def _pydantic_message(err: ValidationError) -> str:
    problems = []
    for e in err.errors()[:10]:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"]).lstrip(".")
        problems.append(f"{where or 'the request'}: {e['msg']}")
    return "; ".join(problems)


def _check_shape(shape: list[int], where: str) -> None:
    if not shape:
        raise TensorError(f"{where}.shape: expected a batch dimension first, got []")
    if math.prod(shape) > MAX_ELEMENTS:
        raise TensorError(f"{where}.shape: {shape} claims {math.prod(shape)} elements, above {MAX_ELEMENTS}")


def decode_binary(buf: bytes, datatype: str, shape: list[int], where: str) -> np.ndarray | list[str]:
    """A binary tensor: little-endian, row-major numbers, or length-prefixed BYTES elements.

    Example:
        >>> decode_binary(np.arange(4, dtype="<f4").tobytes(), "FP32", [2, 2], "inputs[0]")
        array([[0., 1.],
               [2., 3.]], dtype=float32)
    """
    count = math.prod(shape)
    if datatype == "BYTES":
        return _decode_bytes(buf, count, where)
    dtype = DTYPES[datatype]
    if len(buf) != count * dtype.itemsize:
        raise TensorError(f"{where}.parameters.binary_data_size: {len(buf)} bytes, but shape {shape} of "
                          f"{datatype} takes {count * dtype.itemsize}")
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


def _decode_bytes(buf: bytes, count: int, where: str) -> list[str]:
    out, offset, view = [], 0, memoryview(buf)
    while offset < len(buf):
        if offset + 4 > len(buf):
            raise TensorError(f"{where}: BYTES element {len(out)} has a cut length prefix (4 bytes, little-endian)")
        n = int.from_bytes(view[offset:offset + 4], "little")
        if offset + 4 + n > len(buf):
            raise TensorError(f"{where}: BYTES element {len(out)} claims {n} bytes past the end of its data")
        out.append(_utf8(bytes(view[offset + 4:offset + 4 + n]), f"{where}.data[{len(out)}]"))
        offset += 4 + n
    if len(out) != count:
        raise TensorError(f"{where}: {len(out)} BYTES elements, but the shape holds {count}")
    return out


def _utf8(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise TensorError(f"{where}: not valid UTF-8 text (byte {err.start}); send UTF-8") from None


def decode_json(data: list[Any], datatype: str, shape: list[int], where: str) -> np.ndarray | list[str]:
    """JSON tensor data, flat or nested (row-major), as numpy in ``datatype``'s dtype (BYTES: strings).

    Booleans are numbers only in a BOOL tensor, numbers must fit the datatype (no fractions in
    an integer type, nothing beyond FP32's range in FP32).

    Example:
        >>> decode_json([[1, 2], [3, 4]], "INT64", [2, 2], "inputs[0]").tolist()
        [[1, 2], [3, 4]]
        >>> decode_json([1, True], "FP32", [1, 2], "inputs[0]")
        Traceback (most recent call last):
        ...
        dlforge.serve.v2_codec.TensorError: inputs[0].data[1]: expected a number (FP32), got a boolean
    """
    count = math.prod(shape)
    if datatype == "BYTES":
        flat = _flatten(data)
        if len(flat) != count:
            raise TensorError(f"{where}.data: {len(flat)} elements, but shape {shape} holds {count}")
        for j, value in enumerate(flat):
            if not isinstance(value, str):
                raise TensorError(f"{where}.data[{j}]: expected a string (BYTES), got {_type_name(value)}")
        return flat
    # One C-level pass for the leaf types (a JSON true is a number to numpy), then one typed conversion.
    types = _leaf_types(data)
    allowed = {bool} if datatype == "BOOL" else {int, float}
    if types is None or not types <= allowed:
        _name_bad_element(data, datatype, where)
    try:
        arr = np.array(data, dtype=np.bool_ if datatype == "BOOL" else np.float64 if float in types else np.int64)
    except (ValueError, TypeError, OverflowError):  # ragged lists, or integers beyond int64
        _name_bad_element(data, datatype, where)
    if arr.size != count or (arr.ndim > 1 and list(arr.shape) != shape):
        got = f"shape {list(arr.shape)}" if arr.ndim > 1 else f"{arr.size} elements"
        raise TensorError(f"{where}.data: {got}, but the declared shape is {shape} ({count} elements)")
    return _fit(arr.reshape(shape), datatype, where)


def _fit(arr: np.ndarray, datatype: str, where: str) -> np.ndarray:
    """``arr`` in ``datatype``'s dtype, refusing values the type cannot hold."""
    dtype = DTYPES[datatype]
    if dtype.kind in "iu":
        if arr.dtype.kind == "f" and not np.all(np.mod(arr, 1) == 0):
            j = int(np.flatnonzero(np.mod(arr, 1) != 0)[0])
            raise TensorError(f"{where}.data[{j}]: expected an integer ({datatype}), got {arr.flat[j]!r}")
        info = np.iinfo(dtype)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise TensorError(f"{where}.data: a value is outside the range of {datatype} [{info.min}, {info.max}]")
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(dtype)
    if dtype.kind == "f" and not np.all(np.isfinite(out)):
        j = int(np.flatnonzero(~np.isfinite(out))[0])
        raise TensorError(f"{where}.data[{j}]: not a finite number (outside the {datatype} range)")
    return out


def _leaf_types(data: list[Any]) -> set[type] | None:
    """The types of the elements of nested lists as deep as the first element's, or None if they are ragged."""
    depth, first = 0, data
    while isinstance(first, list):
        depth, first = depth + 1, first[0] if first else None
    rows = [data]
    for _ in range(depth - 1):
        if not all(type(row) is list for row in rows):
            return None
        rows = [sub for row in rows for sub in row]
    types: set[type] = set()
    for row in rows:
        if type(row) is not list:
            return None
        types.update(map(type, row))
    return types


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if not any(isinstance(v, list) for v in data):
        return data
    return [v for sub in data for v in _flatten(sub)]


def _name_bad_element(data: list[Any], datatype: str, where: str) -> None:
    """Raise TensorError naming the first element that is not a ``datatype`` value (or the ragged shape)."""
    want = "a boolean" if datatype == "BOOL" else "a number"
    for j, value in enumerate(_flatten(data)):
        if datatype == "BOOL" and not isinstance(value, bool):
            raise TensorError(f"{where}.data[{j}]: expected a boolean (BOOL), got {_type_name(value)}")
        if datatype != "BOOL" and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise TensorError(f"{where}.data[{j}]: expected {want} ({datatype}), got {_type_name(value)}")
    raise TensorError(f"{where}.data: nested lists of unequal lengths (or numbers too large); send the data flat")


def _type_name(value: Any) -> str:
    names = {bool: "a boolean", str: "a string", dict: "an object", list: "a list", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


# ------------------------------------------------------------------------------ encoding
@dataclass(frozen=True)
class Output:
    """One output tensor of a response: numbers as a numpy array, BYTES as a list of strings."""

    name: str
    datatype: str
    value: np.ndarray | list[str]

    @property
    def shape(self) -> list[int]:
        return [len(self.value)] if isinstance(self.value, list) else list(self.value.shape)


def encode_response(header: dict[str, Any], outputs: list[Output], binary: set[str]) -> tuple[bytes, int | None]:
    """(body, Inference-Header-Content-Length or None): ``header`` plus ``outputs``, those named in
    ``binary`` as binary data after the JSON (in output order), the rest as flat JSON data.

    Example:
        >>> encode_response({"model_name": "m"}, [Output("label", "BYTES", ["cat"])], binary=set())
        (b'{"model_name":"m","outputs":[{"name":"label","datatype":"BYTES","shape":[1],"data":["cat"]}]}', None)
    """
    entries, chunks = [], []
    for out in outputs:
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": out.shape}
        if out.name in binary:
            chunk = _binary(out)
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            entry["data"] = out.value if isinstance(out.value, list) else np.ravel(out.value)
        entries.append(entry)
    head = orjson.dumps({**header, "outputs": entries}, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return head, None
    return head + b"".join(chunks), len(head)


def _binary(out: Output) -> bytes:
    if isinstance(out.value, list):  # BYTES: <uint32 little-endian length><utf-8 bytes> per element
        encoded = [s.encode("utf-8") for s in out.value]
        return b"".join(len(e).to_bytes(4, "little") + e for e in encoded)
    return np.ascontiguousarray(out.value, dtype=DTYPES[out.datatype]).tobytes()
