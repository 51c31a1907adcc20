"""Part 4: the demo lip-reading model on the device, the Triton kernel as its recurrence
(through PyTorch), against the same model.onnx on ONNX Runtime's CPU provider.

Inference only: clips are decoded before timing and held in memory (on the device for the
PyTorch model; the ONNX Runtime CPU run reads numpy). Clips/s at batch 1 and 32, and the
parity of the two models' logits on the same decoded clips. The dry run uses batch 1 and
2 and 8 frames (the package's shortest T): Triton's interpreter stands in for the GPU.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np
import torch

from bench.gpu.common import Context, Skip, cpu_label, display_path, time_ms
from bench.gpu.demo import (
    calls_per_round,
    example_clips,
    kernel_model,
    logits_parity,
    logits_tolerance,
    ort_rows,
    ort_session,
    read_manifest,
    timed_row,
)

GPU = {"batches": (1, 32), "torch": {"warmup": 3, "rounds": 3}, "ort": {"warmup": 1, "rounds": 3}}
DRY = {"batches": (1, 2), "torch": {"warmup": 1, "rounds": 1}, "ort": {"warmup": 1, "rounds": 1}}
KERNEL_RUNTIME = "PyTorch, Triton kernel as the recurrence"
ORT_CPU_RUNTIME = "ONNX Runtime, CPUExecutionProvider"


def ort_cpu_rows(
    ctx: Context, clips: np.ndarray, masks: np.ndarray, batches: tuple[int, ...], plan: dict
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """ONNX Runtime CPU rows, and its logits on the largest batch (the parity reference)."""
    from mplstm.core.cpus import usable_cpus

    session = ort_session(ctx.package, "CPUExecutionProvider")
    threads = session.get_session_options().intra_op_num_threads or "default"
    label = cpu_label(f"{ORT_CPU_RUNTIME}, {threads} intra-op threads, {usable_cpus()} CPUs")
    rows = ort_rows(ctx, session, (ORT_CPU_RUNTIME, label), clips, masks, batches, plan)
    reference = session.run(["logits"], {"clip": clips, "view_mask": masks})[0]
    return rows, reference


def kernel_rows(
    ctx: Context,
    model: torch.nn.Module,
    clips: np.ndarray,
    masks: np.ndarray,
    batches: tuple[int, ...],
    plan: dict,
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The kernel model's rows on the device, and its logits on the largest batch."""
    rows = []
    with torch.no_grad():
        for batch in batches:
            clip_t = torch.from_numpy(clips[:batch]).to(ctx.device)
            mask_t = torch.from_numpy(masks[:batch]).to(ctx.device)
            reps = calls_per_round(batch, ctx.dry_run)
            forward = functools.partial(model, clip_t, mask_t)
            ms = time_ms(forward, cuda_events=ctx.cuda, reps=reps, **plan)
            rows.append(timed_row(KERNEL_RUNTIME, ctx.device_label, batch, ms))
            ctx.log(f"{KERNEL_RUNTIME} B={batch}: {ms:.2f} ms, {batch / ms * 1e3:.1f} clips/s")
        logits = model(
            torch.from_numpy(clips).to(ctx.device), torch.from_numpy(masks).to(ctx.device)
        )
    return rows, logits.float().cpu().numpy()


def run(ctx: Context) -> dict[str, Any]:
    """Part 4: clips/s of both runtimes at batch 1 and 32, and their logits' parity."""
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        raise Skip(f"Triton is not installed ({exc})") from exc
    started = time.perf_counter()
    plan = DRY if ctx.dry_run else GPU
    manifest = read_manifest(ctx.package)
    frames = manifest["frames_range"][0] if ctx.dry_run else manifest["preprocess"]["frames"]
    clips, masks, clip_source = example_clips(manifest, max(plan["batches"]), frames)
    ctx.log(f"model: {clip_source}, T={frames}, {time.perf_counter() - started:.1f} s")
    model, weight_source = kernel_model(ctx.package, manifest, ctx.device)
    ctx.log(f"model: weights: {weight_source}")
    rows, logits = kernel_rows(ctx, model, clips, masks, plan["batches"], plan["torch"])
    results: dict[str, Any] = {
        "package": display_path(ctx.package),
        "weights": weight_source,
        "clips": clip_source,
        "frames": frames,
        "rows": rows,
    }
    try:
        ort_rows, reference = ort_cpu_rows(ctx, clips, masks, plan["batches"], plan["ort"])
    except Skip as exc:
        results["onnxruntime_cpu"] = f"skipped: {exc}"
        results["parity"] = f"skipped: {exc}"
        return {"device": ctx.device_label, "results": results}
    results["onnxruntime_cpu"] = "ran"
    rows.extend(ort_rows)
    results["speedup_over_onnxruntime_cpu"] = {
        str(b): _clips(rows, KERNEL_RUNTIME, b) / _clips(rows, ORT_CPU_RUNTIME, b)
        for b in plan["batches"]
    }
    if weight_source.startswith("untrained"):
        results["parity"] = "not judged: untrained weights"
    else:
        results["parity"] = {
            **logits_parity(logits, reference, logits_tolerance("fp32", manifest)),
            "device": f"{ctx.device_label} vs {cpu_label(ORT_CPU_RUNTIME)}",
        }
    return {"device": ctx.device_label, "results": results}


def _clips(rows: list[dict[str, Any]], runtime: str, batch: int) -> float:
    return next(r["clips_per_s"] for r in rows if r["runtime"] == runtime and r["batch"] == batch)
