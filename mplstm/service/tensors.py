"""Open Inference Protocol tensors, checked one way for every protocol.

REST (`oip.py`: JSON or binary tensors) and gRPC (`grpc_servicer.py`: typed contents or
`raw_input_contents`) both turn a request's inputs into numpy arrays here, and both check
them against the model's manifest with `model_inputs`, so the same bad tensor gets the
same message whichever way it came.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from mplstm.core.package import PackageManifest, TensorSpec
from mplstm.service.errors import BadTensorError

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


def datatype_name(dtype: np.dtype) -> str:
    """The protocol's name of a numpy dtype ("FP32", "UINT8", ...)."""
    return _NAMES[np.dtype(dtype)]


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
        datatype=datatype_name(np.dtype(spec.dtype)),
        shape=[d if isinstance(d, int) else -1 for d in spec.shape],
    )


def input_layout(name: str, datatype: str, shape: Sequence[int]) -> tuple[np.dtype, int]:
    """(numpy dtype, element count) of a declared input; BadTensorError if unusable."""
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        raise BadTensorError(
            f"input {name!r}: datatype {datatype!r} is not one of {sorted(DATATYPES)}"
        )
    if any(d < 0 for d in shape):
        raise BadTensorError(f"input {name!r}: negative dimension in {list(shape)}")
    return dtype, math.prod(shape)


def array_from_bytes(
    name: str, datatype: str, shape: Sequence[int], data: bytes | memoryview
) -> np.ndarray:
    """An input sent as raw bytes (REST binary data, gRPC raw_input_contents), no copy."""
    dtype, count = input_layout(name, datatype, shape)
    size = memoryview(data).nbytes
    if size != count * dtype.itemsize:
        raise BadTensorError(
            f"input {name!r}: {size} bytes of data is not {count} x {dtype.itemsize} bytes "
            f"for shape {list(shape)}"
        )
    return np.frombuffer(data, dtype, count).reshape(shape)


# The value types each kind of datatype takes: a bool is no integer, a string no number.
_VALUE_TYPES: dict[str, tuple[frozenset[type], str]] = {
    "b": (frozenset({bool}), "true or false"),
    "i": (frozenset({int}), "integers"),
    "u": (frozenset({int}), "integers"),
    "f": (frozenset({int, float}), "numbers"),
}


def array_from_values(
    name: str, datatype: str, shape: Sequence[int], values: Iterable[Any]
) -> np.ndarray:
    """An input sent as values (REST JSON `data`, gRPC typed contents), strictly.

    No rounding, wrapping, parsing or truthiness: `1.5` or `"7"` for an integer datatype,
    a value out of its range, a string or a number for BOOL, and ragged nesting are
    BadTensorError, never silently converted.
    """
    dtype, count = input_layout(name, datatype, shape)
    items = list(values)
    if items and isinstance(items[0], list):  # nested rows: numpy checks the nesting is regular
        items = np.asarray(items, dtype=object).reshape(-1).tolist()
    allowed, what = _VALUE_TYPES[dtype.kind]
    found = set(map(type, items))
    if not found <= allowed:
        wrong = ", ".join(sorted(t.__name__ for t in found - allowed))
        raise BadTensorError(
            f"input {name!r}: {datatype} data must be {what} (flat, or nested lists of equal "
            f"length), got {wrong}"
        )
    if len(items) != count:
        raise BadTensorError(
            f"input {name!r}: {len(items)} values for shape {list(shape)} ({count})"
        )
    if dtype.kind in "iu" and items:
        info = np.iinfo(dtype)
        low, high = min(items), max(items)
        if low < info.min or high > info.max:
            raise BadTensorError(
                f"input {name!r}: {datatype} values lie in [{info.min}, {info.max}], got "
                f"{low if low < info.min else high}"
            )
    with np.errstate(over="raise"):
        try:
            return np.asarray(items, dtype=dtype).reshape(shape)
        except FloatingPointError:
            raise BadTensorError(
                f"input {name!r}: a value is out of the range of {datatype}"
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
    want_dtype = np.dtype(spec.dtype)
    if array.dtype != want_dtype:
        raise BadTensorError(
            f"input {spec.name!r} must be {datatype_name(want_dtype)}, "
            f"got {datatype_name(array.dtype)}"
        )
    if array.ndim != len(spec.shape) or any(
        isinstance(d, int) and d != n for d, n in zip(spec.shape, array.shape, strict=True)
    ):
        want = [d if isinstance(d, int) else -1 for d in spec.shape]
        raise BadTensorError(f"input {spec.name!r} must have shape {want}, got {list(array.shape)}")
    return np.ascontiguousarray(array)


def select_outputs(requested: Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """The output names to answer with: those asked for, else all."""
    if not requested:
        return list(available)
    unknown = [n for n in requested if n not in available]
    if unknown:
        raise BadTensorError(f"unknown outputs {unknown}; this model gives {list(available)}")
    return list(requested)
