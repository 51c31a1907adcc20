"""Open Inference Protocol v2 (KServe / Triton REST) tensors: JSON and binary, both ways.

A request body is a JSON header, optionally followed by raw tensor bytes (Triton's
binary tensor extension): `Inference-Header-Content-Length` gives the header's length,
and each binary input says its size in `parameters.binary_data_size`, in input order.
Outputs go back as binary when the request asks (`binary_data_output`, or per output
`binary_data`), which `tritonclient.http` does by default.
"""

from __future__ import annotations

import json
import math
import mmap
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mplstm.core.package import PackageManifest, TensorSpec
from mplstm.service.errors import BadTensorError

HEADER_LENGTH = "Inference-Header-Content-Length"
# Open Inference Protocol datatype <-> numpy; BYTES (strings) is no input of ours.
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(bool),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_NAMES = {dtype: name for name, dtype in DATATYPES.items()}


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


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 for a dynamic dimension")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


def tensor_metadata(spec: TensorSpec) -> TensorMetadata:
    """A manifest tensor as v2 metadata: symbolic dims ("batch", "time") become -1."""
    return TensorMetadata(
        name=spec.name,
        datatype=_NAMES[np.dtype(spec.dtype)],
        shape=[d if isinstance(d, int) else -1 for d in spec.shape],
    )


Buffer = bytes | bytearray | memoryview | mmap.mmap


def parse_infer_request(
    body: Buffer, header_length: str | None
) -> tuple[InferRequest, dict[str, np.ndarray]]:
    """The request header and its input tensors by name; BadTensorError on anything malformed.

    Binary tensors are views of `body` (no copy), so `body` must outlive them; JSON
    values are strict (`json_values`).
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
        dtype = DATATYPES.get(tensor.datatype)
        if dtype is None:
            raise BadTensorError(
                f"input {tensor.name!r}: datatype {tensor.datatype!r} is not one of {sorted(DATATYPES)}"
            )
        if any(d < 0 for d in tensor.shape):
            raise BadTensorError(f"input {tensor.name!r}: negative dimension in {tensor.shape}")
        count = math.prod(tensor.shape)
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size != count * dtype.itemsize:
                raise BadTensorError(
                    f"input {tensor.name!r}: binary_data_size {size!r} is not "
                    f"{count} x {dtype.itemsize} bytes for shape {tensor.shape}"
                )
            if offset + size > len(binary):
                raise BadTensorError(f"input {tensor.name!r}: the body ends before its binary data")
            values = np.frombuffer(binary, dtype, count, offset)
            offset += size
        elif tensor.data is not None:
            values = json_values(tensor, dtype, count)
        else:
            raise BadTensorError(f"input {tensor.name!r} has neither data nor binary_data_size")
        arrays[tensor.name] = values.reshape(tensor.shape)
    if offset != len(binary):
        raise BadTensorError(f"{len(binary) - offset} bytes of binary data belong to no input")
    return request, arrays


# The JSON value types each kind of datatype takes: a bool is no integer, a string no number.
_JSON_TYPES: dict[str, tuple[frozenset[type], str]] = {
    "b": (frozenset({bool}), "true or false"),
    "i": (frozenset({int}), "integers"),
    "u": (frozenset({int}), "integers"),
    "f": (frozenset({int, float}), "numbers"),
}


def json_values(tensor: RequestInput, dtype: np.dtype, count: int) -> np.ndarray:
    """A JSON tensor's values as `dtype`, strictly: no rounding, wrapping, parsing or truthiness.

    `1.5` or `"7"` for an integer datatype, a value out of its range, a string or a number
    for BOOL, and ragged nesting are BadTensorError, never silently converted.
    """
    items = tensor.data or []
    if items and isinstance(items[0], list):  # nested rows: numpy checks the nesting is regular
        items = np.asarray(items, dtype=object).reshape(-1).tolist()
    allowed, what = _JSON_TYPES[dtype.kind]
    found = set(map(type, items))
    if not found <= allowed:
        wrong = ", ".join(sorted(t.__name__ for t in found - allowed))
        raise BadTensorError(
            f"input {tensor.name!r}: {tensor.datatype} data must be {what} (flat, or nested "
            f"lists of equal length), got {wrong}"
        )
    if len(items) != count:
        raise BadTensorError(
            f"input {tensor.name!r}: {len(items)} values for shape {tensor.shape} ({count})"
        )
    if dtype.kind in "iu" and items:
        info = np.iinfo(dtype)
        low, high = min(items), max(items)
        if low < info.min or high > info.max:
            raise BadTensorError(
                f"input {tensor.name!r}: {tensor.datatype} values lie in "
                f"[{info.min}, {info.max}], got {low if low < info.min else high}"
            )
    with np.errstate(over="raise"):
        try:
            return np.asarray(items, dtype=dtype)
        except FloatingPointError:
            raise BadTensorError(
                f"input {tensor.name!r}: a value is out of the range of {tensor.datatype}"
            ) from None


def model_inputs(
    arrays: dict[str, np.ndarray], manifest: PackageManifest
) -> tuple[np.ndarray, np.ndarray]:
    """(clip, view_mask) checked against the manifest's input specs; an absent mask means all views."""
    clip_spec, mask_spec = manifest.inputs
    unknown = sorted(set(arrays) - {clip_spec.name, mask_spec.name})
    if unknown:
        raise BadTensorError(
            f"unknown inputs {unknown}; this model takes {clip_spec.name!r}, {mask_spec.name!r}"
        )
    if clip_spec.name not in arrays:
        raise BadTensorError(f"input {clip_spec.name!r} is required")
    clip = _conform(arrays[clip_spec.name], clip_spec)
    batch = clip.shape[0]
    if batch == 0:
        raise BadTensorError(f"input {clip_spec.name!r} has an empty batch")
    low, high = manifest.frames_range
    frames = clip.shape[clip_spec.shape.index("time")] if "time" in clip_spec.shape else None
    if frames is not None and not low <= frames <= high:
        raise BadTensorError(f"this model takes {low}..{high} frames, got {frames}")
    if mask_spec.name in arrays:
        mask = _conform(arrays[mask_spec.name], mask_spec)
        if mask.shape[0] != batch:
            raise BadTensorError(
                f"{mask_spec.name!r} has batch {mask.shape[0]}, {clip_spec.name!r} {batch}"
            )
    else:
        mask = np.ones((batch, len(manifest.view_names)), bool)
    absent = ~mask.any(axis=1)
    if absent.any():
        raise BadTensorError(f"clips {np.flatnonzero(absent).tolist()} have every view masked out")
    if not manifest.allows_missing_views and not mask.all():
        raise BadTensorError(
            "this model was not trained with view dropout: every view must be present"
        )
    return clip, mask


def _conform(array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if array.dtype != np.dtype(spec.dtype):
        raise BadTensorError(
            f"input {spec.name!r} must be {_NAMES[np.dtype(spec.dtype)]}, got {_NAMES[array.dtype]}"
        )
    if array.ndim != len(spec.shape) or any(
        isinstance(d, int) and d != n for d, n in zip(spec.shape, array.shape, strict=True)
    ):
        want = [d if isinstance(d, int) else -1 for d in spec.shape]
        raise BadTensorError(f"input {spec.name!r} must have shape {want}, got {list(array.shape)}")
    return np.ascontiguousarray(array)


def wants_binary(request: InferRequest, name: str) -> bool:
    """Whether output `name` goes back as binary data."""
    for out in request.outputs or ():
        if out.name == name and out.parameters and "binary_data" in out.parameters:
            return bool(out.parameters["binary_data"])
    return bool((request.parameters or {}).get("binary_data_output", False))


def requested_outputs(request: InferRequest, available: list[str]) -> list[str]:
    """The output names to answer with: those asked for, else all."""
    if not request.outputs:
        return available
    names = [out.name for out in request.outputs]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise BadTensorError(f"unknown outputs {unknown}; this model gives {available}")
    return names


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
        ResponseOutput(name=n, datatype=_NAMES[arrays[n].dtype], shape=list(arrays[n].shape))
        for n in names
    ]
