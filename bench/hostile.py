"""Hostile clients: a normal client's latency beside slow connections, and RSS under huge bodies.

Against `mplstm serve` on one package, on loopback, with the service's default limits:

(a) latency: a normal client (one request at a time, `POST /v2/models/{name}/infer`,
batch-1 binary tensors, the closed-loop generator of bench/loadgen.py) alone, and while
`--slow` connections are held open by another process: half trickle a request head, half
a /v2 body (declared 1 MB), one byte a second each, and every one the server cuts off
reconnects at once, so that many stay open throughout. The two conditions alternate in
`--rounds` rounds and are pooled, so a busy host slows both alike.

(b) memory: `--bodies` clients each send a `--body-mb` MB /v2 body at once (a binary tensor
that fits no model: read whole, then 400). Peak RSS of the server's main process (VmHWM,
reset just before) and of all its processes (sampled every 20 ms), against the 1 GB target.

With `--compare PATH` the same runs against the service of another checkout (the code
before a change, say), side by side; the slow connections there stay open as long as
that server lets them.

Run: .venv/bin/python bench/hostile.py [--slow 1000] [--bodies 50] [--body-mb 60]
     [--compare ../main] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import report
from bench.loadgen import LoadResult, Payload, merge_results, run_load
from bench.serve import (
    PYTHON,
    Server,
    example_clips,
    free_port,
    http_get,
    model_repository,
    running,
    session_cpu_s,
    tensor_inputs,
)
from mplstm.core.package import load_package

COMMAND = ".venv/bin/python bench/hostile.py"
GIB = 2**30
RSS_TARGET = 1 * 10**9  # the 1 GB
P99_TARGET = 2.0  # p99 beside the slow connections, at most this times p99 alone
# A slow body's declared size: more than the first 64 KiB the server reads before it
# holds room for a body, never sent.
SLOW_BODY_BYTES = 1_000_000


# -- slow connections (their own process) ------------------------------------------------


def _raise_open_files() -> None:
    """A thousand connections need more descriptors than a default soft limit of 1024."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _slow_heads(model: str) -> tuple[bytes, bytes]:
    """The opening bytes of a slow head and of a slow body; each then gets a byte a second."""
    head = b"GET /v2/health/live HTTP/1.1\r\nHost: bench\r\nX-Slow: "
    body = (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: bench\r\n"
        f"Content-Length: {SLOW_BODY_BYTES}\r\nInference-Header-Content-Length: 64\r\n\r\n"
    ).encode()
    return head, body


async def _slow_connection(
    port: int, opening: bytes, stop: threading.Event, stats: Counter[str]
) -> None:
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            stats["connect_failed"] += 1
            await asyncio.sleep(0.2)
            continue
        stats["open"] += 1
        try:
            writer.write(opening)
            while not stop.is_set():
                try:
                    answer = await asyncio.wait_for(reader.read(4096), 1.0)
                except TimeoutError:
                    writer.write(b"a")  # one more byte of header value, or of body
                    continue
                status = answer.split(b" ", 2)[1].decode() if answer.count(b" ") >= 2 else "closed"
                stats[f"answer_{status}"] += 1
                break
        except OSError:
            stats["reset"] += 1
        finally:
            stats["open"] -= 1
            writer.close()


def _hold_slow_connections(port: int, count: int, model: str, stop: Any, opened: Any) -> None:
    """Process target: keep `count` slow connections open until `stop`; `opened` tracks them."""
    _raise_open_files()
    heads = _slow_heads(model)

    async def hold() -> None:
        stats: Counter[str] = Counter()
        done = threading.Event()
        tasks = [
            asyncio.create_task(_slow_connection(port, heads[i % 2], done, stats))
            for i in range(count)
        ]
        while not stop.is_set():
            opened.value = stats["open"]
            await asyncio.sleep(0.1)
        done.set()
        await asyncio.gather(*tasks)
        print(json.dumps(dict(stats)), flush=True)

    asyncio.run(hold())


@contextmanager
def slow_connections(port: int, count: int, model: str) -> Iterator[Any]:
    """`count` slow connections held open by another process while the block runs."""
    context = multiprocessing.get_context("spawn")
    stop, opened = context.Event(), context.Value("i", 0)
    process = context.Process(
        target=_hold_slow_connections, args=(port, count, model, stop, opened)
    )
    process.start()
    try:
        deadline = time.monotonic() + 60
        while opened.value < count and time.monotonic() < deadline:
            time.sleep(0.1)
        yield opened
    finally:
        stop.set()
        process.join(timeout=30)
        if process.is_alive():
            process.kill()


# -- measuring ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Latency:
    """The normal client alone and beside the slow connections, pooled over rounds."""

    alone: LoadResult
    beside: LoadResult
    slow_open: tuple[int, int]  # fewest and most slow connections open (client side)
    cpu: tuple[float, float]  # the server's CPU (all processes), cores busy: alone, beside
    server_connections: tuple[float, float]  # the server's gauge at window start/end (or nan)
    refused: dict[str, float]  # the server's refusals by reason during the slow rounds


@dataclass(frozen=True)
class Memory:
    """RSS of the server around a burst of large bodies."""

    before_mib: float  # main process, before the burst
    peak_main_mib: float  # main process, VmHWM over the burst
    peak_all_mib: float  # all its processes, sampled
    after_mib: float  # main process, a second after the burst
    statuses: dict[str, int]
    seconds: float


def _metrics(base: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in http_get(base + "/metrics").decode().splitlines():
        if line.startswith("mplstm_http_") and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _timed_load(
    url: str, payloads: Sequence[Payload], session: int, seconds: float
) -> tuple[LoadResult, float, float]:
    """One round of the normal client; with the server's CPU seconds and the wall seconds."""
    cpu, wall = session_cpu_s(session), time.perf_counter()
    load = run_load(url, payloads, concurrency=1, duration_s=seconds)
    return load, session_cpu_s(session) - cpu, time.perf_counter() - wall


def measure_latency(
    server: Server, session: int, payloads: Sequence[Payload], model: str, args: argparse.Namespace
) -> Latency:
    url = f"{server.base}/v2/models/{model}/infer"
    alone, beside, opened_range, gauges = [], [], [], []
    cpu = {"alone": [0.0, 0.0], "beside": [0.0, 0.0]}
    refused: Counter[str] = Counter()
    for r in range(args.rounds):
        load, used, wall = _timed_load(url, payloads, session, args.duration)
        alone.append(load)
        cpu["alone"] = [cpu["alone"][0] + used, cpu["alone"][1] + wall]
        with slow_connections(server.port, args.slow, model) as opened:
            before = _metrics(server.base) if server.metrics else {}
            low = opened.value
            load, used, wall = _timed_load(url, payloads, session, args.duration)
            beside.append(load)
            cpu["beside"] = [cpu["beside"][0] + used, cpu["beside"][1] + wall]
            high = opened.value
            after = _metrics(server.base) if server.metrics else {}
        opened_range += [low, high]
        gauges += [before.get("mplstm_http_connections", np.nan)]
        gauges += [after.get("mplstm_http_connections", np.nan)]
        for name, value in after.items():
            if name.startswith("mplstm_http_refused_total"):
                refused[name.split('"')[1]] += value - before.get(name, 0.0)
        print(
            f"  {server.key} round {r + 1}: alone p50/p99 {alone[-1].percentile_ms(50):.1f}/"
            f"{alone[-1].percentile_ms(99):.1f} ms; beside {low}-{high} slow connections "
            f"{beside[-1].percentile_ms(50):.1f}/{beside[-1].percentile_ms(99):.1f} ms, "
            f"failures {beside[-1].failures} {beside[-1].failure_example[:120]}",
            flush=True,
        )
    seen = [g for g in gauges if not np.isnan(g)]
    return Latency(
        merge_results(alone),
        merge_results(beside),
        (min(opened_range), max(opened_range)),
        (cpu["alone"][0] / cpu["alone"][1], cpu["beside"][0] / cpu["beside"][1]),
        (min(seen), max(seen)) if seen else (np.nan, np.nan),
        dict(refused),
    )


def _rss_kib(pid: int, field: str = "VmRSS") -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
    except (OSError, StopIteration):
        return 0  # exited while we looked


def session_rss_mib(session: int) -> float:
    """RSS of every live process of a session (a server and its workers), MiB."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == session:
            total += _rss_kib(int(stat.parent.name))
    return total / 1024


def big_body(mb: int) -> Payload:
    """A binary /v2 body of `mb` MB whose one tensor fits no model: read whole, then 400."""
    count = mb * 10**6 - 256
    tensor = {"name": "clip", "shape": [count], "datatype": "UINT8"}
    tensor["parameters"] = {"binary_data_size": count}
    head = json.dumps({"inputs": [tensor]}).encode().ljust(256)
    return Payload(head + bytes(count), {"Inference-Header-Content-Length": "256"})


async def _post(port: int, path: str, payload: Payload) -> str:
    """POST one body from a plain asyncio stream, a MiB at a time as the server takes it
    (a client library would buffer all of it first); the answer's status and code."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        return type(exc).__name__
    try:
        head = [f"POST {path} HTTP/1.1", "Host: bench", f"Content-Length: {len(payload.body)}"]
        head += [f"{k}: {v}" for k, v in payload.headers.items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        body = memoryview(payload.body)
        for start in range(0, len(body), 2**20):
            writer.write(body[start : start + 2**20])
            await writer.drain()
        status_line = await reader.readline()
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        text = await reader.readexactly(int(headers.get("content-length", "0")))
        code = json.loads(text).get("error", "") if text[:1] == b"{" else ""
        return f"{status_line.split()[1].decode()} {code}".strip()
    except (OSError, asyncio.IncompleteReadError) as exc:
        return type(exc).__name__
    finally:
        writer.close()


async def _burst(port: int, path: str, payload: Payload, clients: int) -> Counter[str]:
    return Counter(await asyncio.gather(*(_post(port, path, payload) for _ in range(clients))))


def measure_memory(server: Server, session: int, route: str, args: argparse.Namespace) -> Memory:
    payload = big_body(args.body_mb)
    before = _rss_kib(session) / 1024
    Path(f"/proc/{session}/clear_refs").write_text("5")  # VmHWM from here
    peak = [session_rss_mib(session)]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak.append(session_rss_mib(session))

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    statuses = asyncio.run(_burst(server.port, route, payload, args.bodies))
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    peak_main = _rss_kib(session, "VmHWM") / 1024
    time.sleep(1.0)
    memory = Memory(before, peak_main, max(peak), _rss_kib(session) / 1024, dict(statuses), seconds)
    print(f"  {server.key}: {memory}", flush=True)
    return memory


# -- report ------------------------------------------------------------------------------


def plot(results: dict[str, tuple[Latency, Memory]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat_ax, mem_ax) = plt.subplots(1, 2, figsize=(11, 3.8))
    keys = list(results)
    x = np.arange(len(keys))
    for offset, (label, pick) in enumerate(
        (("alone", lambda lat: lat.alone), ("beside slow connections", lambda lat: lat.beside))
    ):
        for q, hatch in ((50, ""), (99, "//")):
            values = [pick(results[k][0]).percentile_ms(q) for k in keys]
            shift = (offset * 2 + (q == 99) - 1.5) * 0.2
            lat_ax.bar(x + shift, values, 0.2, hatch=hatch, label=f"p{q} {label}")
    lat_ax.set_xticks(x, keys)
    lat_ax.set_ylabel("ms (lower is better)")
    lat_ax.set_title("normal client, /v2 tensors, one at a time")
    lat_ax.legend(fontsize=7)
    for offset, (label, field) in enumerate(
        (("main process, peak", "peak_main_mib"), ("all processes, peak", "peak_all_mib"))
    ):
        values = [getattr(results[k][1], field) * 2**20 / 10**9 for k in keys]
        mem_ax.bar(x + (offset - 0.5) * 0.35, values, 0.35, label=label)
    mem_ax.axhline(RSS_TARGET / 10**9, color="grey", ls="--", label="target (1 GB)")
    mem_ax.set_xticks(x, keys)
    mem_ax.set_ylabel("RSS, GB (lower is better)")
    mem_ax.set_title("50 clients x 60 MB /v2 bodies at once")
    mem_ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _latency_rows(results: dict[str, tuple[Latency, Memory]], slow: int) -> list[str]:
    rows = [
        "| server | alone p50 / p99 ms | beside slow connections p50 / p99 ms | p99 ratio "
        "| server CPU, cores: alone / beside | slow connections open (client) "
        "| server's connection gauge | failures beside | the server cut off |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for key, (lat, _) in results.items():
        ratio = lat.beside.percentile_ms(99) / lat.alone.percentile_ms(99)
        gauge = (
            "-"
            if np.isnan(lat.server_connections[0])
            else "{:.0f}-{:.0f}".format(*lat.server_connections)
        )
        cut = ", ".join(f"{n:.0f} {r}" for r, n in sorted(lat.refused.items()) if n) or "none"
        rows.append(
            f"| {key} | {lat.alone.percentile_ms(50):.1f} / {lat.alone.percentile_ms(99):.1f} "
            f"| {lat.beside.percentile_ms(50):.1f} / {lat.beside.percentile_ms(99):.1f} "
            f"| {ratio:.2f}x | {lat.cpu[0]:.2f} / {lat.cpu[1]:.2f} "
            f"| {lat.slow_open[0]}-{lat.slow_open[1]} of {slow} | {gauge} "
            f"| {lat.beside.failures} | {cut} |"
        )
    return rows


def _memory_rows(results: dict[str, tuple[Latency, Memory]]) -> list[str]:
    rows = [
        "| server | RSS before, MiB | peak, main process | peak, all processes "
        "| RSS 1 s after | answers | burst took |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for key, (_, mem) in results.items():
        answers = ", ".join(f"{n} x {s}" for s, n in sorted(mem.statuses.items()))
        rows.append(
            f"| {key} | {mem.before_mib:.0f} | {mem.peak_main_mib:.0f} | {mem.peak_all_mib:.0f} "
            f"| {mem.after_mib:.0f} | {answers} | {mem.seconds:.1f} s |"
        )
    return rows


def targets(results: dict[str, tuple[Latency, Memory]], args: argparse.Namespace) -> list[str]:
    lat, mem = results["service"]
    ratio = lat.beside.percentile_ms(99) / lat.alone.percentile_ms(99)
    peak = mem.peak_main_mib * 2**20
    served = lat.beside.failures == 0 and len(lat.beside.latencies_s) > 0
    return [
        f"- Normal client still served beside the slow connections: "
        f"{'**met**' if served else '**not met**'} ({len(lat.beside.latencies_s)} answers, "
        f"{lat.beside.failures} failures).",
        f"- p99 beside them within {P99_TARGET:g}x of alone: {ratio:.2f}x, "
        f"{'**met**' if ratio <= P99_TARGET else '**not met**'}.",
        f"- Peak RSS (main process) with {args.bodies} concurrent {args.body_mb} MB bodies "
        f"<= 1 GB: {peak / 10**9:.2f} GB, "
        f"{'**met**' if peak <= RSS_TARGET else '**not met**'} (all processes: "
        f"{mem.peak_all_mib * 2**20 / 10**9:.2f} GB).",
    ]


def markdown(
    results: dict[str, tuple[Latency, Memory]],
    args: argparse.Namespace,
    model: str,
    loads: tuple[tuple[float, ...], tuple[float, ...]],
) -> str:
    compare = f" --compare {args.compare}" if args.compare else ""
    rerun = (
        f"{COMMAND} --package {args.package} --slow {args.slow} --bodies {args.bodies} "
        f"--body-mb {args.body_mb}{compare}"
    )
    before = (
        ""
        if not args.compare
        else (
            f" `before` is the service of `{args.compare}` (its own code, same venv and settings)."
        )
    )
    return "\n".join(
        [
            "## Hostile clients: slow connections and large bodies (CPU)",
            "",
            *([args.note, ""] if args.note else []),
            f"`mplstm serve` with its default limits on `{model}` (decode workers: one per "
            f"core). Latency: a normal client sends batch-1 binary tensors to "
            f"`/v2/models/{model}/infer`, one at a time, {args.duration:g} s per round, alone "
            f"and while {args.slow} slow connections are held open by another process (half "
            "trickle a request head, half a /v2 body declared 1 MB, a byte a second each; one "
            f"the server cuts off reconnects at once), {args.rounds} alternating rounds "
            "pooled; the slow connections' driver runs on the same cores. Server CPU: cores "
            "kept busy by all the server's processes (from /proc) over those rounds, which "
            f"other jobs on the host hardly move. Memory: {args.bodies} clients each send a "
            f"{args.body_mb} MB /v2 body at once, a MiB at a time as the server takes it (a "
            "tensor that fits no model: read whole, then 400); peak RSS of the main process "
            "is its VmHWM (reset before the burst), of all processes sampled every 20 ms."
            f"{before}",
            "",
            *_latency_rows(results, args.slow),
            "",
            *_memory_rows(results),
            "",
            "### Targets (issue 22)",
            "",
            *targets(results, args),
            "",
            "![hostile](plots/hostile.png)",
            "",
            "After this change `bench/serve.py` must be rerun on a quiet host (the HTTP "
            "protocol and the body path changed under every request).",
            "",
            f"Load average (1, 5, 15 min) at the start: {', '.join(f'{v:.2f}' for v in loads[0])}; "
            f"at the end: {', '.join(f'{v:.2f}' for v in loads[1])}.",
            "",
            f"Rerun: `{rerun}`. Machine: {report.machine()}; {report.today()}.",
        ]
    )


# -- main --------------------------------------------------------------------------------


def _servers(args: argparse.Namespace, models: Path) -> list[Server]:
    servers = []
    trees = [("service", None)] + ([("before", args.compare.resolve())] if args.compare else [])
    for key, tree in trees:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MPLSTM_")}
        env = {**env, "MPLSTM_MODELS_DIR": str(models)}
        if tree is not None:
            env["PYTHONPATH"] = str(tree)
        # -P: the working directory's mplstm must not shadow the tree on PYTHONPATH.
        command = (str(PYTHON), "-P", "-m", "mplstm", "serve", "--port", str(port))
        servers.append(Server(key, command, port, "/v2/health/ready", env, key == "service"))
    return servers


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, default=Path("models/demo-lipreading/1"))
    parser.add_argument("--clips", type=Path, default=Path("models/examples/lipreading/clips"))
    parser.add_argument("--slow", type=int, default=1000, help="slow connections held open")
    parser.add_argument("--bodies", type=int, default=50, help="concurrent large bodies")
    parser.add_argument("--body-mb", type=int, default=60, help="MB per large body")
    parser.add_argument("--duration", type=float, default=15.0, help="measured s per round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds, pooled")
    parser.add_argument("--compare", type=Path, help="also run another checkout's service")
    parser.add_argument("--note", default="", help="a sentence for the section")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    _raise_open_files()
    loads_start = os.getloadavg()
    print(f"load average at the start: {loads_start}", flush=True)
    package = load_package(args.package)
    model = package.name
    clips = example_clips(args.clips, package.manifest.view_names, 4)
    payloads = tensor_inputs(package, clips)
    route = f"/v2/models/{model}/infer"
    results: dict[str, tuple[Latency, Memory]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = model_repository(package, work / "models")
        # One server at a time: the other's memory and slow connections stay out of it.
        for server in _servers(args, models):
            with running([server], work) as sessions:
                print(f"{server.key}: measuring latency", flush=True)
                latency = measure_latency(server, sessions[server.key], payloads, model, args)
                print(f"{server.key}: measuring memory", flush=True)
                memory = measure_memory(server, sessions[server.key], route, args)
                results[server.key] = (latency, memory)
    loads = (loads_start, os.getloadavg())
    print(f"load average at the end: {loads[1]}", flush=True)
    text = markdown(results, args, model, loads)
    print(text)
    if not args.no_write:
        plot(results, report.plot_path("hostile"), f"{report.machine()}; {report.today()}")
        print(f"wrote {report.write_section('hostile', text)}")


if __name__ == "__main__":
    main()
