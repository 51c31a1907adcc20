"""MP-LSTM layers and their inputs for parts 2 and 3: seeded layers, masks, lengths, and the
kernel's weight layouts built from the layer's parameters.

The layouts are built here in torch (not with `mplstm.export.onnx_cell.export_weights`,
which needs the `onnx` package): a bare GPU host may have torch and Triton only. The dry
run's test checks that both give the same arrays, so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mplstm.training.cell import MPLSTM, gate_vector, input_projection, prepare_gates

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
# The interpreter tests' batch (tests/export/test_kernel.py): uneven lengths and missing
# views, every sample keeping one view.
TEST_MASK = [[1, 1, 1], [1, 0, 1], [0, 0, 1], [1, 1, 0], [1, 1, 1]]
TEST_LENGTHS = [6, 3, 1, 5, 4]


@dataclass(frozen=True)
class Shape:
    """B, T, P, D and U of one case."""

    batch: int
    steps: int
    views: int
    dim: int
    hidden: int

    def describe(self) -> str:
        return f"B={self.batch} T={self.steps} P={self.views} D={self.dim} U={self.hidden}"


def make_layer(shape: Shape, seed: int, spread: bool, **options: object) -> MPLSTM:
    """A seeded fp32 layer: its own init, or (spread) every weight in ±0.5, peepholes too.

    Spread weights are what the interpreter tests use in fp32; fp16 cases keep the layer's
    own init, the magnitudes the fp16 tolerance was set for (`kernel-fp16` in mplstm/inference/parity.py).
    """
    torch.manual_seed(seed)
    layer = MPLSTM(shape.dim, shape.hidden, shape.views, **options).eval()  # type: ignore[arg-type]
    if spread:
        with torch.no_grad():
            for p in layer.parameters():
                p.uniform_(-0.5, 0.5)
    return layer


def make_inputs(shape: Shape, seed: int, device: str) -> tuple[Tensor, Tensor, Tensor]:
    """x [B, T, P, D] fp32, view_mask [B, P] bool, lengths [B] int64, on `device`.

    The test shape gets the interpreter tests' mask and lengths; other shapes get seeded
    random ones with missing views (never all of a sample's) and uneven lengths, the
    first sample full length and with every view.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape.batch, shape.steps, shape.views, shape.dim, generator=gen)
    if shape.batch == len(TEST_MASK) and shape.views == len(TEST_MASK[0]):
        mask = torch.tensor(TEST_MASK, dtype=torch.bool)
        lengths = torch.tensor(TEST_LENGTHS[: shape.batch]).clamp(max=shape.steps)
    else:
        mask = torch.rand(shape.batch, shape.views, generator=gen) > 0.3
        mask[
            torch.arange(shape.batch), torch.randint(shape.views, (shape.batch,), generator=gen)
        ] = 1
        mask[0] = True
        lengths = torch.randint(1, shape.steps + 1, (shape.batch,), generator=gen)
        lengths[0] = shape.steps
    return x.to(device), mask.to(device), lengths.to(device)


def node_weights(layer: MPLSTM, layer_index: int = 0) -> list[Tensor | None]:
    """W [dirs, P, D, 4U], R [dirs, U, 4U], bias [dirs, P, 4U], peepholes [dirs, 4U] | None.

    The `mplstm::MPLSTM` node's layout (what `mplstm_layer_triton` and the plugin take):
    kernels transposed, the two biases summed, the candidate reading U_f where the layer
    says so, and the g block scaled by 2 (exact) for the one-sigmoid trick.
    """
    u = layer.hidden_size
    scale = gate_vector(u, 1.0, 1.0, 2.0, 1.0, layer.weight_hh_l0)
    ws, rs, bs, ps = [], [], [], []
    for suffix in ("", "_reverse") if layer.bidirectional else ("",):
        name = f"l{layer_index}{suffix}"
        w_hh = getattr(layer, f"weight_hh_{name}")
        if layer.candidate_uses_forget_kernel:
            w_hh = torch.cat([w_hh[: 2 * u], w_hh[u : 2 * u], w_hh[3 * u :]])
        ws.append(getattr(layer, f"weight_ih_{name}").transpose(1, 2) * scale)
        rs.append(w_hh.t() * scale)
        bs.append((getattr(layer, f"bias_ih_{name}") + getattr(layer, f"bias_hh_{name}")) * scale)
        if layer.peepholes:
            p = getattr(layer, f"weight_peep_{name}")
            ps.append(torch.cat([p[0], p[1], torch.zeros_like(p[0]), p[2]]))
    stacked = [torch.stack(t).detach().contiguous() for t in (ws, rs, bs)]
    return [*stacked, torch.stack(ps).detach().contiguous() if ps else None]


def recurrence_inputs(
    layer: MPLSTM, x: Tensor, view_mask: Tensor, reverse: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(proj [P, B, T, 4U], weight_hh_t [U, 4U], peep [4U] | None) of one direction, in x's
    dtype: what `recurrence` and `mplstm_recurrence_triton` take (as MPLSTM._direction
    prepares them), so that a case checks the recurrence alone."""
    u = layer.hidden_size
    name = "l0_reverse" if reverse else "l0"
    weight_ih = getattr(layer, f"weight_ih_{name}").to(x)  # x's dtype and device
    bias = (getattr(layer, f"bias_ih_{name}") + getattr(layer, f"bias_hh_{name}")).to(x)
    proj = prepare_gates(input_projection(x, weight_ih, bias), view_mask)
    g_scale = gate_vector(u, 1.0, 1.0, 2.0, 1.0, x)
    weight_hh_t = (getattr(layer, f"weight_hh_{name}").to(x) * g_scale[:, None]).t()
    peep = None
    if layer.peepholes:
        p = getattr(layer, f"weight_peep_{name}").to(x)
        peep = torch.cat([p[0], p[1], torch.zeros_like(p[0]), p[2]])
    return proj.detach(), weight_hh_t.detach().contiguous(), peep
