"""Helpers of the gRPC tests: tensors in tritonclient.grpc's types, and the same over REST."""

from __future__ import annotations

import re
import time

import httpx
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from live_server import Server
from service_helpers import SIZE, VIEWS


def random_clip(batch: int, frames: int, seed: int = 0) -> np.ndarray:
    """`batch` random uint8 clips [batch, V, frames, 1, SIZE, SIZE]."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (batch, len(VIEWS), frames, 1, SIZE, SIZE), np.uint8)


def grpc_inputs(clip: np.ndarray, mask: np.ndarray | None = None) -> list[grpcclient.InferInput]:
    """tritonclient.grpc inputs (raw_input_contents, as tritonclient sends them)."""
    inputs = [grpcclient.InferInput("clip", list(clip.shape), "UINT8")]
    inputs[0].set_data_from_numpy(clip)
    if mask is not None:
        inputs.append(grpcclient.InferInput("view_mask", list(mask.shape), "BOOL"))
        inputs[1].set_data_from_numpy(mask)
    return inputs


def http_inputs(clip: np.ndarray, mask: np.ndarray | None = None) -> list[httpclient.InferInput]:
    """tritonclient.http inputs (binary tensors)."""
    inputs = [httpclient.InferInput("clip", list(clip.shape), "UINT8")]
    inputs[0].set_data_from_numpy(clip, binary_data=True)
    if mask is not None:
        inputs.append(httpclient.InferInput("view_mask", list(mask.shape), "BOOL"))
        inputs[1].set_data_from_numpy(mask, binary_data=True)
    return inputs


def pending(server: Server) -> float:
    """Requests waiting for inference now (the pending-request gauge, all models)."""
    text = httpx.get(f"{server.url}/metrics").text
    depth = re.findall(r"^nv_inference_pending_request_count\{[^}]*\} (\S+)$", text, re.M)
    return sum(float(d) for d in depth)


def wait_pending(
    server: Server, count: int, timeout_s: float = 30.0, *, exactly: bool = False
) -> None:
    """Wait until `count` requests (at least, or `exactly`) wait for inference."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = pending(server)
        if now == count or (now > count and not exactly):
            return
        time.sleep(0.02)
    raise AssertionError(f"{count} requests never waited for inference:\n{server.log()[-3000:]}")


def executions(client: grpcclient.InferenceServerClient, model: str) -> int:
    """Inference runs of `model` so far (ModelStatistics' execution_count)."""
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return int(stats.get("execution_count", 0))
