"""Live sessions on the CPU: the live service against a sliding-window baseline (issue 17).

Both run in one server, side by side: the live package (`model.step.onnx`: the MP-LSTM
state carried from step to step, O(1) per update) and the sliding-window baseline of
bench/stream_window.py (model.onnx re-run on the last T frames at each update, O(T)),
with the same protocol, online sync, continuous batching and update rate (every step).

N sessions each stream 5 views at the model's rate in real time (one message per
instant with every view's raw frame; sessions start at random phases), one utterance
each. Frame-to-update latency is measured by the client: from sending the message that
completes step k to receiving step k's update. A session keeps up when every step it sent
got its update; N is sustained when every session keeps up and the p99 latency over all
sessions is at most 150 ms. Sessions sustained is the largest N of a ladder that holds
(stopping at the first that does not). CPU per step is the server's CPU time (all its
processes, /proc) over the measured window divided by the steps it ran (its /metrics);
the floor is model.onnx's CPU time per clip at batch 32 divided by T, in this process
with ONNX Runtime's default threads. The load generator shares the cores.

Run: .venv/bin/python bench/stream.py [--package models/demo-lipreading-live/1] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import report
from bench.serve import PYTHON, Server, cpu_ms_per_call, free_port, running, session_cpu_s
from bench.stream_window import build_window_package
from mplstm.core.manifest import read_manifest
from mplstm.core.package import ModelPackage, load_package
from mplstm.core.preprocess import load_clip
from mplstm.service.stream_protocol import encode_frames

COMMAND = ".venv/bin/python bench/stream.py"
LATENCY_TARGET_S = 0.150
LIVE_LADDER = (4, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 128, 160)
WINDOW_LADDER = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 20, 24)
BATCH = 32


@dataclass
class SessionResult:
    """One session's steps sent in the measured window, updates received, latencies."""

    sent: int = 0
    received: int = 0
    latencies: list[float] = field(default_factory=list)
    closed: str = ""


@dataclass
class Point:
    """One system at N sessions."""

    system: str
    sessions: int
    kept_up: int  # sessions that got an update for every step
    p50_ms: float
    p99_ms: float
    cpu_ms_per_step: float
    steps_per_s: float
    mean_batch: float

    @property
    def sustained(self) -> bool:
        return self.kept_up == self.sessions and self.p99_ms <= LATENCY_TARGET_S * 1000


def example_frames(package: ModelPackage, examples: Path) -> np.ndarray:
    """An example clip as the live model samples it: uint8 [V, T, C, H, W]."""
    record = read_manifest(examples)[0]
    return load_clip(dict(record.views), package.manifest.preprocess_config()).frames


async def one_session(
    url: str, views: tuple[str, ...], frames: np.ndarray, fps: float, warmup: float, seconds: float
) -> SessionResult:
    from websockets.asyncio.client import connect

    result = SessionResult()
    sent_at: dict[int, float] = {}
    measured_from = warmup * fps
    steps = int((warmup + seconds) * fps)
    payloads = [
        [frames[v, k % frames.shape[1]].tobytes() for v in range(len(views))]
        for k in range(frames.shape[1])
    ]
    async with connect(url, max_size=2**24, compression=None) as ws:  # as mplstm stream
        await ws.recv()  # ready
        await ws.send(json.dumps({"type": "start", "t": 0.0}))

        async def receive() -> None:
            async for text in ws:
                message = json.loads(text)
                if message.get("type") == "update":
                    k = message["step"] - 1
                    if k >= measured_from and k in sent_at:
                        result.received += 1
                        result.latencies.append(time.perf_counter() - sent_at.pop(k))

        reader = asyncio.create_task(receive())
        await asyncio.sleep(random.random() / fps)  # cameras are not in lockstep
        began = time.perf_counter()
        for k in range(steps):
            await asyncio.sleep(max(0.0, began + k / fps - time.perf_counter()))
            t = (k + 0.5) / fps
            message = encode_frames(
                [(name, t, "raw", payloads[k % len(payloads)][v]) for v, name in enumerate(views)]
            )
            if k >= measured_from:
                sent_at[k] = time.perf_counter()
                result.sent += 1
            await ws.send(message)
        await asyncio.sleep(1.0)  # grace for the last updates
        reader.cancel()
        result.closed = "" if ws.close_code is None else f"{ws.close_code} {ws.close_reason}"
    return result


def metric(base: str, name: str, model: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(f'{name}{{model="{model}"}} '):
            return float(line.split()[-1])
    return 0.0


def measure(
    server: Server,
    pid: int,
    model: str,
    n: int,
    views: tuple[str, ...],
    frames: np.ndarray,
    fps: float,
    args: argparse.Namespace,
) -> Point:
    url = f"ws://127.0.0.1:{server.port}/v1/models/{model}/stream"
    steps0 = metric(server.base, "mplstm_stream_steps_total", model)
    batches0 = metric(server.base, "mplstm_stream_batch_size_count", model)

    async def run() -> tuple[list[SessionResult], float, float]:
        tasks = [
            asyncio.create_task(one_session(url, views, frames, fps, args.warmup, args.seconds))
            for _ in range(n)
        ]
        await asyncio.sleep(args.warmup + 0.5)
        cpu0, wall0 = session_cpu_s(pid), time.perf_counter()
        s0 = metric(server.base, "mplstm_stream_steps_total", model)
        await asyncio.sleep(args.seconds - 0.5)
        cpu1, wall1 = session_cpu_s(pid), time.perf_counter()
        s1 = metric(server.base, "mplstm_stream_steps_total", model)
        results = await asyncio.gather(*tasks)
        return results, (cpu1 - cpu0) / max(s1 - s0, 1) * 1e3, (s1 - s0) / (wall1 - wall0)

    results, cpu_ms, steps_per_s = asyncio.run(run())
    latencies = np.array([x for r in results for x in r.latencies]) * 1e3
    steps = metric(server.base, "mplstm_stream_steps_total", model) - steps0
    batches = metric(server.base, "mplstm_stream_batch_size_count", model) - batches0
    kept = sum(1 for r in results if r.sent and r.received == r.sent and not r.closed)
    return Point(
        model,
        n,
        kept,
        float(np.percentile(latencies, 50)) if latencies.size else float("inf"),
        float(np.percentile(latencies, 99)) if latencies.size else float("inf"),
        cpu_ms,
        steps_per_s,
        steps / max(batches, 1),
    )


def floor_cpu_ms(package: ModelPackage, frames: int) -> float:
    """model.onnx CPU time per clip at batch 32, divided by T (ms per step)."""
    pre = package.manifest.preprocess
    views = len(package.manifest.view_names)
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(
        str(package.path / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(0)
    clip = rng.integers(
        0, 256, (BATCH, views, frames, pre.channels, pre.height, pre.width), np.uint8
    )
    mask = np.ones((BATCH, views), bool)
    feed = {"clip": clip, "view_mask": mask}
    session.run(None, feed)
    return (
        cpu_ms_per_call(lambda: session.run(None, feed), seconds=5.0, min_calls=5) / BATCH / frames
    )


def ladder(
    server: Server,
    pid: int,
    model: str,
    rungs: tuple[int, ...],
    views: tuple[str, ...],
    frames: np.ndarray,
    fps: float,
    args: argparse.Namespace,
) -> list[Point]:
    """Each rung in turn until one fails; a failed rung is measured again `args.retries`
    times (a busy host's passing spike should not end a ladder; both systems alike)."""
    points = []
    for n in rungs:
        for attempt in range(args.retries + 1):
            point = measure(server, pid, model, n, views, frames, fps, args)
            print(
                f"{model} N={n} (try {attempt + 1}): kept up {point.kept_up}/{n}, "
                f"p50 {point.p50_ms:.1f} ms, p99 {point.p99_ms:.1f} ms, "
                f"{point.cpu_ms_per_step:.2f} ms CPU/step, {point.steps_per_s:.0f} steps/s, "
                f"batch {point.mean_batch:.1f}",
                flush=True,
            )
            if point.sustained:
                break
        points.append(point)
        if not point.sustained:
            break
    return points


def sustained(points: list[Point]) -> int:
    held = [p.sessions for p in points if p.sustained]
    return max(held, default=0)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def plot(live: list[Point], window: list[Point], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for points, label in (
        (live, "live (step model, state carried)"),
        (window, "sliding window (model.onnx on last T)"),
    ):
        ax.plot(
            [p.sessions for p in points], [min(p.p99_ms, 2000) for p in points], "o-", label=label
        )
    ax.axhline(LATENCY_TARGET_S * 1000, color="gray", linestyle="--", label="150 ms")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sessions (5 views each, real time)")
    ax.set_ylabel("p99 frame-to-update latency (ms)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(
    live: list[Point],
    window: list[Point],
    floor: float,
    package: ModelPackage,
    frames: int,
    fps: float,
    loads: list[str],
    args,
) -> str:
    live_n, window_n = sustained(live), sustained(window)
    at = max((p for p in live if p.sustained), key=lambda p: p.sessions, default=live[-1])
    rows = "\n".join(
        f"| {p.system} | {p.sessions} | {p.kept_up}/{p.sessions} | {p.p50_ms:.1f} | {p.p99_ms:.1f} | "
        f"{p.cpu_ms_per_step:.2f} | {p.steps_per_s:.0f} | {p.mean_batch:.1f} | {'yes' if p.sustained else 'no'} |"
        for p in (*live, *window)
    )
    ratio = live_n / window_n if window_n else float("inf")
    pre = package.manifest.preprocess
    return f"""## Live sessions: the live service vs a sliding-window baseline (CPU)

`{package.name}/{package.version}` (causal MP-LSTM, {len(package.manifest.view_names)} views x {pre.channels}x{pre.height}x{pre.width}, {fps:g} steps/s), one server on loopback holding both systems: the live package (model.step.onnx, state carried) and the sliding-window baseline (bench/stream_window.py: model.onnx on the last T = {frames} frames at every update), same protocol, sync, continuous batching (max batch 128, max delay {args.max_delay_ms:g} ms) and update rate (every step). A rung that fails is measured once more (a busy host's spike), for both systems alike. N sessions each send {len(package.manifest.view_names)} raw frames per message in real time at {fps:g} per second, random phases, one utterance each; {args.warmup:g} s warm-up, {args.seconds:g} s measured. Latency: client-side, from sending the message that completes a step to receiving its update. Sustained: every session got every update and p99 <= 150 ms. CPU per step: the server's processes (/proc) over the measured window / steps it ran. Floor: model.onnx CPU per clip at batch 32 / T, ONNX Runtime default threads, in the bench process. The load generator shares the 2 cores.

| system | sessions | kept up | p50 ms | p99 ms | server CPU ms/step | steps/s | mean batch | sustained |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |
{rows}

- Sessions sustained: live **{live_n}**, sliding window **{window_n}**: **{ratio:.1f}x** (target >= 8x).
- CPU per step at {at.sessions} live sessions: {at.cpu_ms_per_step:.2f} ms against the floor {floor:.3f} ms (model.onnx at batch 32: {floor * frames:.2f} ms per {frames}-frame clip): **{at.cpu_ms_per_step / floor:.2f}x** (target <= 2x).

![stream](plots/stream.png)

Load (`uptime`) before and after: {loads[0]}; {loads[-1]}.

Rerun: `{COMMAND}`. Machine: {report.machine()}. Date: {report.today()}. onnxruntime {ort.__version__}.
"""


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, default=Path("models/demo-lipreading-live/1"))
    parser.add_argument(
        "--examples", type=Path, default=Path("models/examples/lipreading/manifest.jsonl")
    )
    parser.add_argument(
        "--frames", type=int, help="the window T (default: the package's nominal T)"
    )
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--max-delay-ms", type=float, default=2.0)
    parser.add_argument(
        "--quick", action="store_true", help="shorter windows (about half the time)"
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print, do not write docs/benchmarks.md"
    )
    parser.add_argument(
        "--live-ladder", type=_ints, default=LIVE_LADDER, help="session counts, e.g. 8,16,32"
    )
    parser.add_argument(
        "--retries", type=int, default=1, help="measure a failing rung again this often"
    )
    parser.add_argument("--window-ladder", type=_ints, default=WINDOW_LADDER, help="session counts")
    parser.add_argument(
        "--env", action="append", default=[], metavar="MPLSTM_X=V", help="extra server settings"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.warmup, args.seconds = 1.5, 4.0
    package = load_package(args.package)
    frames_t = args.frames or package.manifest.preprocess.frames
    fps = float(package.manifest.preprocess.fps or 0)
    views = package.manifest.view_names
    clip = example_frames(package, args.examples)
    loads = [uptime()]
    print(loads[0], flush=True)
    floor = floor_cpu_ms(package, frames_t)
    print(f"floor: {floor:.3f} ms CPU per step", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
        work = Path(tmp)
        models = work / "models"
        (models / package.name).mkdir(parents=True)
        (models / package.name / package.version).symlink_to(
            package.path.resolve(), target_is_directory=True
        )
        build_window_package(package, models / "window-baseline" / "1", frames_t)
        port = free_port()
        env = {
            "MPLSTM_LOG_LEVEL": "warning",
            "MPLSTM_MAX_SESSIONS": "256",
            "MPLSTM_STREAM_MAX_BATCH": "128",
            "MPLSTM_STREAM_MAX_DELAY_MS": str(args.max_delay_ms),
            "MPLSTM_DECODE_WORKERS": "1",
            "MPLSTM_DEFAULT_MODEL": package.name,
            **dict(item.split("=", 1) for item in args.env),
        }
        command = (
            str(PYTHON),
            "-m",
            "mplstm",
            "serve",
            "--models",
            str(models),
            "--port",
            str(port),
        )
        server = Server("stream", command, port, "/v2/health/ready", env, True)
        with running([server], work) as pids:
            pid = pids["stream"]
            live = ladder(server, pid, package.name, args.live_ladder, views, clip, fps, args)
            window = ladder(
                server, pid, "window-baseline", args.window_ladder, views, clip, fps, args
            )
    loads.append(uptime())
    text = markdown(live, window, floor, package, frames_t, fps, loads, args)
    print(text)
    if not args.no_write:
        plot(live, window, report.plot_path("stream"))
        report.write_section("stream", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
