"""The gRPC section of bench/serve.py: our gRPC vs Triton's gRPC, and vs our REST binary path.

bench/serve.py measures (its systems `service-grpc`, `triton-grpc` and `service-v2`, side
by side in one run, rounds alternating); this module writes the section and its plot.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import onnxruntime as ort

from bench import report

COMMAND = ".venv/bin/python bench/serve.py --paths grpc --concurrency 1 8 32"
TARGET_CONCURRENCY = 32
# Row key -> column label, in table order.
COLUMNS = {
    "service-grpc": "service, gRPC",
    "triton-grpc": "Triton (pytriton), gRPC",
    "service-v2": "service, REST binary",
}

Results = Mapping[str, Mapping[int, Any]]  # system key -> clients -> bench.serve.Point


def _target(name: str, value: float, goal: float, higher_is_better: bool) -> str:
    met = value >= goal if higher_is_better else value <= goal
    return f"| {name} | {value:.2f} | {'met' if met else '**missed**'} |"


def targets(results: Results) -> list[str]:
    """Issue 18's targets at 32 clients, where measured."""
    c = TARGET_CONCURRENCY
    if c not in results.get("service-grpc", {}) or c not in results.get("triton-grpc", {}):
        return ["Not measured at 32 clients, or without Triton."]
    ours, triton = results["service-grpc"][c], results["triton-grpc"][c]
    return [
        "| target | measured | |",
        "| --- | ---: | --- |",
        _target(
            f"gRPC: service / Triton throughput, {c} clients (≥ 1.0)",
            ours.load.throughput / triton.load.throughput, 1.0, True,
        ),
        _target(
            f"gRPC: Triton / service CPU per request, {c} clients (same goal, contention-proof)",
            triton.server_cpu_ms / ours.server_cpu_ms, 1.0, True,
        ),
        _target(
            f"gRPC: service p99 / Triton p99, {c} clients (≤ 1.0)",
            ours.load.percentile_ms(99) / triton.load.percentile_ms(99), 1.0, False,
        ),
    ]  # fmt: skip


def cpu_rows(results: Results) -> list[str]:
    """Server CPU per request of the service's two tensor protocols, at each level: all of
    it, and its event loop's share (the main thread)."""
    rows = [
        "| clients | REST binary: server CPU ms/request (event loop) | gRPC: server CPU "
        "ms/request (event loop) | REST / gRPC, all | REST / gRPC, event loop |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    rest, grpc = results.get("service-v2", {}), results.get("service-grpc", {})
    for c in sorted(set(rest) & set(grpc)):
        r, g = rest[c], grpc[c]
        rows.append(
            f"| {c} | {r.server_cpu_ms:.2f} ({r.loop_cpu_ms:.2f}) | {g.server_cpu_ms:.2f} "
            f"({g.loop_cpu_ms:.2f}) | {r.server_cpu_ms / g.server_cpu_ms:.2f} | "
            f"{r.loop_cpu_ms / g.loop_cpu_ms:.2f} |"
        )
    return rows


WHY = (
    "Why they differ: the two paths share everything from the tensor checks on (one data "
    "plane, one batcher, one inference thread), so the difference is the protocol. A REST "
    "binary request is handled on the event loop from its first byte: uvicorn's httptools "
    "parser, two pure-ASGI middlewares (request id, body limit), Starlette's routing and "
    "FastAPI's dependency injection (the API-key check, the data plane), the JSON header "
    "parsed and validated by pydantic, and the answer's JSON header built and encoded. A "
    "gRPC call reaches the event loop already parsed: HTTP/2 framing and the protobuf "
    "message are gRPC's C core's work, on its own threads (its event engine and the "
    "completion-queue poller), and the handler reads fields and hands raw bytes to numpy. "
    "The event-loop column (the server's main thread alone, from /proc) shows the work "
    "that stays on the service's one serial resource; gRPC's own threads are in the total."
)


def verdict(results: Results) -> str:
    """Which protocol was cheaper per request at 32 clients in this run, by how much."""
    c = TARGET_CONCURRENCY
    rest, grpc = results.get("service-v2", {}).get(c), results.get("service-grpc", {}).get(c)
    if rest is None or grpc is None:
        return ""
    saved, loop_saved = (
        rest.server_cpu_ms - grpc.server_cpu_ms,
        rest.loop_cpu_ms - grpc.loop_cpu_ms,
    )
    cheaper = "gRPC" if saved > 0 else "REST binary"
    return (
        f"In this run, at {c} clients, {cheaper} cost less server CPU per request: "
        f"{abs(saved):.2f} ms ({abs(saved) / max(rest.server_cpu_ms, grpc.server_cpu_ms):.0%}), "
        f"of which {loop_saved:+.2f} ms on the event loop (REST minus gRPC)."
    )


def markdown(
    package: Any,
    systems: Sequence[Any],
    results: Results,
    args: argparse.Namespace,
    triton_version: str,
    cell: Callable[[Any], str],
) -> str:
    """The section, between the `serve-grpc` markers of docs/benchmarks.md."""
    m = package.manifest
    keys = [k for k in COLUMNS if k in results]
    levels = sorted({c for k in keys for c in results[k]})
    table = [
        "| clients | " + " | ".join(COLUMNS[k] for k in keys) + " |",
        "| ---: | " + " | ".join("---:" for _ in keys) + " |",
        *(f"| {c} | " + " | ".join(cell(results[k].get(c)) for k in keys) + " |" for c in levels),
    ]
    rerun = f"{COMMAND} --package {package.path}" + (" --quick" if args.quick else "")
    return "\n".join(
        [
            "## Service over gRPC: vs Triton's gRPC, and vs the service's REST binary path (CPU)",
            "",
            *([args.note, ""] if args.note else []),
            *(
                [
                    "**Preliminary**: measured while other jobs kept the 2 cores busy (load "
                    f"average {args.load_average[0]:.1f} at the start). Wall-clock figures are "
                    "low and noisy and favour servers with more runnable threads; server CPU "
                    "per request is the steadier comparison until a rerun on a quiet host.",
                    "",
                ]
                if args.preliminary
                else []
            ),
            f"`{m.name}/{m.version}`, the tensors of the tensor path above (batch-1, "
            f"{len(systems[0].payloads) or len(systems[0].grpc_requests)} example clips in "
            "turn). gRPC load: `tritonclient.grpc.aio` on one channel (one HTTP/2 "
            "connection, as one tritonclient client), requests built once by tritonclient's "
            "request builder (raw_input_contents), closed loop (`bench/grpc_load.py`); REST: "
            "the binary-tensor load of the tensor path (`bench/loadgen.py`). Same model.onnx, "
            f"same batching (max batch {m.max_batch}, max delay {args.max_delay_ms:g} ms) for "
            "the service and Triton; all servers up at once, "
            f"{args.rounds} round(s) of {args.warmup:g} s warm-up + {args.duration:g} s "
            "measured per point, the rounds going to every server in turn.",
            "",
            "Cells: clips/s (p50 / p99 latency, ms); server CPU ms per request (all the "
            "server's processes, from /proc).",
            "",
            *table,
            "",
            "### Targets (issue 18)",
            "",
            *targets(results),
            "",
            "### gRPC or REST binary: server CPU per request in the service",
            "",
            *cpu_rows(results),
            "",
            WHY,
            "",
            verdict(results),
            "",
            "![serve-grpc](plots/serve-grpc.png)",
            "",
            f"Triton: tritonserver {triton_version} from `nvidia-pytriton` 0.7.0 (CPU, python "
            "backend, one ONNX Runtime call per batch), its gRPC port.",
            "",
            f"Rerun: `{rerun}`. Machine: {report.machine()}; {report.today()}; "
            f"onnxruntime {ort.__version__}; load average {args.load_average[0]:.1f} at the "
            "start.",
        ]
    )


def plot(systems: Sequence[Any], results: Results, path: Path, model: str) -> None:
    """Throughput and server CPU per request against clients, one line per column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, label in COLUMNS.items():
        if key not in results:
            continue
        levels = sorted(results[key])
        axes[0].plot(levels, [results[key][c].load.throughput for c in levels], "o-", label=label)
        axes[1].plot(levels, [results[key][c].server_cpu_ms for c in levels], "o-", label=label)
    for ax, ylabel in zip(
        axes, ("clips/s (higher is better)", "server CPU ms / request (lower is better)"),
        strict=True,
    ):  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"{model}: tensors over gRPC and REST, batch-1 requests over loopback", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
