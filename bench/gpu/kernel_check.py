"""Part 2: the Triton recurrence kernel against the PyTorch layer, on the device.

Each case runs the kernel natively (or, in the dry run, in Triton's interpreter on the
CPU) and the same layer in fp64 on the same device, and reports the max abs error of
Y, Y_h and Y_c against the interpreter tests' tolerance for its dtype
(`kernel-*` in mplstm/inference/parity.py). Two entry points:

- `mplstm_layer_triton`: the `mplstm::MPLSTM` node's contract, the input projection fused
  into the kernel: what the TensorRT plugin runs;
- `mplstm_recurrence_triton`: `mplstm.training.cell.recurrence`'s contract (projections
  prepared outside), checked against `recurrence` itself.

Cases marked "initial state" start from a random (h0, c0), as a live session's step
model does (DESIGN.md §2): the layer takes it as `state=`, the kernel as h0/c0.

The test-size cases mirror tests/export/test_kernel.py (B=5, T=6, P=3, D=20, U=48, the
tests' masks and lengths); the serving-size cases (B=32, T=30, P=5, D=U=256) run on the
GPU only: Triton's interpreter would take minutes over them.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from bench.gpu.common import Context, Skip, error_text
from bench.gpu.layers import (
    DTYPES,
    Shape,
    make_inputs,
    make_layer,
    node_weights,
    recurrence_inputs,
)
from mplstm.inference.parity import TOLERANCES
from mplstm.training import cell_cpu

TEST = Shape(batch=5, steps=6, views=3, dim=20, hidden=48)
SERVING = Shape(batch=32, steps=30, views=5, dim=256, hidden=256)
SEED = 0
BIDIR = {"bidirectional": True}


@dataclass(frozen=True)
class Case:
    """One kernel-vs-layer comparison."""

    name: str
    entry: str  # "layer" (mplstm_layer_triton) or "recurrence" (mplstm_recurrence_triton)
    dtype: str  # "fp32" or "fp16"
    shape: Shape
    spread: bool  # weights in ±0.5 (fp32, as the tests) or the layer's own init
    options: dict[str, Any] = field(default_factory=dict)  # MPLSTM keyword arguments
    reverse: bool = False  # recurrence cases: run the reverse direction
    state: bool = False  # start from a random initial (h0, c0)

    @property
    def label(self) -> str:
        return f"{self.entry} {self.dtype} {self.name}"


STATE = {"state": True}


CASES = (
    Case("forward", "layer", "fp32", TEST, True),
    Case("bidirectional", "layer", "fp32", TEST, True, BIDIR),
    Case("bidirectional peepholes", "layer", "fp32", TEST, True, {**BIDIR, "peepholes": True}),
    # The authors' released configuration: hard sigmoid, the candidate reads U_f.
    Case(
        "keras compat",
        "layer",
        "fp32",
        TEST,
        True,
        {"recurrent_activation": "hard_sigmoid", "candidate_uses_forget_kernel": True},
    ),
    Case("forward", "layer", "fp16", TEST, False),
    Case("bidirectional", "layer", "fp16", TEST, False, BIDIR),
    Case("forward", "recurrence", "fp32", TEST, True),
    Case(
        "reverse hard_sigmoid peepholes",
        "recurrence",
        "fp32",
        TEST,
        True,
        {**BIDIR, "recurrent_activation": "hard_sigmoid", "peepholes": True},
        reverse=True,
    ),
    Case("forward", "recurrence", "fp16", TEST, False),
    # Initial state, the layer's own init (with every weight in ±0.5 and a random state on
    # top, fp32 rounding alone reaches the 1e-5 of the table).
    Case("forward initial state", "layer", "fp32", TEST, False, **STATE),
    Case("bidirectional initial state", "layer", "fp32", TEST, False, BIDIR, **STATE),
    Case("forward initial state", "layer", "fp16", TEST, False, **STATE),
    Case("reverse initial state", "recurrence", "fp32", TEST, False, BIDIR, True, **STATE),
    Case("serving forward initial state", "layer", "fp32", SERVING, False, **STATE),
    Case("serving forward initial state", "layer", "fp16", SERVING, False, **STATE),
    Case("serving bidirectional", "layer", "fp32", SERVING, False, BIDIR),
    Case("serving bidirectional", "layer", "fp16", SERVING, False, BIDIR),
    Case("serving forward", "recurrence", "fp32", SERVING, False),
    Case("serving forward", "recurrence", "fp16", SERVING, False),
)


def initial_state(case: Case, dirs: int, device: str) -> tuple[Tensor, Tensor] | None:
    """A random (h0, c0) [dirs, B, U] for a state case (fp64), else None."""
    if not case.state:
        return None
    gen = torch.Generator().manual_seed(SEED + 1)
    shape = (dirs, case.shape.batch, case.shape.hidden)
    h0, c0 = (torch.randn(shape, generator=gen, dtype=torch.float64) * 0.5 for _ in range(2))
    return h0.to(device), c0.to(device)


def run_layer_case(case: Case, device: str) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """(fp64 layer outputs, kernel outputs) of a `mplstm_layer_triton` case."""
    from mplstm.export.kernel import mplstm_layer_triton

    layer = make_layer(case.shape, SEED, case.spread, **case.options)
    x, mask, lengths = make_inputs(case.shape, SEED, device)
    state = initial_state(case, 2 if layer.bidirectional else 1, device)
    dtype = DTYPES[case.dtype]
    # The eager layer on every device (on the CPU stand-in, not the fused CPU kernel).
    with torch.no_grad(), cell_cpu.disabled():
        layer64 = copy.deepcopy(layer).double().to(device)
        out, (h_n, c_n) = layer64(x.double(), mask, lengths, state=state)
        w, r, b, p = (
            None if t is None else t.to(device=device, dtype=dtype) for t in node_weights(layer)
        )
        got = mplstm_layer_triton(
            x.to(dtype),
            mask,
            lengths,
            w,
            r,
            b,
            p,
            layer.bidirectional,
            layer.recurrent_activation,
            *(() if state is None else (t.to(dtype) for t in state)),
        )
    return (out, h_n, c_n), got


def run_recurrence_case(case: Case, device: str) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """(fp64 `recurrence` outputs, kernel outputs) of a `mplstm_recurrence_triton` case.

    The projections are prepared once in fp64 and rounded to the case's dtype for the
    kernel, so the error is the recurrence's alone.
    """
    from mplstm.export.kernel import mplstm_recurrence_triton
    from mplstm.training.cell import recurrence

    layer = make_layer(case.shape, SEED, case.spread, **case.options)
    x, mask, lengths = make_inputs(case.shape, SEED, device)
    hard = layer.recurrent_activation == "hard_sigmoid"
    steps = case.shape.steps
    valid = (torch.arange(steps, device=device)[:, None] < lengths[None, :]).unsqueeze(-1)
    dtype = DTYPES[case.dtype]
    state = initial_state(case, 1, device)
    h0, c0 = (None, None) if state is None else (state[0][0], state[1][0])
    with torch.no_grad():
        layer64 = copy.deepcopy(layer).double().to(device)
        proj, weight_hh_t, peep = recurrence_inputs(layer64, x.double(), mask, case.reverse)
        expected = recurrence(proj.clone(), weight_hh_t, peep, valid, case.reverse, hard, h0, c0)
        got = mplstm_recurrence_triton(
            proj.to(dtype),
            weight_hh_t.to(dtype),
            None if peep is None else peep.to(dtype),
            valid,
            case.reverse,
            hard,
            *(() if state is None else (h0.to(dtype), c0.to(dtype))),
        )
    return expected, got


def check_case(case: Case, ctx: Context) -> dict[str, Any]:
    """Run one case and judge its max abs error against the interpreter tests' tolerance."""
    started = time.perf_counter()
    run = run_layer_case if case.entry == "layer" else run_recurrence_case
    expected, got = run(case, ctx.device)
    if ctx.cuda:
        torch.cuda.synchronize()
    errors = {
        name: float((e.double() - g.double()).abs().max())
        for name, e, g in zip(("Y", "Y_h", "Y_c"), expected, got, strict=True)
    }
    worst = max(errors.values())
    tolerance = TOLERANCES[f"kernel-{case.dtype}"]
    return {
        "case": case.label,
        "status": "ran",
        "entry": f"mplstm_{case.entry}_triton",
        "dtype": case.dtype,
        "shape": case.shape.describe(),
        "options": {
            **case.options,
            **({"reverse": True} if case.reverse else {}),
            **({"initial_state": "random (h0, c0)"} if case.state else {}),
        },
        "weights": "uniform ±0.5" if case.spread else "the layer's own init",
        "masks_and_lengths": "views missing in some samples, uneven lengths",
        "max_abs_error": worst,
        "errors": errors,
        "output_max_abs": float(expected[0].abs().max()),
        "tolerance": tolerance,
        "within_tolerance": bool(worst <= tolerance),
        "finite": bool(all(torch.isfinite(g).all() for g in got)),
        "device": ctx.device_label,
        "seconds": round(time.perf_counter() - started, 3),
    }


def run(ctx: Context) -> dict[str, Any]:
    """Part 2: every case, the time budget checked before each."""
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        raise Skip(f"Triton is not installed ({exc})") from exc
    cases: list[dict[str, Any]] = []
    for case in CASES:
        if ctx.out_of_time():
            cases.append({"case": case.label, "status": "skipped: time budget"})
        elif ctx.dry_run and case.shape == SERVING:
            why = "dry run: serving size takes minutes in Triton's interpreter"
            cases.append({"case": case.label, "status": f"skipped: {why}"})
        else:
            try:
                result = check_case(case, ctx)
            except Exception as exc:  # one case's failure (a compile error) is a finding
                cases.append({"case": case.label, "status": f"failed: {error_text(exc)}"})
                ctx.log(f"kernel {case.label}: failed: {error_text(exc)}")
                continue
            cases.append(result)
            verdict = "within" if result["within_tolerance"] else "EXCEEDS"
            ctx.log(
                f"kernel {case.label} ({case.shape.describe()}): max abs error "
                f"{result['max_abs_error']:.2e}, {verdict} {result['tolerance']:.0e}"
            )
    ran = [c for c in cases if c["status"] == "ran"]
    summary = {
        "cases_ran": len(ran),
        "all_within_tolerance": all(c["within_tolerance"] for c in ran),
        "worst": {
            dtype: max((c["max_abs_error"] for c in ran if c["dtype"] == dtype), default=None)
            for dtype in DTYPES
        },
        "tolerances": {d: TOLERANCES[f"kernel-{d}"] for d in ("fp32", "fp16")},
        "reference": f"MPLSTM / recurrence in fp64 on {ctx.device}",
    }
    return {"device": ctx.device_label, "results": {"summary": summary, "cases": cases}}
