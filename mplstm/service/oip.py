"""Open Inference Protocol v2 (KServe / Triton REST) tensors: JSON and binary, both ways.

A request body is a JSON header, optionally followed by raw tensor bytes (Triton's
binary tensor extension): `Inference-Header-Content-Length` gives the header's length,
and each binary input says its size in `parameters.binary_data_size`, in input order.
Outputs go back as binary when the request asks (`binary_data_output`, or per output
`binary_data`), which `tritonclient.http` does by default.
"""

from __future__ import annotations

import json
import mmap
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mplstm.service.errors import BadTensorError
from mplstm.service.tensors import array_from_bytes, array_from_values, datatype_name

HEADER_LENGTH = "Inference-Header-Content-Length"


class RequestInput(BaseModel):
    name: str
    shape: list[int] = Field(description="Dimensions, batch first")
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = Field(None, description="Row-major values (flat or nested)")


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


Buffer = bytes | bytearray | memoryview | mmap.mmap


def parse_infer_request(
    body: Buffer, header_length: str | None
) -> tuple[InferRequest, dict[str, np.ndarray]]:
    """The request header and its input tensors by name; BadTensorError on anything malformed.

    Binary tensors are views of `body` (no copy), so `body` must outlive them; JSON
    values are strict (`tensors.array_from_values`).
    """
    view = memoryview(body)
    if header_length is None:
        header: bytes | bytearray = body if isinstance(body, bytes | bytearray) else bytes(view)
        binary = view[len(view) :]
    else:
        try:
            size = int(header_length)
        except ValueError:
            size = -1
        if not 0 <= size <= len(view):
            raise BadTensorError(
                f"{HEADER_LENGTH} {header_length!r} does not fit a body of {len(view)} bytes"
            )
        header, binary = bytes(view[:size]), view[size:]
    try:
        request = InferRequest.model_validate_json(header)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise BadTensorError(f"not an inference request: {problems}") from None
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in request.inputs:
        if tensor.name in arrays:
            raise BadTensorError(f"input {tensor.name!r} given twice")
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise BadTensorError(
                    f"input {tensor.name!r}: binary_data_size {size!r} is not a byte count"
                )
            if offset + size > len(binary):
                raise BadTensorError(f"input {tensor.name!r}: the body ends before its binary data")
            data = binary[offset : offset + size]
            values = array_from_bytes(tensor.name, tensor.datatype, tensor.shape, data)
            offset += size
        elif tensor.data is not None:
            values = _json_values(tensor)
        else:
            raise BadTensorError(f"input {tensor.name!r} has neither data nor binary_data_size")
        arrays[tensor.name] = values
    if offset != len(binary):
        raise BadTensorError(f"{len(binary) - offset} bytes of binary data belong to no input")
    return request, arrays


def _json_values(tensor: RequestInput) -> np.ndarray:
    return array_from_values(tensor.name, tensor.datatype, tensor.shape, tensor.data or [])


def wants_binary(request: InferRequest, name: str) -> bool:
    """Whether output `name` goes back as binary data."""
    for out in request.outputs or ():
        if out.name == name and out.parameters and "binary_data" in out.parameters:
            return bool(out.parameters["binary_data"])
    return bool((request.parameters or {}).get("binary_data_output", False))


def encode_infer_response(
    response: InferResponse, arrays: dict[str, np.ndarray], binary: set[str]
) -> tuple[bytes, dict[str, str]]:
    """Body and headers: JSON only, or the JSON header followed by the binary outputs."""
    chunks = []
    for out in response.outputs:
        array = np.ascontiguousarray(arrays[out.name])
        if out.name in binary:
            raw = array.tobytes()
            out.parameters = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            out.data = array.reshape(-1).tolist()
    header = json.dumps(response.model_dump(exclude_none=True)).encode()
    if not chunks:
        return header, {"Content-Type": "application/json"}
    return b"".join([header, *chunks]), {
        "Content-Type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
    }


def response_outputs(arrays: dict[str, np.ndarray], names: list[str]) -> list[ResponseOutput]:
    """Output descriptors (data filled in by `encode_infer_response`)."""
    return [
        ResponseOutput(name=n, datatype=datatype_name(arrays[n].dtype), shape=list(arrays[n].shape))
        for n in names
    ]
