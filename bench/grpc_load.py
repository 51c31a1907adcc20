"""A closed-loop gRPC load generator over loopback: `tritonclient.grpc.aio`, batch-1 requests.

The gRPC twin of bench/loadgen.py, with its rules: `concurrency` clients each send one
ModelInfer call, wait for its answer and send the next, for `warmup_s + duration_s`;
answers inside the measured window count. All clients share one channel (one HTTP/2
connection), as the users of one `tritonclient.grpc` client do. Requests are built once
up front by tritonclient's own request builder (the message `InferenceServerClient.infer`
sends: raw_input_contents), and sent through the aio client's stub, so the generator
spends its CPU on the calls, not on re-encoding tensors (bench/loadgen.py pre-encodes its
HTTP bodies for the same reason).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping, Sequence

import grpc
import numpy as np
from tritonclient.grpc import InferInput, InferRequestedOutput, service_pb2
from tritonclient.grpc._utils import _get_inference_request
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import np_to_triton_dtype

from bench.loadgen import LoadResult, closed_loop


def grpc_request(
    model: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
) -> service_pb2.ModelInferRequest:
    """The ModelInferRequest `tritonclient.grpc` sends for these tensors (raw contents)."""
    infer_inputs = []
    for name, array in inputs.items():
        tensor = InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        infer_inputs.append(tensor)
    return _get_inference_request(
        model_name=model,
        inputs=infer_inputs,
        model_version="",
        request_id="",
        outputs=[InferRequestedOutput(name) for name in outputs],
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=0,
        timeout=None,
        parameters=None,
    )


async def generate_grpc_load(
    target: str,
    requests: Sequence[service_pb2.ModelInferRequest],
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float = 1.0,
    timeout_s: float = 60.0,
) -> LoadResult:
    """Send `requests` (in turn) to the gRPC server at `target` from `concurrency` clients."""
    if not requests:
        raise ValueError("at least one request is needed")
    cycle = itertools.cycle(requests)
    async with InferenceServerClient(target) as client:
        # The aio client's own channel and stub; its infer() would rebuild each request.
        stub = client._client_stub

        async def send() -> tuple[bool, str]:
            try:
                await stub.ModelInfer(request=next(cycle), timeout=timeout_s)
            except grpc.RpcError as exc:
                return False, f"{exc.code()}: {exc.details()}"  # type: ignore[attr-defined]
            return True, ""

        return await closed_loop(
            send, concurrency=concurrency, duration_s=duration_s, warmup_s=warmup_s
        )


def run_grpc_load(
    target: str, requests: Sequence[service_pb2.ModelInferRequest], **kwargs: float | int
) -> LoadResult:
    """`generate_grpc_load` from synchronous code (its own event loop)."""
    return asyncio.run(generate_grpc_load(target, requests, **kwargs))


def check_grpc(target: str, request: service_pb2.ModelInferRequest) -> None:
    """One call, so that a wrong model or tensor fails before any measuring (SystemExit)."""

    async def one() -> None:
        async with InferenceServerClient(target) as client:
            await client._client_stub.ModelInfer(request=request, timeout=60)

    try:
        asyncio.run(one())
    except grpc.RpcError as exc:
        raise SystemExit(f"gRPC {target} answered {exc}") from None
