"""The service over HTTP on loopback: throughput and latency against a naive app and Triton.

Video path (`POST /v1/models/{name}/predict`, one multipart file per view): (a) the
service as it runs by default on a CPU (inference in the decode workers), (a') the
service with MPLSTM_VIDEO_INFERENCE=main (the dynamic batcher), (b) that with
MPLSTM_MAX_BATCH=1, (c) the naive FastAPI app of bench/naive_app.py; and the bound, cores / (CPU time to decode one clip + CPU time per
clip of batched inference), both measured in this process. Tensor path
(`POST /v2/models/{name}/infer`, binary tensors): (a) against Triton Inference Server's
dynamic batcher serving the same model.onnx (bench/triton_model.py, in .venv-triton).
gRPC (`inference.GRPCInferenceService`, the same tensors from `tritonclient.grpc.aio`,
bench/grpc_load.py): the service's gRPC port against Triton's, and against the service's
own REST binary path, in a section of its own.

All servers run at once, idle but for the one being measured; within each concurrency
level, short rounds go to every server in turn and are pooled, so that a busy host slows
all of them alike. Requests are batch-1, from the closed-loop load generator of
bench/loadgen.py. Besides wall-clock throughput and latency, each point records the CPU
time of all the server's processes per answered request (from /proc), which other jobs on
the host hardly move. Where the service's time goes (decode, queue, inference) comes from
the deltas of its own /metrics.

Run: .venv/bin/python bench/serve.py [--package models/demo-lipreading/1] [--quick]
[--paths video tensor grpc] (defaults: about 8 minutes; --quick: about 3; Triton needs
.venv-triton, see TRITON_SETUP). `--paths grpc --concurrency 1 8 32` measures and writes
the gRPC section alone.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import report, serve_grpc
from bench.grpc_load import check_grpc, grpc_request, run_grpc_load
from bench.loadgen import (
    LoadResult,
    Payload,
    merge_results,
    multipart_payload,
    run_load,
    tensor_payload,
)
from mplstm.core.package import ONNX_NAME, ModelPackage, load_package
from mplstm.core.preprocess import load_clip

COMMAND = ".venv/bin/python bench/serve.py"
BENCH = Path(__file__).resolve().parent
PYTHON = Path(sys.executable)
TRITON_SETUP = (
    "python3.11 -m venv .venv-triton",
    ".venv-triton/bin/pip install nvidia-pytriton==0.7.0 numpy==1.26.4 onnxruntime==1.31.1",
)
CONCURRENCY = (1, 8, 32, 64)
PATHS = ("video", "tensor", "grpc")
TARGET_CONCURRENCY = 32  # where the throughput targets are set
TAIL_CONCURRENCY = 8  # where p99 <= 2x p50 is asked for
STAGES = ("decode", "queue", "inference")


@dataclass(frozen=True)
class Server:
    """A server process to start: its command, environment and readiness URL path."""

    key: str
    command: tuple[str, ...]
    port: int
    ready_path: str
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    metrics: bool = False  # whether it has the service's /metrics
    grpc_port: int = 0  # its Open Inference Protocol gRPC port, if any

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


@dataclass(frozen=True)
class System:
    """One measured line: a server, the route it is loaded on, and what is sent."""

    key: str
    label: str
    path: str  # "video", "tensor" (REST) or "grpc"
    server: Server
    route: str
    payloads: tuple[Payload, ...]
    grpc_requests: tuple[object, ...] = ()  # ModelInferRequests, on the grpc path


@dataclass(frozen=True)
class Bound:
    """The throughput limit of the host: all cores busy decoding and inferring, nothing else."""

    decode_cpu_ms: float  # CPU time to decode and sample one clip (all views)
    inference_cpu_ms: float  # CPU time per clip of one batch of `batch` clips
    inference_b1_cpu_ms: float  # the same at batch 1, for what batching saves
    batch: int
    cores: int

    @property
    def cpu_ms(self) -> float:
        """CPU time per clip, decode and inference."""
        return self.decode_cpu_ms + self.inference_cpu_ms

    @property
    def clips_per_s(self) -> float:
        return self.cores * 1e3 / self.cpu_ms


@dataclass(frozen=True)
class Stages:
    """Mean per-request time of each of the service's stages over one run, from /metrics."""

    ms: dict[str, float]
    mean_batch: float


# -- inputs ------------------------------------------------------------------------------


def example_clips(folder: Path, view_names: Sequence[str], count: int) -> list[dict[str, bytes]]:
    """Up to `count` clips of `folder/<clip>/<view>.*`, as view name -> file bytes."""
    clips = []
    for clip_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = {f.stem: f for f in clip_dir.iterdir() if f.is_file()}
        if all(name in files for name in view_names):
            clips.append({name: files[name].read_bytes() for name in view_names})
        if len(clips) == count:
            break
    if not clips:
        raise SystemExit(
            f"no clip under {folder} has every view {list(view_names)}; "
            "pass --clips, e.g. a folder written by `mplstm synth`"
        )
    return clips


def _decoded(
    package: ModelPackage, clips: Sequence[dict[str, bytes]]
) -> Iterator[dict[str, np.ndarray]]:
    """The clips decoded as the service would, as batch-1 model inputs."""
    config = package.manifest.preprocess_config()
    for views in clips:
        clip = load_clip(views, config)
        yield {"clip": clip.frames[None], "view_mask": clip.view_mask[None]}


def tensor_inputs(package: ModelPackage, clips: Sequence[dict[str, bytes]]) -> list[Payload]:
    """The clips decoded as the service would, sent as batch-1 binary tensors."""
    outputs = [spec.name for spec in package.manifest.outputs]
    return [tensor_payload(inputs, outputs) for inputs in _decoded(package, clips)]


def grpc_tensor_requests(package: ModelPackage, clips: Sequence[dict[str, bytes]]) -> list[object]:
    """The same tensors as ModelInferRequests (raw contents), as tritonclient.grpc sends them."""
    outputs = [spec.name for spec in package.manifest.outputs]
    return [grpc_request(package.name, inputs, outputs) for inputs in _decoded(package, clips)]


# -- the bound ---------------------------------------------------------------------------


def cpu_ms_per_call(fn: Callable[[], object], seconds: float, min_calls: int) -> float:
    """Mean CPU time (this process, every thread) of `fn`, called for about `seconds`."""
    spent, calls = 0.0, 0
    deadline = time.perf_counter() + seconds
    while calls < min_calls or time.perf_counter() < deadline:
        start = time.process_time()
        fn()
        spent += time.process_time() - start
        calls += 1
    return spent / calls * 1e3


def measure_bound(
    package: ModelPackage, clips: Sequence[dict[str, bytes]], seconds: float, passes: int = 3
) -> Bound:
    """CPU time per clip of decoding, and of inference in batches of the package's max batch.

    Each the least of `passes` passes (a neighbour on a shared host can only add to it),
    inference on one ONNX Runtime thread, which spends the least CPU per clip: the
    tightest bound this host allows.
    """
    config = package.manifest.preprocess_config()
    decoded = [load_clip(views, config) for views in clips]
    turn = itertools.count()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(
        str(package.file(ONNX_NAME)), options, providers=["CPUExecutionProvider"]
    )
    batch = package.manifest.max_batch
    feeds = {
        size: {
            "clip": np.stack([decoded[i % len(decoded)].frames for i in range(size)]),
            "view_mask": np.stack([decoded[i % len(decoded)].view_mask for i in range(size)]),
        }
        for size in (1, batch)
    }
    for feed in feeds.values():
        session.run(None, feed)
    step = seconds / 3 / passes
    decode_ms, per_clip = math.inf, dict.fromkeys(feeds, math.inf)
    for _ in range(passes):
        decode_ms = min(
            decode_ms,
            cpu_ms_per_call(
                lambda: load_clip(clips[next(turn) % len(clips)], config), step, len(clips)
            ),
        )
        for size, feed in feeds.items():
            ms = cpu_ms_per_call(lambda f=feed: session.run(None, f), step, 2) / size
            per_clip[size] = min(per_clip[size], ms)
    return Bound(decode_ms, per_clip[batch], per_clip[1], batch, report.cores())


# -- servers -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def http_post(url: str, payload: Payload, timeout: float = 60.0) -> bytes:
    request = urllib.request.Request(url, data=payload.body, headers=dict(payload.headers))
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()


def _wait_ready(server: Server, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{server.key} exited at start-up; its log:\n{_tail(log)}")
        with contextlib.suppress(OSError, urllib.error.URLError):
            http_get(server.base + server.ready_path, timeout=2.0)
            return
        time.sleep(0.5)
    raise SystemExit(f"{server.key} not ready after {timeout:.0f} s; its log:\n{_tail(log)}")


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _stop(process: subprocess.Popen) -> None:
    # Each server runs in its own session: tritonserver and its stubs go with it.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def running(
    servers: Sequence[Server], log_dir: Path, timeout: float = 180
) -> Iterator[dict[str, int]]:
    """Start every server and wait until all are ready; yields their session ids; stops them."""
    processes: list[subprocess.Popen] = []
    try:
        logs = []
        for server in servers:
            log = log_dir / f"{server.key}.log"
            with log.open("wb") as out:
                processes.append(
                    subprocess.Popen(
                        server.command,
                        env={**os.environ, **server.env},
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            logs.append(log)
        for server, process, log in zip(servers, processes, logs, strict=True):
            _wait_ready(server, process, log, timeout)
        # start_new_session: each server leads its own session, its pid the session id.
        yield {server.key: process.pid for server, process in zip(servers, processes, strict=True)}
    finally:
        for process in processes:
            _stop(process)


def model_repository(package: ModelPackage, root: Path) -> Path:
    """A repository folder holding only `package` (a link), so the service loads nothing else."""
    link = root / package.name / package.version
    link.parent.mkdir(parents=True)
    link.symlink_to(package.path.resolve(), target_is_directory=True)
    return root


def build_systems(
    package: ModelPackage,
    clips: Sequence[dict[str, bytes]],
    work: Path,
    args: argparse.Namespace,
) -> list[System]:
    name = package.name
    models = str(model_repository(package, work / "models"))
    service_env = {
        "MPLSTM_LOG_LEVEL": "warning",
        "MPLSTM_MAX_DELAY_MS": str(args.max_delay_ms),
        "MPLSTM_MAX_QUEUE": str(4 * max(args.concurrency)),
    }

    def service(key: str, **env: str) -> Server:
        command = (str(PYTHON), "-m", "mplstm", "serve", "--models", models, "--port")
        port, grpc_port = free_port(), free_port()
        env = {**service_env, "MPLSTM_GRPC_PORT": str(grpc_port), **env}
        return Server(key, (*command, str(port)), port, "/v2/health/ready", env, True, grpc_port)

    default = service("service")
    batcher = service("service-batcher", MPLSTM_VIDEO_INFERENCE="main")
    unbatched = service("service-b1", MPLSTM_VIDEO_INFERENCE="main", MPLSTM_MAX_BATCH="1")
    naive_port = free_port()
    naive = Server(
        "naive",
        (
            str(PYTHON),
            str(BENCH / "naive_app.py"),
            "--package",
            str(package.path),
            "--port",
            str(naive_port),
        ),
        naive_port,
        "/v2/health/ready",
    )
    video = tuple(multipart_payload(views) for views in clips)
    tensors = tuple(tensor_inputs(package, clips))
    predict, infer = f"/v1/models/{name}/predict", f"/v2/models/{name}/infer"
    systems = []
    if "video" in args.paths:
        systems += [
            System("service", "service", "video", default, predict, video),
            System("service-batcher", "service, batcher", "video", batcher, predict, video),
            System(
                "service-b1", "service, batcher, max_batch=1", "video", unbatched, predict, video
            ),
            System("naive", "naive FastAPI app", "video", naive, predict, video),
        ]
    # The gRPC section sets gRPC beside the REST binary path: that row comes with it.
    if "tensor" in args.paths or "grpc" in args.paths:
        systems.append(System("service-v2", "service", "tensor", default, infer, tensors))
    requests = tuple(grpc_tensor_requests(package, clips))
    if "grpc" in args.paths:
        systems.append(System("service-grpc", "service", "grpc", default, "", (), requests))
    if not args.no_triton:
        port, grpc_port = free_port(), free_port()
        triton = Server(
            "triton",
            (
                str(args.triton_python),
                str(BENCH / "triton_model.py"),
                "--package",
                str(package.path),
                "--port",
                str(port),
                "--max-delay-ms",
                str(args.max_delay_ms),
                "--grpc-port",
                str(grpc_port),
            ),
            port,
            f"/v2/models/{name}/ready",
            grpc_port=grpc_port,
        )
        if "tensor" in args.paths:
            systems.append(System("triton", "Triton (pytriton)", "tensor", triton, infer, tensors))
        if "grpc" in args.paths:
            systems.append(
                System("triton-grpc", "Triton (pytriton)", "grpc", triton, "", (), requests)
            )
    return systems


# -- measuring ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """One system at one concurrency."""

    load: LoadResult
    # CPU time of all the server's processes per answered request: unlike wall-clock
    # throughput, it hardly moves when other jobs share the cores.
    server_cpu_ms: float
    stages: Stages | None  # the service's own account, from its /metrics
    # Of that, the server's main thread: the service's event loop (HTTP and gRPC handlers).
    loop_cpu_ms: float = float("nan")


def thread_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of the main thread of process `pid`."""
    try:
        fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def session_cpu_s(session: int) -> float:
    """CPU seconds (user + system) of the live processes of a session (a server and its children)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited while we looked
        if int(fields[3]) == session:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def scrape(base: str, model: str) -> dict[str, float]:
    """Sums and counts of the service's stage and batch-size histograms for `model`."""
    text = http_get(base + "/metrics").decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in ("nv_inference_stage_duration_seconds", "nv_inference_batch_size"):
            continue
        for sample in family.samples:
            if sample.labels.get("model") != model or not sample.name.endswith(("_sum", "_count")):
                continue
            key = sample.name.rsplit("_", 1)[1]
            stage = sample.labels.get("stage", "batch")
            # Summed over the other labels (protocol: http and grpc).
            values[f"{stage}_{key}"] = values.get(f"{stage}_{key}", 0.0) + sample.value
    return values


def stages_from(totals: dict[str, float]) -> Stages:
    """Mean per-request stage times (and batch size) from histogram sum and count deltas."""

    def mean(stage: str) -> float:
        count = totals.get(f"{stage}_count", 0)
        return totals.get(f"{stage}_sum", 0) / count if count else float("nan")

    return Stages({s: mean(s) * 1e3 for s in (*STAGES, "total")}, mean("batch"))


def check(system: System) -> None:
    """One request, so that a wrong route or payload fails before any measuring."""
    if system.path == "grpc":
        check_grpc(system.server.grpc_target, system.grpc_requests[0])
        return
    try:
        http_post(system.server.base + system.route, system.payloads[0])
    except urllib.error.HTTPError as exc:
        raise SystemExit(
            f"{system.label} ({system.path} path) answered {exc.code}: {exc.read()[:300]!r}"
        ) from None


@dataclass(frozen=True)
class Sample:
    """One round of one system at one concurrency, before rounds are pooled."""

    load: LoadResult
    server_cpu_s: float
    metrics: dict[str, float]  # deltas of the service's histogram sums and counts
    loop_cpu_s: float = float("nan")  # the server's main thread (the service's event loop)


def measure_once(
    system: System, session: int, model: str, concurrency: int, args: argparse.Namespace
) -> Sample:
    base = system.server.base
    before = scrape(base, model) if system.server.metrics else {}
    cpu, loop = session_cpu_s(session), thread_cpu_s(session)
    if system.path == "grpc":
        load = run_grpc_load(
            system.server.grpc_target,
            system.grpc_requests,
            concurrency=concurrency,
            duration_s=args.duration,
            warmup_s=args.warmup,
        )
    else:
        load = run_load(
            base + system.route,
            system.payloads,
            concurrency=concurrency,
            duration_s=args.duration,
            warmup_s=args.warmup,
        )
    cpu, loop = session_cpu_s(session) - cpu, thread_cpu_s(session) - loop
    after = scrape(base, model) if system.server.metrics else {}
    return Sample(load, cpu, {k: after[k] - before.get(k, 0.0) for k in after}, loop)


def pool(samples: Sequence[Sample]) -> Point:
    """The rounds of one point as one."""
    load = merge_results([s.load for s in samples])
    totals: dict[str, float] = {}
    for sample in samples:
        for key, value in sample.metrics.items():
            totals[key] = totals.get(key, 0.0) + value
    per_request = 1e3 / max(load.answered, 1)
    return Point(
        load,
        sum(s.server_cpu_s for s in samples) * per_request,
        stages_from(totals) if totals else None,
        sum(s.loop_cpu_s for s in samples) * per_request,
    )


def measure(
    systems: Sequence[System], sessions: dict[str, int], model: str, args: argparse.Namespace
) -> dict[str, dict[int, Point]]:
    """Every system at every concurrency: within a level, rounds of every system in turn."""
    results: dict[str, dict[int, Point]] = {s.key: {} for s in systems}
    for system in systems:
        check(system)
    for concurrency in args.concurrency:
        samples: dict[str, list[Sample]] = {s.key: [] for s in systems}
        for _ in range(args.rounds):
            for system in systems:
                session = sessions[system.server.key]
                samples[system.key].append(measure_once(system, session, model, concurrency, args))
        for system in systems:
            point = results[system.key][concurrency] = pool(samples[system.key])
            load = point.load
            print(
                f"{system.path:6s} c={concurrency:<3d} {system.label:22s} "
                f"{load.throughput:6.1f}/s  p50 {load.percentile_ms(50):6.0f} ms  "
                f"p99 {load.percentile_ms(99):6.0f} ms  server CPU {point.server_cpu_ms:5.2f} "
                f"ms/req (loop {point.loop_cpu_ms:4.2f})  client CPU {load.client_cpu_s / max(load.answered, 1) * 1e3:4.1f} "
                f"ms/req  failures {load.failures} {load.failure_example}",
                flush=True,
            )
    return results


# -- report ------------------------------------------------------------------------------


def plot(
    systems: Sequence[System],
    results: dict[str, dict[int, Point]],
    bound: Bound,
    path: Path,
    title: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, kind in zip(axes[:2], ("video", "tensor"), strict=True):
        for system in (s for s in systems if s.path == kind):
            levels = sorted(results[system.key])
            throughput = [results[system.key][c].load.throughput for c in levels]
            ax.plot(levels, throughput, "o-", label=system.label)
        if kind == "video":
            ax.axhline(bound.clips_per_s, color="grey", ls="--", label="bound (CPU time)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("clips/s (higher is better)")
        ax.set_title(f"{kind} path")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    service = results["service"]
    levels = sorted(service)
    bottom = np.zeros(len(levels))
    x = np.arange(len(levels))
    for stage in STAGES:
        heights = np.array([_stages(service[c]).ms[stage] for c in levels])
        axes[2].bar(x, heights, bottom=bottom, label=stage)
        bottom += heights
    axes[2].set_xticks(x, [str(c) for c in levels])
    axes[2].set_xlabel("concurrent clients")
    axes[2].set_ylabel("mean ms per request")
    axes[2].set_title("service, video path: where the time goes")
    axes[2].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _stages(point: Point) -> Stages:
    assert point.stages is not None, "only the service's points have stages"
    return point.stages


def _cell(point: Point | None) -> str:
    if point is None:
        return "—"
    load = point.load
    failed = f", {load.failures} failed" if load.failures else ""
    return (
        f"{load.throughput:.1f} ({load.percentile_ms(50):.0f} / "
        f"{load.percentile_ms(99):.0f}{failed}); {point.server_cpu_ms:.0f}"
    )


def _table(systems: Sequence[System], results: dict[str, dict[int, Point]]) -> list[str]:
    header = "| clients | " + " | ".join(s.label for s in systems) + " |"
    rule = "| ---: | " + " | ".join("---:" for _ in systems) + " |"
    levels = sorted({c for s in systems for c in results[s.key]})
    rows = [
        f"| {c} | " + " | ".join(_cell(results[s.key].get(c)) for s in systems) + " |"
        for c in levels
    ]
    return [header, rule, *rows]


def _target(name: str, value: float, goal: float, higher_is_better: bool) -> str:
    met = value >= goal if higher_is_better else value <= goal
    return f"| {name} | {value:.2f} | {'met' if met else '**missed**'} |"


def targets(results: dict[str, dict[int, Point]], bound: Bound) -> list[str]:
    """Issue 5's targets, at the concurrencies they are set for, where those were measured."""
    c32, c8 = TARGET_CONCURRENCY, TAIL_CONCURRENCY
    rows = ["| target | measured | |", "| --- | ---: | --- |"]
    video, tensor = results["service"], results["service-v2"]
    if c32 in video:
        rows += [
            _target(
                f"video: service / naive app throughput, {c32} clients (≥ 1.5)",
                video[c32].load.throughput / results["naive"][c32].load.throughput, 1.5, True,
            ),
            _target(
                f"video: naive app / service CPU per request, {c32} clients (same goal, "
                "contention-proof)",
                results["naive"][c32].server_cpu_ms / video[c32].server_cpu_ms, 1.5, True,
            ),
            _target(
                f"video: service / bound, {c32} clients (≥ 0.8)",
                video[c32].load.throughput / bound.clips_per_s, 0.8, True,
            ),
            _target(
                f"video: bound CPU per clip / service CPU per request, {c32} clients (same "
                "goal, contention-proof)",
                bound.cpu_ms / video[c32].server_cpu_ms, 0.8, True,
            ),
        ]  # fmt: skip
    if c32 in tensor and "triton" in results:
        triton = results["triton"][c32].load
        rows += [
            _target(
                f"tensor: service / Triton throughput, {c32} clients (≥ 1.0)",
                tensor[c32].load.throughput / triton.throughput, 1.0, True,
            ),
            _target(
                f"tensor: Triton / service CPU per request, {c32} clients (same goal, "
                "contention-proof)",
                results["triton"][c32].server_cpu_ms / tensor[c32].server_cpu_ms, 1.0, True,
            ),
            _target(
                f"tensor: service p99 / Triton p99, {c32} clients (≤ 1.0)",
                tensor[c32].load.percentile_ms(99) / triton.percentile_ms(99), 1.0, False,
            ),
        ]  # fmt: skip
    if c8 in video:
        for path, points in (("video", video), ("tensor", tensor)):
            load = points[c8].load
            rows.append(
                _target(
                    f"{path}: service p99 / p50, {c8} clients (≤ 2)",
                    load.percentile_ms(99) / load.percentile_ms(50), 2.0, False,
                )
            )  # fmt: skip
    return rows


def markdown(
    package: ModelPackage,
    systems: Sequence[System],
    results: dict[str, dict[int, Point]],
    bound: Bound,
    args: argparse.Namespace,
    triton_version: str,
) -> str:
    m = package.manifest
    pre = m.preprocess
    video = [s for s in systems if s.path == "video"]
    tensor = [s for s in systems if s.path == "tensor"]
    stage_rows = [
        "| clients | decode | queue | inference | total | mean batch |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c, point in sorted(results["service"].items()):
        stages = _stages(point)
        cells = " | ".join(f"{stages.ms[s]:.1f}" for s in (*STAGES, "total"))
        stage_rows.append(f"| {c} | {cells} | {stages.mean_batch:.1f} |")
    preliminary = (
        [
            "**Preliminary**: measured while other jobs kept the 2 cores busy (load average "
            "well above 2). Wall-clock figures are low and noisy, and they favour servers with "
            "many runnable threads, which take a bigger share of a contended CPU: the naive "
            "app runs up to 40 requests at once in Starlette's thread pool, the service "
            "decodes in 2 worker processes and infers on 1 thread. Server CPU per request is the steadier "
            "comparison until a rerun on a quiet host.",
            "",
        ]
        if args.preliminary
        else []
    )
    triton_note = (
        f"Triton: tritonserver {triton_version} from `nvidia-pytriton` 0.7.0, on the CPU, "
        "serving a Python callable (one ONNX Runtime call per batch its dynamic batcher "
        "formed) through the python backend; it runs in its own venv (pytriton needs numpy<2):"
        if "triton" in results
        else "Triton was not measured (`--no-triton`); its venv is set up with:"
    )
    rerun = f"{COMMAND} --package {package.path}" + (" --quick" if args.quick else "")
    return "\n".join(
        [
            "## Service over HTTP: the service vs a naive FastAPI app and Triton (CPU)",
            "",
            *preliminary,
            *([args.note, ""] if args.note else []),
            f"`{m.name}/{m.version}` ({m.model_family}, {len(m.view_names)} views x "
            f"{pre.frames} frames x {pre.channels}x{pre.height}x{pre.width}), "
            f"{len(systems[0].payloads)} example clips sent in turn; batch-1 requests from a "
            "closed-loop aiohttp load generator on the same host (`bench/loadgen.py`), "
            f"{args.rounds} round(s) per point of {args.warmup:g} s warm-up then {args.duration:g} s "
            "measured, pooled; all servers up at once, and within each concurrency level the "
            "rounds go to every server in turn. Service: max batch "
            f"{m.max_batch}, max delay {args.max_delay_ms:g} ms; Triton: the same max batch "
            "and max_queue_delay. ONNX Runtime with its default threads everywhere, but in the "
            "service's decode workers where they infer: the usable cores shared out, one each.",
            "",
            "Cells: clips/s (p50 / p99 latency, ms); server CPU ms per request (all the "
            "server's processes, from /proc).",
            "",
            "### Video path: `POST /v1/models/{name}/predict`, one mp4 per view",
            "",
            *_table(video, results),
            "",
            f"Bound: {bound.cores} cores / ({bound.decode_cpu_ms:.1f} ms CPU to decode a clip + "
            f"{bound.inference_cpu_ms:.1f} ms CPU per clip of inference at batch {bound.batch}) "
            f"= **{bound.clips_per_s:.1f} clips/s** (CPU times measured in the benchmark's "
            "process, each the least of 3 passes, ONNX Runtime on one thread: the least CPU "
            "per clip). Inference at batch 1 costs "
            f"{bound.inference_b1_cpu_ms:.1f} ms CPU per clip: what batching can save on this "
            "model and host.",
            "",
            "### Tensor path: `POST /v2/models/{name}/infer`, binary tensors",
            "",
            *_table(tensor, results),
            "",
            "### Targets (issue 5)",
            "",
            *targets(results, bound),
            "",
            "### Where the service's time goes (video path, mean ms per request, its /metrics)",
            "",
            *stage_rows,
            "",
            "The service's default on a CPU (`MPLSTM_VIDEO_INFERENCE=auto`) runs each clip "
            "through ONNX Runtime in the decode worker process that decoded it; `service, "
            "batcher` (`MPLSTM_VIDEO_INFERENCE=main`) sends the decoded clips to the model's dynamic batcher in the main "
            "process instead, and `max_batch=1` is that batcher closing every batch at one "
            "clip. Here, decode and inference are the worker's own times, and queue is the "
            "rest of the request: waiting for a free worker and the hand-over both ways.",
            "",
            "![serve](plots/serve.png)",
            "",
            triton_note,
            "",
            "```",
            *TRITON_SETUP,
            "```",
            "",
            f"Rerun: `{rerun}`. Machine: {report.machine()}; {report.today()}; "
            f"onnxruntime {ort.__version__}.",
        ]
    )


def triton_server_version(systems: Sequence[System]) -> str:
    import json

    for system in systems:
        if system.server.key == "triton":
            return json.loads(http_get(system.server.base + "/v2"))["version"]
    return ""


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, default=Path("models/demo-lipreading/1"))
    parser.add_argument(
        "--clips", type=Path, default=Path("models/examples/lipreading/clips"),
        help="folder of clip folders, one file per view named by view name",
    )  # fmt: skip
    parser.add_argument("--num-clips", type=int, default=4, help="clips sent in turn")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per point, pooled")
    parser.add_argument("--duration", type=float, default=4.0, help="measured s per round")
    parser.add_argument("--warmup", type=float, default=1.5, help="s before measuring")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    parser.add_argument("--max-delay-ms", type=float, default=5.0, help="service and Triton")
    parser.add_argument(
        "--paths", nargs="+", choices=PATHS, default=list(PATHS),
        help="what to measure: the video and tensor paths (the HTTP section) and gRPC (its own)",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s: a smoke run")
    parser.add_argument("--no-triton", action="store_true", help="skip Triton")
    parser.add_argument("--triton-python", type=Path, default=Path(".venv-triton/bin/python"))
    parser.add_argument("--preliminary", action="store_true", help="say so in the section")
    parser.add_argument("--note", default="", help="a sentence for the section (e.g. the model)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    args.load_average = os.getloadavg()  # the host's load when the run started
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 2.0, 1.0
    if not args.no_triton and not args.triton_python.exists():
        raise SystemExit(
            f"{args.triton_python} not found: set up the Triton venv with\n  "
            + "\n  ".join(TRITON_SETUP)
            + "\nor pass --no-triton"
        )
    package = load_package(args.package)
    clips = example_clips(args.clips, package.manifest.view_names, args.num_clips)
    http_section = {"video", "tensor"} <= set(args.paths)
    if http_section:
        bound = measure_bound(package, clips, seconds=3.0 if args.quick else 18.0)
        print(
            f"bound: decode {bound.decode_cpu_ms:.1f} ms CPU/clip, inference "
            f"{bound.inference_cpu_ms:.1f} ms CPU/clip at batch {bound.batch} "
            f"({bound.inference_b1_cpu_ms:.1f} at batch 1) -> "
            f"{bound.clips_per_s:.1f} clips/s on {bound.cores} cores",
            flush=True,
        )
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        work = Path(tmp)
        systems = build_systems(package, clips, work, args)
        servers = list({s.server.key: s.server for s in systems}.values())
        with running(servers, work) as sessions:
            triton_version = triton_server_version(systems)
            results = measure(systems, sessions, package.name, args)
    if args.no_write:
        return
    if http_section:
        plot(
            systems, results, bound, report.plot_path("serve"),
            f"{package.name}: service vs naive app vs Triton, batch-1 requests over loopback",
        )  # fmt: skip
        report.write_section(
            "serve", markdown(package, systems, results, bound, args, triton_version)
        )
    if "grpc" in args.paths:
        serve_grpc.plot(systems, results, report.plot_path("serve-grpc"), package.name)
        report.write_section(
            "serve-grpc",
            serve_grpc.markdown(package, systems, results, args, triton_version, _cell),
        )


if __name__ == "__main__":
    main()
