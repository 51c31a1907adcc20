"""The MP-LSTM recurrence as one persistent Triton kernel (DESIGN.md §6, the plugin's kernel).

One program runs the whole sequence for BLOCK_B batch rows of one direction: it loops
over time inside the kernel, so a layer is one launch however long the clip. Grid:
(cdiv(B, BLOCK_B), directions). Per step and per chunk of BLOCK_N hidden units:

    rec_q = h_{t-1} @ R[:, q] (+ p_q ⊙ c_{t-1})          q = i, f, g, o (tl.dot, fp32 acc)
    z^j_q = zx^j_q + rec_q;  i, f, o = σ(z);  s_g = σ(z_g)  (g block pre-scaled by 2)
    c^(j) = f^j ⊙ c^(j-1) + i^j ⊙ (2 s_g^j - 1);   h_t = Σ_j o^j ⊙ (2σ(2 c_t) - 1)

zx, the input projection, comes in one of two ways (constexpr FUSED):
- FUSED=False: precomputed projections proj [P, B, T, 4U] (`mplstm.training.cell`'s
  `input_projection` + `prepare_gates`: biases folded in, masked views saturated). This is
  `recurrence`'s contract; `mplstm_recurrence_triton` runs it.
- FUSED=True: the `mplstm::MPLSTM` node's contract (`mplstm.export.onnx_cell`): X
  [B, T, P, D] and W [dirs, P, D, 4U], bias [dirs, P, 4U], view_mask [B, P]; each step
  also computes x_t @ W^j + b^j (tl.dot over D in BLOCK_D chunks). A TensorRT AOT plugin
  runs exactly one kernel (DESIGN.md §6), so the projection cannot be a separate GEMM
  there. `mplstm_layer_triton` runs it; `mplstm.export.trt_plugin` compiles it.

Where the state lives, and why. R is [U, 4U], 512 KB in fp16 at U = 256: far more
than registers or shared memory, so each step streams R's [BLOCK_K, BLOCK_N] tiles from
global memory (where they stay L2-resident; a chunk's 4 gate tiles take 32 KB in fp16,
16 KB in fp32) and h_t comes out BLOCK_N units at a time. Every chunk, though, needs all
of h_{t-1} as the left operand of tl.dot, and Triton cannot assemble a register tile
from chunks written in a runtime loop. So the state round-trips through global memory,
with a tl.debug_barrier() (__syncthreads) at the end of each step:
- h_{t-1} is read back from the output row the previous step wrote (Y[:, t_prev]): a
  step writes only its own row, so no chunk of step t overwrites what another still
  reads, and no second buffer is needed. (Rows past their end read some other in-bounds
  row and discard the result.)
- c, which only ever meets its own chunk, is read and written in place in Y_c.
No workspace is needed (an AOT plugin gets none), and Y_h / Y_c hold the last valid
state when the loop ends.

An initial state (h0, c0 [dirs, B, U], ONNX LSTM's initial_h / initial_c; None: zeros)
seeds Y_c before the first step, and the first step reads h_{t-1} from h0 instead of a
previous output row: a live session's step model carries its state this way. The state is stored in the I/O dtype, so fp16 engines keep an
fp16 state, as the fp16 ONNX function body does; all arithmetic is fp32.

`lengths` freeze each row's state at its end (outputs past it are zero) and the reverse
direction starts at each row's own end, as in the torch layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.runtime.interpreter import InterpretedFunction

BLOCK_B = 16  # batch rows per program: tl.dot needs M >= 16 (tensor cores)


def interpreting() -> bool:
    """True where Triton runs this kernel in its interpreter (TRITON_INTERPRET=1 at import)."""
    # What counts is how @triton.jit wrapped the kernel when this module was imported.
    return isinstance(mplstm_kernel, InterpretedFunction)


@triton.jit
def mplstm_kernel(
    # inputs, in the node's order (AOT plugins: inputs, then int32 scalars, then outputs)
    x_ptr,  # FUSED: X [B, T, P, D]; else proj [P, B, T, 4U] (prepared, biases folded in)
    mask_ptr,  # view_mask [B, P] bool
    len_ptr,  # lengths [B], any integer type
    w_ptr,  # FUSED: W [dirs, P, D, 4U]; else unused (None)
    r_ptr,  # R [dirs, U, 4U], g block x2
    bias_ptr,  # FUSED: bias [dirs, P, 4U]; else unused (None)
    peep_ptr,  # peepholes [dirs, 4U] (zero g block), or None
    h0_ptr,  # initial h [dirs, B, U], or None (zeros)
    c0_ptr,  # initial c [dirs, B, U], or None (zeros)
    batch,
    steps,
    dim,
    # outputs
    y_ptr,  # Y [B, T, dirs*U]
    hn_ptr,  # Y_h [dirs, B, U]: also the running h
    cn_ptr,  # Y_c [dirs, B, U]: also the running c
    HIDDEN: tl.constexpr,
    VIEWS: tl.constexpr,
    DIRS: tl.constexpr,
    FIRST_REVERSE: tl.constexpr,  # direction of program_id(1) == 0 (1: reverse)
    FUSED: tl.constexpr,
    HARD: tl.constexpr,  # Keras 2 hard_sigmoid for i, f, o
    PRECISION: tl.constexpr,  # tl.dot input_precision: "ieee" keeps fp32 exact (no TF32)
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    d = tl.program_id(1)
    reverse = (d + FIRST_REVERSE) == 1
    four_u = 4 * HIDDEN
    y_row = DIRS * HIDDEN
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < batch
    length = tl.load(len_ptr + rows, mask=row_ok, other=0).to(tl.int32)
    kk = tl.arange(0, BLOCK_K)
    nn = tl.arange(0, BLOCK_N)
    dd = tl.arange(0, BLOCK_D)
    r_base = r_ptr + d * HIDDEN * four_u
    state = rows[:, None] * HIDDEN + d * batch * HIDDEN
    w_dtype = r_ptr.dtype.element_ty
    zero = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)

    for n0 in range(0, HIDDEN, BLOCK_N):
        cols = n0 + nn
        ok = row_ok[:, None] & (cols < HIDDEN)[None, :]
        h_init = zero
        c_init = zero
        if h0_ptr is not None:
            h_init = tl.load(h0_ptr + state + cols[None, :], mask=ok, other=0.0).to(tl.float32)
            c_init = tl.load(c0_ptr + state + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        tl.store(hn_ptr + state + cols[None, :], h_init.to(hn_ptr.dtype.element_ty), mask=ok)
        tl.store(cn_ptr + state + cols[None, :], c_init.to(cn_ptr.dtype.element_ty), mask=ok)
    tl.debug_barrier()

    for k in range(steps):
        valid = k < length  # [BLOCK_B]
        t = tl.where(reverse & valid, length - 1 - k, k)  # each row's own time index
        # h_{t-1} is the output row written at step k - 1 (rows past their end read
        # something else in bounds and discard the result).
        t_prev = tl.where(reverse & (k - 1 < length), length - k, k - 1)
        h_prev = y_ptr + (rows * steps + t_prev) * y_row + d * HIDDEN
        h_ok = row_ok & (k > 0)
        first = row_ok & (k == 0)  # the first step reads h0 (when given)
        for n0 in range(0, HIDDEN, BLOCK_N):
            cols = n0 + nn
            c_ok = cols < HIDDEN
            ok = row_ok[:, None] & c_ok[None, :]
            c_prev = tl.load(cn_ptr + state + cols[None, :], mask=ok, other=0.0).to(tl.float32)
            rec_i = zero
            rec_f = zero
            rec_g = zero
            rec_o = zero
            for k0 in range(0, HIDDEN, BLOCK_K):
                ks = k0 + kk
                ks_ok = ks < HIDDEN
                h = tl.load(
                    h_prev[:, None] + ks[None, :], mask=h_ok[:, None] & ks_ok[None, :], other=0.0
                )
                if h0_ptr is not None:
                    h += tl.load(
                        h0_ptr + state + ks[None, :],
                        mask=first[:, None] & ks_ok[None, :],
                        other=0.0,
                    )
                h = h.to(w_dtype)
                r_cols = r_base + ks[:, None] * four_u + cols[None, :]
                r_ok = ks_ok[:, None] & c_ok[None, :]
                rec_i += tl.dot(h, tl.load(r_cols, mask=r_ok, other=0.0), input_precision=PRECISION)
                rec_f += tl.dot(
                    h, tl.load(r_cols + HIDDEN, mask=r_ok, other=0.0), input_precision=PRECISION
                )
                rec_g += tl.dot(
                    h,
                    tl.load(r_cols + 2 * HIDDEN, mask=r_ok, other=0.0),
                    input_precision=PRECISION,
                )
                rec_o += tl.dot(
                    h,
                    tl.load(r_cols + 3 * HIDDEN, mask=r_ok, other=0.0),
                    input_precision=PRECISION,
                )
            if peep_ptr is not None:
                p = peep_ptr + d * four_u + cols
                rec_i += c_prev * tl.load(p, mask=c_ok, other=0.0).to(tl.float32)[None, :]
                rec_f += c_prev * tl.load(p + HIDDEN, mask=c_ok, other=0.0).to(tl.float32)[None, :]
                rec_o += (
                    c_prev * tl.load(p + 3 * HIDDEN, mask=c_ok, other=0.0).to(tl.float32)[None, :]
                )
            c = c_prev
            o_sum = zero
            for j in range(VIEWS):
                if FUSED:
                    zx_i = zero
                    zx_f = zero
                    zx_g = zero
                    zx_o = zero
                    x_row = x_ptr + (rows * steps + t) * (VIEWS * dim) + j * dim
                    w_view = w_ptr + (d * VIEWS + j) * dim * four_u + cols[None, :]
                    for d0 in range(0, dim, BLOCK_D):
                        dims = d0 + dd
                        d_ok = dims < dim
                        xs = tl.load(
                            x_row[:, None] + dims[None, :],
                            mask=row_ok[:, None] & d_ok[None, :],
                            other=0.0,
                        )
                        w_cols = w_view + dims[:, None] * four_u
                        w_ok = d_ok[:, None] & c_ok[None, :]
                        zx_i += tl.dot(
                            xs, tl.load(w_cols, mask=w_ok, other=0.0), input_precision=PRECISION
                        )
                        zx_f += tl.dot(
                            xs,
                            tl.load(w_cols + HIDDEN, mask=w_ok, other=0.0),
                            input_precision=PRECISION,
                        )
                        zx_g += tl.dot(
                            xs,
                            tl.load(w_cols + 2 * HIDDEN, mask=w_ok, other=0.0),
                            input_precision=PRECISION,
                        )
                        zx_o += tl.dot(
                            xs,
                            tl.load(w_cols + 3 * HIDDEN, mask=w_ok, other=0.0),
                            input_precision=PRECISION,
                        )
                    b = bias_ptr + (d * VIEWS + j) * four_u + cols
                    zx_i += tl.load(b, mask=c_ok, other=0.0).to(tl.float32)[None, :]
                    zx_f += tl.load(b + HIDDEN, mask=c_ok, other=0.0).to(tl.float32)[None, :]
                    zx_g += tl.load(b + 2 * HIDDEN, mask=c_ok, other=0.0).to(tl.float32)[None, :]
                    zx_o += tl.load(b + 3 * HIDDEN, mask=c_ok, other=0.0).to(tl.float32)[None, :]
                else:
                    zx = x_ptr + ((j * batch + rows[:, None]) * steps + t[:, None]) * four_u
                    zx = zx + cols[None, :]
                    zx_i = tl.load(zx, mask=ok, other=0.0).to(tl.float32)
                    zx_f = tl.load(zx + HIDDEN, mask=ok, other=0.0).to(tl.float32)
                    zx_g = tl.load(zx + 2 * HIDDEN, mask=ok, other=0.0).to(tl.float32)
                    zx_o = tl.load(zx + 3 * HIDDEN, mask=ok, other=0.0).to(tl.float32)
                if HARD:
                    i = tl.clamp(0.2 * (zx_i + rec_i) + 0.5, 0.0, 1.0)
                    f = tl.clamp(0.2 * (zx_f + rec_f) + 0.5, 0.0, 1.0)
                    o = tl.clamp(0.2 * (zx_o + rec_o) + 0.5, 0.0, 1.0)
                else:
                    i = tl.sigmoid(zx_i + rec_i)
                    f = tl.sigmoid(zx_f + rec_f)
                    o = tl.sigmoid(zx_o + rec_o)
                s_g = tl.sigmoid(zx_g + rec_g)
                # A missing view passes c through and leaves the output sum (DESIGN.md §2);
                # prepared projections already carry this as saturated gates.
                present = tl.load(mask_ptr + rows * VIEWS + j, mask=row_ok, other=0) != 0
                i = tl.where(present[:, None], i, 0.0)
                f = tl.where(present[:, None], f, 1.0)
                o = tl.where(present[:, None], o, 0.0)
                c = f * c + i * (2.0 * s_g - 1.0)
                o_sum += o
            h_new = o_sum * (2.0 * tl.sigmoid(2.0 * c) - 1.0)
            y = y_ptr + (rows[:, None] * steps + t[:, None]) * y_row + d * HIDDEN
            out = tl.where(valid[:, None], h_new, 0.0)
            tl.store(y + cols[None, :], out.to(y_ptr.dtype.element_ty), mask=ok)
            live = ok & valid[:, None]  # past a row's end its state stays frozen
            tl.store(hn_ptr + state + cols[None, :], h_new.to(hn_ptr.dtype.element_ty), mask=live)
            tl.store(cn_ptr + state + cols[None, :], c.to(cn_ptr.dtype.element_ty), mask=live)
        # Y[:, t] (h_t) and c_n complete in global memory before any thread reads them for
        # the next step.
        tl.debug_barrier()


KERNEL_NAME = "mplstm_kernel"
INPUT_ARGS = (
    "x_ptr",
    "mask_ptr",
    "len_ptr",
    "w_ptr",
    "r_ptr",
    "bias_ptr",
    "peep_ptr",
    "h0_ptr",
    "c0_ptr",
)
SCALAR_ARGS = ("batch", "steps", "dim")
OUTPUT_ARGS = ("y_ptr", "hn_ptr", "cn_ptr")


@dataclass(frozen=True)
class KernelSpec:
    """What one compiled kernel is specialised for (its constexprs)."""

    hidden_size: int  # U
    num_views: int  # P
    dtype: torch.dtype  # torch.float32 or torch.float16: X, weights and outputs alike
    bidirectional: bool = False
    first_reverse: bool = False  # a single direction that runs backwards in time
    fused: bool = True  # X and W in (the node's contract), or prepared projections
    peepholes: bool = False
    hard_sigmoid: bool = False
    initial_state: bool = False  # h0 and c0 in (ONNX's initial_h / initial_c)
    input_size: int = 16  # D: only sizes BLOCK_D
    num_warps: int = 4

    def __post_init__(self) -> None:
        if self.dtype not in (torch.float32, torch.float16):
            raise ValueError(f"the MP-LSTM kernel runs fp32 or fp16, got {self.dtype}")
        if self.bidirectional and self.first_reverse:
            raise ValueError("first_reverse is for a single direction")
        if min(self.hidden_size, self.num_views, self.input_size) < 1:
            raise ValueError("hidden_size, num_views and input_size must be >= 1")

    @property
    def dirs(self) -> int:
        return 2 if self.bidirectional else 1

    def constexprs(self) -> dict[str, object]:
        """The kernel's constexpr arguments (block sizes padded to tl.dot's minimum of 16)."""
        # Tiles of R and W per chunk: 4 gates x [BLOCK_K, BLOCK_N], kept well under the
        # 48 KB of shared memory a kernel gets without opting in (fp16 32 KB, fp32 16 KB).
        tile = 64 if self.dtype == torch.float16 else 32
        block_u = max(16, triton.next_power_of_2(self.hidden_size))
        return {
            "HIDDEN": self.hidden_size,
            "VIEWS": self.num_views,
            "DIRS": self.dirs,
            "FIRST_REVERSE": int(self.first_reverse),
            "FUSED": self.fused,
            "HARD": self.hard_sigmoid,
            "PRECISION": "ieee" if self.dtype == torch.float32 else "tf32",
            "BLOCK_B": BLOCK_B,
            "BLOCK_N": min(block_u, tile),
            "BLOCK_K": min(block_u, tile),
            "BLOCK_D": min(tile, max(16, triton.next_power_of_2(self.input_size))),
        }


def grid(spec: KernelSpec, batch: int) -> tuple[int, int]:
    """Programs: one per BLOCK_B batch rows and direction."""
    return (triton.cdiv(batch, BLOCK_B), spec.dirs)


def _launch(
    spec: KernelSpec,
    x: Tensor,
    view_mask: Tensor,
    lengths: Tensor,
    weight_ih: Tensor | None,
    weight_hh: Tensor,
    bias: Tensor | None,
    peepholes: Tensor | None,
    batch: int,
    steps: int,
    initial: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    u, dirs = spec.hidden_size, spec.dirs
    y = x.new_empty(batch, steps, dirs * u)
    h_n = x.new_empty(dirs, batch, u)
    c_n = x.new_empty(dirs, batch, u)
    if x.device.type == "cpu" and not interpreting():
        raise RuntimeError(
            "the MP-LSTM Triton kernel runs on CUDA tensors, or on CPU tensors under Triton's "
            "interpreter: set TRITON_INTERPRET=1 before triton is first imported"
        )
    h0, c0 = initial if initial is not None else (None, None)
    contiguous = [
        None if a is None else a.contiguous()
        for a in (x, view_mask, lengths, weight_ih, weight_hh, bias, peepholes, h0, c0)
    ]
    mplstm_kernel[grid(spec, batch)](
        *contiguous,
        batch,
        steps,
        spec.input_size,
        y,
        h_n,
        c_n,
        num_warps=spec.num_warps,
        **spec.constexprs(),
    )
    return y, h_n, c_n


def _check_dtype(dtype: torch.dtype, *tensors: Tensor | None) -> None:
    for t in tensors:
        if t is not None and t.dtype != dtype:
            raise ValueError(f"the MP-LSTM kernel wants one float dtype, got {t.dtype} and {dtype}")


def mplstm_recurrence_triton(
    proj: Tensor,
    weight_hh_t: Tensor,
    peep: Tensor | None,
    valid: Tensor | None,
    reverse: bool,
    hard: bool,
    h0: Tensor | None = None,
    c0: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """`mplstm.training.cell.recurrence` on the Triton kernel: same inputs, same outputs.

    proj [P, B, T, 4U] from prepare_gates(); weight_hh_t [U, 4U] (g block x2); peep [4U]
    or None; valid [T, B, 1] bool, a prefix mask per row (as MPLSTM.forward builds it), or
    None; h0, c0 [B, U] or None (zeros) → (output [B, T, U], h_n [B, U], c_n [B, U]). Runs
    on CUDA tensors, or under Triton's interpreter on CPU tensors.
    """
    views, batch, steps, four_u = proj.shape
    _check_dtype(proj.dtype, weight_hh_t, peep, h0, c0)
    initial = _initial(h0, c0, (1, batch, four_u // 4))
    spec = KernelSpec(
        hidden_size=four_u // 4,
        num_views=views,
        dtype=proj.dtype,
        first_reverse=reverse,
        fused=False,
        peepholes=peep is not None,
        hard_sigmoid=hard,
        initial_state=initial is not None,
    )
    if valid is None:
        lengths = torch.full((batch,), steps, dtype=torch.int32, device=proj.device)
    else:
        lengths = valid.reshape(steps, batch).sum(dim=0, dtype=torch.int32)
    # prepare_gates() already saturated masked views' gates: every view is "present" here.
    mask = torch.ones(batch, views, dtype=torch.bool, device=proj.device)
    y, h_n, c_n = _launch(
        spec, proj, mask, lengths, None, weight_hh_t, None, peep, batch, steps, initial
    )
    return y, h_n[0], c_n[0]


def _initial(
    h0: Tensor | None, c0: Tensor | None, shape: tuple[int, int, int]
) -> tuple[Tensor, Tensor] | None:
    """(h0, c0) reshaped to [dirs, B, U], or None; both or neither."""
    if (h0 is None) != (c0 is None):
        raise ValueError("the MP-LSTM kernel takes both h0 and c0, or neither")
    if h0 is None or c0 is None:
        return None
    if h0.numel() != math.prod(shape) or c0.numel() != math.prod(shape):
        raise ValueError(f"h0 and c0 must be {list(shape)}, got {list(h0.shape)}")
    return h0.reshape(shape), c0.reshape(shape)


def mplstm_layer_triton(
    x: Tensor,
    view_mask: Tensor,
    lengths: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias: Tensor,
    peepholes: Tensor | None,
    bidirectional: bool,
    recurrent_activation: str,
    initial_h: Tensor | None = None,
    initial_c: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One MP-LSTM layer in the `mplstm::MPLSTM` node's contract, one kernel launch.

    x [B, T, P, D], view_mask [B, P] bool, lengths [B] int; W [dirs, P, D, 4U],
    R [dirs, U, 4U], bias [dirs, P, 4U], peepholes [dirs, 4U] or None (export layout,
    `onnx_cell.export_weights`); initial_h, initial_c [dirs, B, U] or None (zeros)
    → (Y [B, T, dirs*U], Y_h [dirs, B, U], Y_c [dirs, B, U]).
    This is what the TensorRT plugin runs.
    """
    batch, steps, views, dim = x.shape
    _check_dtype(x.dtype, weight_ih, weight_hh, bias, peepholes, initial_h, initial_c)
    dirs = 2 if bidirectional else 1
    initial = _initial(initial_h, initial_c, (dirs, batch, weight_hh.shape[1]))
    if recurrent_activation not in ("sigmoid", "hard_sigmoid"):
        raise ValueError(f"unknown recurrent_activation {recurrent_activation!r}")
    spec = KernelSpec(
        hidden_size=weight_hh.shape[1],
        num_views=views,
        dtype=x.dtype,
        bidirectional=bidirectional,
        fused=True,
        peepholes=peepholes is not None,
        hard_sigmoid=recurrent_activation == "hard_sigmoid",
        initial_state=initial is not None,
        input_size=dim,
    )
    expected = (spec.dirs, views, dim, 4 * spec.hidden_size)
    if tuple(weight_ih.shape) != expected:
        raise ValueError(f"W must be {list(expected)}, got {list(weight_ih.shape)}")
    return _launch(
        spec,
        x,
        view_mask.to(torch.bool),
        lengths,
        weight_ih,
        weight_hh,
        bias,
        peepholes,
        batch,
        steps,
        initial,
    )
