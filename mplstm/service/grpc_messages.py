"""The gRPC side of the Open Inference Protocol: protobuf messages <-> the data plane's types.

The message classes are the ones `tritonclient[grpc]` ships (`tritonclient.grpc.service_pb2`
and `model_config_pb2`, generated from Triton's `grpc_service.proto`), so the server
speaks exactly the wire format its clients send; nothing generated lives in this
repository. KServe's `grpc_predict_v2.proto` is the same `inference.GRPCInferenceService`
(a subset of it), so KServe's gRPC clients are served too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from google.protobuf.message import Message
from tritonclient.grpc import model_config_pb2 as config_pb2
from tritonclient.grpc import service_pb2 as pb

from mplstm.service.dataplane import TensorRequest, TensorResult
from mplstm.service.errors import BadTensorError
from mplstm.service.repository import LoadedModel, ModelState
from mplstm.service.settings import Settings
from mplstm.service.statistics import Duration, ModelStatistics
from mplstm.service.tensors import (
    DATATYPES,
    ModelMetadata,
    array_from_bytes,
    array_from_values,
    datatype_name,
)

# Where typed contents of each datatype go (grpc_service.proto's InferTensorContents);
# FP16 has none: it travels in raw_input_contents only.
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
_CONTENTS_FIELDS = (*sorted(set(CONTENTS_FIELD.values())), "bytes_contents")


def parameters(values: Mapping[str, Message]) -> dict[str, object]:
    """A request's `parameters` map (InferParameter oneofs) as plain values."""
    out: dict[str, object] = {}
    for key, param in values.items():
        choice = param.WhichOneof("parameter_choice")
        out[key] = getattr(param, choice) if choice else None
    return out


def tensor_request(request: pb.ModelInferRequest, client_deadline_s: float | None) -> TensorRequest:
    """A ModelInferRequest as the data plane's request; BadTensorError if its tensors are malformed."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadTensorError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
            "send one per input, in input order"
        )
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        if tensor.name in arrays:
            raise BadTensorError(f"input {tensor.name!r} given twice")
        arrays[tensor.name] = _input_array(tensor, raw[index] if raw else None)
    return TensorRequest(
        request.model_name,
        arrays,
        version=request.model_version or None,
        id=request.id or None,
        outputs=[out.name for out in request.outputs],
        parameters=parameters(request.parameters),
        client_deadline_s=client_deadline_s,
    )


def _input_array(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None) -> np.ndarray:
    name, datatype, shape = tensor.name, tensor.datatype, list(tensor.shape)
    given = [f for f in _CONTENTS_FIELDS if len(getattr(tensor.contents, f))]
    if raw is not None:
        if given:
            raise BadTensorError(
                f"input {name!r}: both contents and raw_input_contents; send one of them"
            )
        return array_from_bytes(name, datatype, shape, raw)
    expected = CONTENTS_FIELD.get(datatype)
    if expected is None and datatype in DATATYPES:
        raise BadTensorError(f"input {name!r}: {datatype} goes in raw_input_contents only")
    if expected is not None and any(f != expected for f in given):
        raise BadTensorError(f"input {name!r}: {datatype} data goes in contents.{expected}")
    values = getattr(tensor.contents, expected) if expected else ()
    return array_from_values(name, datatype, shape, values)


def infer_response(result: TensorResult) -> pb.ModelInferResponse:
    """The data plane's answer as a ModelInferResponse, outputs in raw_output_contents."""
    response = pb.ModelInferResponse(
        model_name=result.model, model_version=result.version, id=result.id or ""
    )
    for name, array in result.outputs.items():
        response.outputs.add(name=name, datatype=datatype_name(array.dtype), shape=array.shape)
        response.raw_output_contents.append(np.ascontiguousarray(array).tobytes())
    return response


def model_metadata(meta: ModelMetadata) -> pb.ModelMetadataResponse:
    """v2 model metadata as its gRPC message."""
    tensor = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name=meta.name,
        versions=meta.versions,
        platform=meta.platform,
        inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.inputs],
        outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.outputs],
    )


def model_config(model: LoadedModel, settings: Settings) -> config_pb2.ModelConfig:
    """The model as Triton would describe it, with the batching this server applies to it."""
    manifest = model.manifest

    def tensors(specs: Iterable, kind: type) -> list:
        # Triton leaves the batch dimension out of dims when max_batch_size > 0.
        return [
            kind(
                name=s.name,
                data_type=config_pb2.DataType.Value(f"TYPE_{datatype_name(np.dtype(s.dtype))}"),
                dims=[d if isinstance(d, int) else -1 for d in s.shape[1:]],
            )
            for s in specs
        ]

    return config_pb2.ModelConfig(
        name=model.name,
        platform=f"{model.backend.name}_onnx",
        max_batch_size=model.batcher.max_batch,
        input=tensors(manifest.inputs, config_pb2.ModelInput),
        output=tensors(manifest.outputs, config_pb2.ModelOutput),
        dynamic_batching=config_pb2.ModelDynamicBatching(
            max_queue_delay_microseconds=int(settings.max_delay_ms * 1000),
            priority_levels=settings.priority_levels,
            default_priority_level=settings.default_priority_level,
            default_queue_policy=config_pb2.ModelQueuePolicy(
                timeout_action=config_pb2.ModelQueuePolicy.REJECT,
                allow_timeout_override=True,
                max_queue_size=settings.max_queue,
            ),
        ),
        version_policy=config_pb2.ModelVersionPolicy(
            latest=config_pb2.ModelVersionPolicy.Latest(num_versions=1)
        ),
    )


def _duration(value: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=value.count, ns=value.ns)


def model_statistics(name: str, version: str, stats: ModelStatistics) -> pb.ModelStatistics:
    """One model's statistics as Triton reports them."""
    return pb.ModelStatistics(
        name=name,
        version=version,
        last_inference=stats.last_inference_ms,
        inference_count=stats.inference_count,
        execution_count=stats.execution_count,
        inference_stats=pb.InferStatistics(
            success=_duration(stats.success),
            fail=_duration(stats.fail),
            queue=_duration(stats.queue),
            compute_infer=_duration(stats.compute_infer),
        ),
        batch_stats=[
            pb.InferBatchStatistics(batch_size=size, compute_infer=_duration(runs))
            for size, runs in sorted(stats.batches.items())
        ],
    )


def repository_index(states: Iterable[ModelState], ready_only: bool) -> pb.RepositoryIndexResponse:
    """The repository's models and their states (only the READY ones when asked)."""
    entry = pb.RepositoryIndexResponse.ModelIndex
    return pb.RepositoryIndexResponse(
        models=[
            entry(name=s.name, version=s.version or "", state=s.state, reason=s.reason)
            for s in states
            if not ready_only or s.state == "READY"
        ]
    )
