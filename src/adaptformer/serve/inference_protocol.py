"""The Open Inference Protocol (KServe v2) on the wire: an ``infer`` request read from JSON or from JSON with the
binary tensor data extension (how Triton's clients send ``BYTES`` such as encoded images), and a response written
back the way it was asked for. Nothing here knows tasks or models; the routes (``routes/inference.py``) do.

Binary tensor data extension: the header ``Inference-Header-Content-Length: N`` says the body's first ``N`` bytes
are the JSON; the tensors whose ``parameters.binary_data_size`` is set follow it, in order, raw: ``FP32`` as
little-endian floats in row-major order, ``BYTES`` as elements each prefixed by its length (4 bytes, little
endian). An output is sent the same way when it asks for ``parameters.binary_data`` (or the request for
``parameters.binary_data_output``). In plain JSON, ``BYTES`` elements are strings: base64 for binary content such
as an image (say so with ``parameters.content_type: base64``, or not: an element that is not valid base64 is
refused)."""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import AdaptFormerError
from ..utils.options import is_int

HEADER_LENGTH = "inference-header-content-length"
DATATYPES = ("FP32", "BYTES")
#: most elements in one tensor (the body limit bounds the bytes; this bounds the work of reading them)
MAX_ELEMENTS = 1 << 26


class ProtocolError(AdaptFormerError):
    """A request that does not follow the protocol (400)."""


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray | list[bytes]
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferRequest:
    id: str | None
    inputs: list[Tensor]
    outputs: list[dict[str, Any]] | None  # the outputs asked for (None: all)
    parameters: dict[str, Any]

    def binary_output(self, name: str) -> bool:
        for output in self.outputs or ():
            if output.get("name") == name:
                return bool((output.get("parameters") or {}).get("binary_data", False))
        return bool(self.parameters.get("binary_data_output", False))


def read_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    """The request in ``body`` (JSON, or JSON and binary tensors when ``header_length`` is given)."""
    if header_length is not None:
        if not header_length.strip().isdigit() or int(header_length) > len(body):
            raise ProtocolError(f"Inference-Header-Content-Length {header_length[:20]!r}: expected 0 to {len(body)}")
        split = int(header_length)
        header, binary = body[:split], memoryview(body)[split:]
    else:
        header, binary = body, memoryview(b"")
    try:
        request = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ProtocolError(f"the request is not JSON ({type(error).__name__})") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise ProtocolError('the request: expected a JSON object with a non-empty "inputs" list')
    offset = 0
    inputs = []
    for index, item in enumerate(request["inputs"]):
        tensor, used = _input(item, index, binary[offset:])
        inputs.append(tensor)
        offset += used
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes of binary data follow the inputs that no input claims")
    outputs = request.get("outputs")
    if outputs is not None and (not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs)):
        raise ProtocolError('"outputs": expected a list of objects')
    parameters = request.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ProtocolError('"parameters": expected an object')
    identifier = request.get("id")
    return InferRequest(None if identifier is None else str(identifier)[:256], inputs, outputs, parameters)


def _input(item: Any, index: int, binary: memoryview) -> tuple[Tensor, int]:
    where = f"inputs[{index}]"
    if not isinstance(item, dict):
        raise ProtocolError(f"{where}: expected an object")
    name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
    if not isinstance(name, str) or not name:
        raise ProtocolError(f'{where}: "name": expected a string')
    where = f"input {name[:64]!r}"
    if datatype not in DATATYPES:
        raise ProtocolError(f'{where}: "datatype" {str(datatype)[:20]!r}: expected one of {", ".join(DATATYPES)}')
    if not isinstance(shape, list) or not all(is_int(d, 0) for d in shape):
        raise ProtocolError(f'{where}: "shape": expected a list of non-negative integers')
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise ProtocolError(f"{where}: {count} elements; at most {MAX_ELEMENTS}")
    parameters = item.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ProtocolError(f'{where}: "parameters": expected an object')
    size = parameters.get("binary_data_size")
    if size is not None:
        if not is_int(size, 0) or size > len(binary):
            raise ProtocolError(f"{where}: binary_data_size {size!r}: expected 0 to the {len(binary)} bytes left")
        data = _from_binary(bytes(binary[:size]), datatype, count, where)
        return Tensor(name, datatype, shape, data, parameters), size
    if "data" not in item:
        raise ProtocolError(f'{where}: expected "data" (or parameters.binary_data_size with binary data)')
    return Tensor(name, datatype, shape, _from_json(item["data"], datatype, count, where), parameters), 0


def _from_binary(raw: bytes, datatype: str, count: int, where: str):
    if datatype == "FP32":
        if len(raw) != 4 * count:
            raise ProtocolError(f"{where}: {len(raw)} bytes of FP32 data for {count} elements ({4 * count} expected)")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32)
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ProtocolError(f"{where}: BYTES data ends inside an element's length")
        (length,) = struct.unpack_from("<I", raw, offset)
        if offset + 4 + length > len(raw):
            raise ProtocolError(f"{where}: a BYTES element of {length} bytes runs past the data")
        elements.append(raw[offset + 4 : offset + 4 + length])
        offset += 4 + length
    if len(elements) != count:
        raise ProtocolError(f"{where}: {len(elements)} BYTES elements for a shape of {count}")
    return elements


def _from_json(data: Any, datatype: str, count: int, where: str):
    flat = _flatten(data)
    if len(flat) != count:
        raise ProtocolError(f'{where}: "data" has {len(flat)} elements for a shape of {count}')
    if datatype == "FP32":
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in flat):
            raise ProtocolError(f'{where}: "data": expected numbers for FP32')
        return np.asarray(flat, dtype=np.float32)
    elements = []
    for value in flat:
        if not isinstance(value, str):
            raise ProtocolError(f'{where}: "data": expected strings (base64) for BYTES')
        try:
            elements.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            raise ProtocolError(
                f"{where}: a BYTES element is not base64 (JSON carries binary content as base64)"
            ) from None
    return elements


def _flatten(data: Any) -> list:
    if not isinstance(data, list):
        return [data]
    flat: list = []
    stack = [iter(data)]
    while stack:  # iterative: a deeply nested list is no recursion bomb
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat


@dataclass
class Output:
    name: str
    datatype: str
    shape: list[int]
    values: np.ndarray | list[str]


def write_infer_response(model: str, request: InferRequest, outputs: list[Output]) -> tuple[bytes, dict[str, str]]:
    """The body and headers of the response: JSON, or JSON then binary outputs (``Inference-Header-Content-Length``)."""
    described, binary = [], []
    for output in outputs:
        entry: dict[str, Any] = {"name": output.name, "datatype": output.datatype, "shape": output.shape}
        if request.binary_output(output.name):
            raw = _to_binary(output)
            entry["parameters"] = {"binary_data_size": len(raw)}
            binary.append(raw)
        else:
            entry["data"] = output.values.reshape(-1).tolist() if isinstance(output.values, np.ndarray) else list(
                output.values)  # fmt: skip
        described.append(entry)
    header = {"model_name": model, "outputs": described, **({"id": request.id} if request.id is not None else {})}
    text = json.dumps(header).encode()
    if not binary:
        return text, {"content-type": "application/json"}
    headers = {"content-type": "application/octet-stream", "inference-header-content-length": str(len(text))}
    return text + b"".join(binary), headers


def _to_binary(output: Output) -> bytes:
    if isinstance(output.values, np.ndarray):
        return output.values.astype("<f4").tobytes()
    parts = []
    for value in output.values:
        encoded = value.encode()
        parts.append(struct.pack("<I", len(encoded)) + encoded)
    return b"".join(parts)
