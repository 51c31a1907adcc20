"""The Multi-Perspective LSTM layer (Sepas-Moghaddam et al., CVPR 2021, arXiv 2105.02802).

`MPLSTM` mirrors `torch.nn.LSTM`: same gate order (i, f, g, o), same parameter
names with a view axis added to the input weights, same `(output, (h_n, c_n))`
result. P views share one joint hidden state h and one joint memory c
(DESIGN.md §2). Per step t, for views j = 1..P:

    z^j   = W^j x^j_t + b_ih^j + U h_{t-1} + b_hh   (+ peepholes, below)
    i^j, f^j, o^j = σ(z_i^j), σ(z_f^j), σ(z_o^j);   g^j = tanh(z_g^j)
    c^(0) = c_{t-1};  c^(j) = f^j ⊙ c^(j-1) + i^j ⊙ g^j;  c_t = c^(P)
    h_t   = Σ_j o^j ⊙ tanh(c_t)

Options, all off by default:
- `recurrent_activation="hard_sigmoid"`: σ(x) = clip(0.2 x + 0.5, 0, 1), Keras 2's
  hard_sigmoid (tf.keras up to 2.15), which the authors' released code used.
  Keras 3 changed hard_sigmoid to relu6(x + 3) / 6; we match Keras 2. g and the
  output keep tanh, as in Keras' LSTM.
- `candidate_uses_forget_kernel=True`: the candidate uses U_f in place of U_g, as
  the released code does (arsm/MPLSTM). The g rows of `weight_hh` stay allocated
  and unused (zero gradient), so checkpoints keep one layout.
- `peepholes=True`: the paper's figure feeds C_{t-1} to the gates. We add diagonal
  peephole weights `weight_peep_l{k}` [3, U] (rows i, f, o), shared by all views:
  z_i^j += p_i ⊙ c_{t-1}, z_f^j += p_f ⊙ c_{t-1}, z_o^j += p_o ⊙ c_{t-1}. Unlike
  Keras' PeepholeLSTMCell, o peeks at c_{t-1} and not at c_t: that is what the
  figure draws, and it keeps every gate of every view a function of the step's
  inputs and the previous state, so the peephole term is formed once per step.
  Peephole weights start at zero (the layer starts as a plain MP-LSTM).

Missing views (`view_mask` False) are skipped in the memory chain
(c^(j) = c^(j-1)) and left out of the output sum. `lengths` stop each sequence's
state at its end, like packed sequences: outputs past the end are zero, h_n/c_n
are the states at the last valid step, and the reverse direction starts at each
sequence's own end.

State: like ONNX's `LSTM` op and `torch.nn.LSTM`, `forward` takes an optional initial
`state=(h_0, c_0)`, each [layers*dirs, B, U], and returns the final (h_n, c_n), so a live
session carries the state of one chunk of frames into the next (DESIGN.md §2, §9). A
reverse direction starts from its initial state at each sequence's end.

Cost (DESIGN.md §2): the input projections of all steps and views are one batched
matmul before the recurrence; each step does one [B, U] x [U, 4U] matmul shared by
all views, one sigmoid over every view's four gates (tanh(x) = 2σ(2x) - 1, with the
g rows pre-scaled by 2), and the P-step memory chain. A masked view costs nothing
per step: its gate pre-activations are saturated once, before the loop (i, o → -inf,
f → +inf), so σ gives exactly 0 and 1 and the chain passes c through unchanged.
Where no gradient is needed (evaluation, inference), the recurrence runs as one fused CPU
kernel instead (cell_cpu.cpp, the same equations; tested against recurrence() below):
eager PyTorch pays a dispatcher round trip per small op, a dozen per step.
bench/cell.py measures the layer against torch.nn.LSTM (docs/benchmarks.md).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from mplstm.training import cell_cpu

RecurrentActivation = Literal["sigmoid", "hard_sigmoid"]
_ACTIVATIONS = ("sigmoid", "hard_sigmoid")


def hard_sigmoid(x: Tensor) -> Tensor:
    """Keras 2's hard_sigmoid: clip(0.2 x + 0.5, 0, 1)."""
    # torch's hardsigmoid is clip(y / 6 + 0.5, 0, 1) (Keras 3's): y = 1.2 x gives Keras 2's.
    return nn.functional.hardsigmoid(x * 1.2)


def _exporting() -> bool:
    """True while torch traces or exports: skip data-dependent input checks then."""
    return bool(
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
        or torch.onnx.is_in_onnx_export()
    )


def check_view_mask(view_mask: Tensor) -> None:
    """Raise ValueError if any sample has all its views masked (eager mode only)."""
    if _exporting():
        return
    empty = ~view_mask.any(dim=1)
    if bool(empty.any()):
        rows = empty.nonzero().flatten().tolist()
        raise ValueError(
            f"view_mask masks every view of sample(s) {rows}: an MP-LSTM needs at least "
            "one present view per sample; drop those samples or supply a view."
        )


def _check_lengths(lengths: Tensor, steps: int) -> None:
    if _exporting():
        return
    if bool((lengths < 1).any()) or bool((lengths > steps).any()):
        raise ValueError(
            f"lengths must lie in [1, T={steps}], got min {int(lengths.min())}, "
            f"max {int(lengths.max())}"
        )


def gate_vector(u: int, i: float, f: float, g: float, o: float, like: Tensor) -> Tensor:
    """A [4U] vector holding one constant per gate block, in gate order i, f, g, o."""
    values = torch.tensor([i, f, g, o], dtype=like.dtype, device=like.device)
    return values.repeat_interleave(u)


def input_projection(x: Tensor, weight_ih: Tensor, bias: Tensor) -> Tensor:
    """All steps' and views' input projections as one batched matmul.

    x: [B, T, P, D]; weight_ih: [P, 4U, D]; bias: [P, 4U] → [P, B, T, 4U]. Batch before
    time, so that x needs no copy: x.permute(2, 0, 1, 3) is a strided [P, B*T, D] batch.
    """
    batch, steps, views, dim = x.shape
    xs = x.permute(2, 0, 1, 3).reshape(views, batch * steps, dim)
    proj = torch.baddbmm(bias.unsqueeze(1), xs, weight_ih.transpose(1, 2))
    return proj.view(views, batch, steps, -1)


def prepare_gates(proj: Tensor, view_mask: Tensor | None) -> Tensor:
    """Scale the g block of proj [P, B, T, 4U] by 2 and saturate masked views' gates, in place.

    The factor 2 lets one sigmoid give tanh too: tanh(z) = 2σ(2z) - 1. A masked view
    ([B, P] False) gets i = o = -inf and f = +inf, so that σ gives exactly i = o = 0 and
    f = 1: its chain step is c^(j) = 1 * c^(j-1) + 0 * g = c^(j-1) exactly and it drops
    out of the output sum (DESIGN.md §2), with no per-step cost.
    """
    # In place (baddbmm's backward does not need its output): a fresh [P, B, T, 4U]
    # tensor costs more in page faults than the arithmetic.
    u = proj.shape[-1] // 4
    if view_mask is None:
        proj[..., 2 * u : 3 * u] *= 2.0
        return proj
    present = view_mask.t()[:, :, None, None]  # [P, B, 1, 1]
    scale = torch.where(present, gate_vector(u, 1.0, 1.0, 2.0, 1.0, proj), 0.0)
    saturated = torch.where(present, 0.0, gate_vector(u, -math.inf, math.inf, 0.0, -math.inf, proj))
    # proj * 0 + inf = inf as proj is finite; proj * 1 + 0 and proj * 2 + 0 are exact.
    return proj.mul_(scale).add_(saturated)


def recurrence(
    proj: Tensor,
    weight_hh_t: Tensor,
    peep: Tensor | None,
    valid: Tensor | None,
    reverse: bool,
    hard: bool,
    h0: Tensor | None = None,
    c0: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run one direction of the MP-LSTM recurrence over precomputed projections.

    proj: [P, B, T, 4U], the input projections plus both biases, from
    prepare_gates(); weight_hh_t: [U, 4U]; peep: [4U] peephole weights (zero in the g
    block) or None; valid: [T, B, 1] bool (step inside the sequence) or None.
    The g block of proj and weight_hh_t is pre-scaled by 2, so that one sigmoid
    over all gates also gives s_g = σ(2 z_g), and tanh(z_g) = 2 s_g - 1.
    h0, c0: the initial state [B, U] (None: zeros).
    Returns output [B, T, U] (zero past each sequence's end), h_n [B, U], c_n [B, U].
    """
    # Per-step work is a dozen small ops, so their fixed cost matters: CPU tanh costs
    # several sigmoids (hence 2σ(2x) - 1), and an op with a Python scalar operand
    # (x * 2.0) costs several tensor ops (hence addcmul's `value` and x + x).
    _, batch, steps, four_u = proj.shape
    u = four_u // 4
    h = proj.new_zeros(batch, u) if h0 is None else h0.to(proj.dtype)
    c = proj.new_zeros(batch, u) if c0 is None else c0.to(proj.dtype)
    outputs: list[Tensor] = [h] * steps
    for k in range(steps):
        t = steps - 1 - k if reverse else k
        rec = torch.mm(h, weight_hh_t)
        if peep is not None:
            rec = torch.addcmul(rec, c.repeat(1, 4), peep)
        z = proj[:, :, t] + rec  # [P, B, 4U]: every view's gates at once
        if hard:
            i, f, _, o = hard_sigmoid(z).chunk(4, dim=-1)
            s_g = torch.sigmoid(z[..., 2 * u : 3 * u])
        else:
            # In place: z is this step's own tensor, and sigmoid's backward needs only its output.
            i, f, s_g, o = z.sigmoid_().chunk(4, dim=-1)
        ig = torch.addcmul(torch.neg(i), i, s_g, value=2.0)  # i ⊙ tanh(z_g)
        c_new = c
        for f_j, ig_j in zip(f.unbind(0), ig.unbind(0), strict=True):
            c_new = torch.addcmul(ig_j, f_j, c_new)
        o_sum = o.sum(dim=0)
        h_new = torch.addcmul(torch.neg(o_sum), o_sum, torch.sigmoid(c_new + c_new), value=2.0)
        if valid is None:
            h, c = h_new, c_new
            outputs[t] = h
        else:
            h = torch.where(valid[t], h_new, h)
            c = torch.where(valid[t], c_new, c)
            outputs[t] = torch.where(valid[t], h_new, torch.zeros_like(h_new))
    return torch.stack(outputs, dim=1), h, c


class MPLSTM(nn.Module):
    """Multi-Perspective LSTM layer(s), with the interface of `torch.nn.LSTM`.

    forward(x [B, T, P, D], view_mask [B, P] | None, lengths [B] | None,
            state (h_0, c_0) [layers*dirs, B, U] each | None)
    → (output [B, T, dirs*U], (h_n [layers*dirs, B, U], c_n [layers*dirs, B, U])).
    With batch_first=False, x is [T, B, P, D] and output [T, B, dirs*U].
    Layers after the first read the joint sequence of the layer below (P = 1).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_views: int,
        num_layers: int = 1,
        bidirectional: bool = False,
        batch_first: bool = True,
        dropout: float = 0.0,
        recurrent_activation: RecurrentActivation = "sigmoid",
        candidate_uses_forget_kernel: bool = False,
        peepholes: bool = False,
    ) -> None:
        super().__init__()
        if recurrent_activation not in _ACTIVATIONS:
            raise ValueError(
                f"recurrent_activation must be one of {_ACTIVATIONS}, got {recurrent_activation!r}"
            )
        if min(input_size, hidden_size, num_views, num_layers) < 1:
            raise ValueError("input_size, hidden_size, num_views and num_layers must be >= 1")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_views = num_views
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.batch_first = batch_first
        self.dropout = dropout
        self.recurrent_activation = recurrent_activation
        self.candidate_uses_forget_kernel = candidate_uses_forget_kernel
        self.peepholes = peepholes
        dirs = 2 if bidirectional else 1
        u = hidden_size
        for layer in range(num_layers):
            views, dim = (num_views, input_size) if layer == 0 else (1, dirs * u)
            for suffix in self._suffixes():
                name = f"l{layer}{suffix}"
                self.register_parameter(
                    f"weight_ih_{name}", nn.Parameter(torch.empty(views, 4 * u, dim))
                )
                self.register_parameter(f"bias_ih_{name}", nn.Parameter(torch.empty(views, 4 * u)))
                self.register_parameter(f"weight_hh_{name}", nn.Parameter(torch.empty(4 * u, u)))
                self.register_parameter(f"bias_hh_{name}", nn.Parameter(torch.empty(4 * u)))
                if peepholes:
                    self.register_parameter(f"weight_peep_{name}", nn.Parameter(torch.empty(3, u)))
        self.reset_parameters()

    def _suffixes(self) -> tuple[str, ...]:
        return ("", "_reverse") if self.bidirectional else ("",)

    def reset_parameters(self) -> None:
        """torch.nn.LSTM's init (uniform ±1/sqrt(U)), then forget bias 1 and peepholes 0.

        The first layer's recurrent weights U are drawn from ±1/sqrt(P U) instead: there h
        is a sum of P views' outputs, and U h_{t-1} feeds every view's gates, so with
        LSTM-sized U the step-to-step gain grows with P and, for P = 5, gradients explode
        backwards in time at init (x_0's gradient hundreds of times x_T's) and training
        stalls at chance. Scaling U by 1/sqrt(P) keeps var(U h) as in an LSTM; P = 1 is
        unchanged.
        """
        bound = 1.0 / math.sqrt(self.hidden_size)
        u = self.hidden_size
        with torch.no_grad():
            for name, param in self.named_parameters():
                if name.startswith("weight_peep"):
                    param.zero_()
                    continue
                scale = 1.0
                if name.startswith("weight_hh_l0"):
                    scale = 1.0 / math.sqrt(self.num_views)
                nn.init.uniform_(param, -bound * scale, bound * scale)
                # The forget bias starts at 1 (bias_ih + bias_hh sum to 1), as in Keras'
                # unit_forget_bias: the memory keeps its content early in training.
                if name.startswith("bias_ih"):
                    param[..., u : 2 * u] = 1.0
                elif name.startswith("bias_hh"):
                    param[u : 2 * u] = 0.0

    def _direction(
        self,
        x: Tensor,
        name: str,
        view_mask: Tensor | None,
        lengths: Tensor | None,
        valid: Tensor | None,
        reverse: bool,
        initial: tuple[Tensor, Tensor] | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        u = self.hidden_size
        hard = self.recurrent_activation == "hard_sigmoid"
        weight_ih = getattr(self, f"weight_ih_{name}")
        weight_hh = getattr(self, f"weight_hh_{name}")
        if self.candidate_uses_forget_kernel:
            weight_hh = torch.cat([weight_hh[: 2 * u], weight_hh[u : 2 * u], weight_hh[3 * u :]])
        bias = getattr(self, f"bias_ih_{name}") + getattr(self, f"bias_hh_{name}")
        peep = None
        if self.peepholes:
            p = getattr(self, f"weight_peep_{name}")
            peep = torch.cat([p[0], p[1], torch.zeros_like(p[0]), p[2]])
        if not _exporting() and cell_cpu.applies(x, weight_ih, weight_hh, bias):
            proj = cell_cpu.input_projection(x, weight_ih)
            return cell_cpu.recurrence(
                proj, bias, weight_hh.t(), peep, view_mask, lengths, reverse, hard, *(initial or ())
            )
        proj = prepare_gates(input_projection(x, weight_ih, bias), view_mask)
        # g rows times 2, as prepare_gates() does for the projection.
        g_scale = gate_vector(u, 1.0, 1.0, 2.0, 1.0, x)
        return recurrence(
            proj, (weight_hh * g_scale[:, None]).t(), peep, valid, reverse, hard, *(initial or ())
        )

    def forward(
        self,
        x: Tensor,
        view_mask: Tensor | None = None,
        lengths: Tensor | None = None,
        state: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x [B, T, P, D] (batch_first) → (output [B, T, dirs*U], (h_n, c_n)).

        state: the initial (h_0, c_0), each [layers*dirs, B, U]; None starts from zeros.
        """
        if x.dim() != 4 or x.shape[2] != self.num_views or x.shape[3] != self.input_size:
            raise ValueError(
                f"MPLSTM expects x of shape [B, T, P={self.num_views}, D={self.input_size}]"
                f"{' (batch_first)' if self.batch_first else ' as [T, B, P, D]'}, "
                f"got {list(x.shape)}"
            )
        if not self.batch_first:
            x = x.transpose(0, 1)
        steps = x.shape[1]
        self._check_state(state, x.shape[0])
        if view_mask is not None:
            view_mask = view_mask.to(device=x.device, dtype=torch.bool)
            check_view_mask(view_mask)
        valid = None
        if lengths is not None:
            lengths = lengths.to(x.device)
            _check_lengths(lengths, steps)
            time = torch.arange(steps, device=x.device)
            valid = (time[:, None] < lengths[None, :]).unsqueeze(-1)  # [T, B, 1]
        h_n: list[Tensor] = []
        c_n: list[Tensor] = []
        out = x
        for layer in range(self.num_layers):
            if layer > 0:
                if self.dropout > 0 and self.training:
                    out = nn.functional.dropout(out, self.dropout, training=True)
                out = out.unsqueeze(2)  # the joint sequence is one "view"
            mask = view_mask if layer == 0 else None
            results = []
            for k, suffix in enumerate(self._suffixes()):
                row = layer * len(self._suffixes()) + k
                initial = None if state is None else (state[0][row], state[1][row])
                name = f"l{layer}{suffix}"
                reverse = suffix == "_reverse"
                results.append(self._direction(out, name, mask, lengths, valid, reverse, initial))
            out = torch.cat([r[0] for r in results], dim=-1) if len(results) > 1 else results[0][0]
            h_n.extend(r[1] for r in results)
            c_n.extend(r[2] for r in results)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, (torch.stack(h_n), torch.stack(c_n))

    def _check_state(self, state: tuple[Tensor, Tensor] | None, batch: int) -> None:
        if state is None or _exporting():
            return
        rows = self.num_layers * len(self._suffixes())
        expected = (rows, batch, self.hidden_size)
        shapes = [tuple(s.shape) for s in state]
        if len(state) != 2 or any(shape != expected for shape in shapes):
            raise ValueError(
                f"state must be (h_0, c_0), each [layers*dirs={rows}, B={batch}, "
                f"U={self.hidden_size}], got {shapes}"
            )

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_views={self.num_views}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        for name, default in (
            ("bidirectional", False),
            ("batch_first", True),
            ("dropout", 0.0),
            ("recurrent_activation", "sigmoid"),
            ("candidate_uses_forget_kernel", False),
            ("peepholes", False),
        ):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)!r}"
        return s
