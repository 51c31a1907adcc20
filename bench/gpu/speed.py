"""Part 3: one MP-LSTM layer, side by side: the kernel, the eager recurrence, cuDNN's LSTM.

Same B, T=30, P=5, D=U=256 for all, unidirectional, every view present, full lengths,
input [B, T, P, D] (the LSTM reads it as [B, T, P·D]), output [B, T, U]:

- kernel: `mplstm_layer_triton`, one launch with the input projection fused (the plugin's);
- kernel, projection outside: one GEMM for every step's projections (`input_projection` +
  `prepare_gates`), then `mplstm_recurrence_triton`;
- eager: `MPLSTM.forward` op by op (a dozen small ops per step, each a launch);
- cuDNN: `torch.nn.LSTM(P·D, U)`, the floor: one recurrent GEMM per step (DESIGN.md §2).

Timed with CUDA events after warm-up (common.time_ms), TF32 off (the kernel's fp32 dots
are IEEE fp32). Targets, judged on the GPU only: kernel ≤ 1.5× cuDNN at B ≥ 8; eager ≥ 3×
slower than the kernel. The dry run times tiny sizes on the CPU and judges nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from bench.gpu.common import Context, Skip, error_text, time_ms
from bench.gpu.layers import DTYPES, Shape, make_layer, node_weights
from mplstm.training import cell_cpu
from mplstm.training.cell import input_projection, prepare_gates

GPU = {"steps": 30, "views": 5, "dim": 256, "hidden": 256, "batches": (1, 8, 32, 128)}
DRY = {"steps": 4, "views": 2, "dim": 16, "hidden": 16, "batches": (1, 4)}
GPU_TIMING = {"warmup": 3, "reps": 20, "rounds": 5}
DRY_TIMING = {"warmup": 1, "reps": 1, "rounds": 1}
IMPLS = ("kernel", "kernel_projection_outside", "eager", "lstm")
KERNEL_VS_LSTM_MAX = 1.5  # kernel ≤ 1.5× cuDNN LSTM, at B ≥ 8
EAGER_VS_KERNEL_MIN = 3.0  # eager ≥ 3× slower than the kernel


def forwards(shape: Shape, dtype: torch.dtype, device: str) -> dict[str, Callable[[], Any]]:
    """One forward of each implementation on the same input, weights in `dtype`."""
    from mplstm.export.kernel import mplstm_layer_triton, mplstm_recurrence_triton

    layer = make_layer(shape, 0, spread=False)
    torch.manual_seed(1)
    b, t, p, d = shape.batch, shape.steps, shape.views, shape.dim
    x = torch.randn(b, t, p, d, device=device, dtype=dtype)
    mask = torch.ones(b, p, dtype=torch.bool, device=device)
    lengths = torch.full((b,), t, dtype=torch.int64, device=device)
    w, r, bias, _ = (
        t_ if t_ is None else t_.to(device=device, dtype=dtype) for t_ in node_weights(layer)
    )
    eager = layer.to(device=device, dtype=dtype)
    w_ih = eager.weight_ih_l0.detach()
    b_sum = (eager.bias_ih_l0 + eager.bias_hh_l0).detach()
    lstm = torch.nn.LSTM(p * d, shape.hidden, batch_first=True).to(device=device, dtype=dtype)
    x_flat = x.reshape(b, t, p * d)

    def kernel() -> object:
        return mplstm_layer_triton(x, mask, lengths, w, r, bias, None, False, "sigmoid")

    def outside() -> object:
        proj = prepare_gates(input_projection(x, w_ih, b_sum), mask)
        return mplstm_recurrence_triton(proj, r[0], None, None, False, False)

    def op_by_op() -> object:
        # cell_cpu.disabled(): on the CPU stand-in the layer would take its fused C++ path.
        with cell_cpu.disabled():
            return eager(x, mask, lengths)

    def cudnn() -> object:
        return lstm(x_flat)

    return dict(zip(IMPLS, (kernel, outside, op_by_op, cudnn), strict=True))


def time_row(shape: Shape, dtype_name: str, ctx: Context, timing: dict[str, int]) -> dict[str, Any]:
    """ms per layer forward of each implementation at one B and dtype, and the ratios."""
    started = time.perf_counter()
    with torch.no_grad():
        fns = forwards(shape, DTYPES[dtype_name], ctx.device)
        ms = {name: time_ms(fn, cuda_events=ctx.cuda, **timing) for name, fn in fns.items()}
    return {
        "dtype": dtype_name,
        "batch": shape.batch,
        "shape": shape.describe(),
        "ms": ms,
        "kernel_over_lstm": ms["kernel"] / ms["lstm"],
        "kernel_projection_outside_over_lstm": ms["kernel_projection_outside"] / ms["lstm"],
        "eager_over_kernel": ms["eager"] / ms["kernel"],
        "device": ctx.device_label,
        "seconds": round(time.perf_counter() - started, 2),
    }


def targets(rows: list[dict[str, Any]], ctx: Context) -> dict[str, Any]:
    """The two targets, met or missed (GPU), or not judged (the CPU stand-in)."""
    timed = [r for r in rows if "ms" in r]
    at_8 = [r for r in timed if r["batch"] >= 8]
    checks = {
        f"kernel <= {KERNEL_VS_LSTM_MAX}x cuDNN LSTM at B >= 8": (
            max((r["kernel_over_lstm"] for r in at_8), default=None),
            lambda worst: worst <= KERNEL_VS_LSTM_MAX,
        ),
        f"eager >= {EAGER_VS_KERNEL_MIN}x slower than the kernel": (
            min((r["eager_over_kernel"] for r in timed), default=None),
            lambda worst: worst >= EAGER_VS_KERNEL_MIN,
        ),
    }
    out = {}
    for name, (worst, ok) in checks.items():
        if not ctx.cuda:
            verdict = "not judged: CPU stand-in figures"
        elif worst is None:
            verdict = "not judged: no row timed"
        else:
            verdict = "met" if ok(worst) else "missed"
        out[name] = {"worst_ratio": worst, "verdict": verdict}
    return out


def run(ctx: Context) -> dict[str, Any]:
    """Part 3: every dtype and batch size, the time budget checked before each row."""
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        raise Skip(f"Triton is not installed ({exc})") from exc
    sizes, timing = (DRY, DRY_TIMING) if ctx.dry_run else (GPU, GPU_TIMING)
    rows: list[dict[str, Any]] = []
    for dtype_name in DTYPES:
        for batch in sizes["batches"]:
            shape = Shape(batch, sizes["steps"], sizes["views"], sizes["dim"], sizes["hidden"])
            if ctx.out_of_time():
                rows.append({"dtype": dtype_name, "batch": batch, "status": "skipped: time budget"})
                continue
            try:
                row = time_row(shape, dtype_name, ctx, timing)
            except Exception as exc:
                rows.append(
                    {"dtype": dtype_name, "batch": batch, "status": f"failed: {error_text(exc)}"}
                )
                ctx.log(f"speed {dtype_name} B={batch}: failed: {error_text(exc)}")
                continue
            rows.append({"status": "ran", **row})
            ctx.log(
                f"speed {dtype_name} B={batch}: "
                + ", ".join(f"{k} {v:.3f} ms" for k, v in row["ms"].items())
                + f"; kernel/LSTM {row['kernel_over_lstm']:.2f}, eager/kernel "
                f"{row['eager_over_kernel']:.2f}"
            )
    results = {
        "sizes": {k: v for k, v in sizes.items() if k != "batches"},
        "timing": {**timing, "clock": "CUDA events" if ctx.cuda else "wall clock (CPU)"},
        "tf32": "off" if ctx.cuda else "n/a (CPU)",
        "rows": rows,
        "targets": targets(rows, ctx),
    }
    return {"device": ctx.device_label, "results": results}
