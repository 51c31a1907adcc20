"""A closed-loop HTTP load generator over loopback: asyncio + aiohttp.

`concurrency` clients each send one request, wait for its answer and send the next,
for `warmup_s + duration_s`; answers that arrive inside the measured window (the last
`duration_s`) count, for throughput and for latency.
Bodies are encoded once up front (multipart or Open Inference Protocol binary), so the
generator spends its CPU on sockets, not on encoding: on a 2-core host it shares the
cores with the server it measures, and an httpx client could not keep a fast server
busy.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp
import numpy as np


@dataclass(frozen=True)
class Payload:
    """One ready-to-send request body and its headers."""

    body: bytes
    headers: Mapping[str, str]


@dataclass(frozen=True)
class LoadResult:
    """What one load run measured: answers in the window, their latencies, failures."""

    concurrency: int
    duration_s: float
    latencies_s: np.ndarray = field(repr=False)
    failures: int  # non-200 answers and transport errors in the window
    answered: int  # successful answers of the whole run, warm-up and drain included
    client_cpu_s: float  # CPU time this process spent generating the load
    failure_example: str = ""

    @property
    def throughput(self) -> float:
        """Successful requests per second in the measured window."""
        return len(self.latencies_s) / self.duration_s

    def percentile_ms(self, q: float) -> float:
        """The q-th percentile latency of successful requests, in ms (nan if none)."""
        if not len(self.latencies_s):
            return float("nan")
        return float(np.percentile(self.latencies_s, q) * 1e3)


def multipart_payload(files: Mapping[str, bytes], content_type: str = "video/mp4") -> Payload:
    """A multipart/form-data body with one file part per (field name, content)."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, content in files.items():
        head = (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="{name}"; filename="{name}.mp4"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        )
        parts.append(head.encode() + content + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return Payload(body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})


def tensor_payload(inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> Payload:
    """An Open Inference Protocol request with binary tensors, as `tritonclient.http` sends it."""
    import tritonclient.http as triton_http
    from tritonclient.utils import np_to_triton_dtype

    infer_inputs = []
    for name, array in inputs.items():
        tensor = triton_http.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array, binary_data=True)
        infer_inputs.append(tensor)
    requested = [triton_http.InferRequestedOutput(name, binary_data=True) for name in outputs]
    body, header_length = triton_http.InferenceServerClient.generate_request_body(
        infer_inputs, outputs=requested
    )
    return Payload(
        body,
        {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(header_length),
        },
    )


Send = Callable[[], Awaitable[tuple[bool, str]]]


async def closed_loop(
    send: Send, *, concurrency: int, duration_s: float, warmup_s: float
) -> LoadResult:
    """`concurrency` clients each awaiting `send()` -> (ok, problem) in a loop; see the module
    docstring. Protocol-free: bench/grpc_load.py drives gRPC calls through it too."""
    latencies: list[float] = []
    failures: list[str] = []
    answered = [0]
    start_at = time.perf_counter() + warmup_s
    stop_at = start_at + duration_s

    async def client() -> None:
        while (sent := time.perf_counter()) < stop_at:
            ok, problem = await send()
            done = time.perf_counter()
            answered[0] += ok
            if start_at <= done <= stop_at:
                if ok:
                    latencies.append(done - sent)
                else:
                    failures.append(problem)

    cpu = time.process_time()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return LoadResult(
        concurrency=concurrency,
        duration_s=duration_s,
        latencies_s=np.asarray(latencies),
        failures=len(failures),
        answered=answered[0],
        client_cpu_s=time.process_time() - cpu,
        failure_example=failures[0] if failures else "",
    )


async def generate_load(
    url: str,
    payloads: Sequence[Payload],
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float = 1.0,
    timeout_s: float = 60.0,
) -> LoadResult:
    """POST `payloads` (in turn) to `url` from `concurrency` clients; see the module docstring.

    Answers before the window (warm-up) or after it do not count; the run still waits
    for the last ones, so that the next run starts on an idle server.
    """
    if not payloads:
        raise ValueError("at least one payload is needed")
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    cycle = itertools.cycle(payloads)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def send() -> tuple[bool, str]:
            payload = next(cycle)
            try:
                async with session.post(url, data=payload.body, headers=payload.headers) as r:
                    text = await r.read()
                    if r.status == 200:
                        return True, ""
                    return False, f"HTTP {r.status}: {text[:200]!r}"
            except aiohttp.ClientError as exc:
                return False, f"{type(exc).__name__}: {exc}"

        return await closed_loop(
            send, concurrency=concurrency, duration_s=duration_s, warmup_s=warmup_s
        )


def merge_results(results: Sequence[LoadResult]) -> LoadResult:
    """Runs at one concurrency as one: latencies pooled, windows and counts summed."""
    return LoadResult(
        concurrency=results[0].concurrency,
        duration_s=sum(r.duration_s for r in results),
        latencies_s=np.concatenate([r.latencies_s for r in results]),
        failures=sum(r.failures for r in results),
        answered=sum(r.answered for r in results),
        client_cpu_s=sum(r.client_cpu_s for r in results),
        failure_example=next((r.failure_example for r in results if r.failure_example), ""),
    )


def run_load(url: str, payloads: Sequence[Payload], **kwargs: float | int) -> LoadResult:
    """`generate_load` from synchronous code (its own event loop)."""
    return asyncio.run(generate_load(url, payloads, **kwargs))
