"""The MP-LSTM layer as one ONNX node, `mplstm::MPLSTM`, with a model-local function body.

DESIGN.md §6: the node is opaque to a runtime that has a plugin for it (TensorRT
reads `plugin_namespace`/`plugin_version`) and runs its function body, standard ONNX
ops only, everywhere else (ONNX Runtime inlines model-local functions).

Node contract (one layer, both directions; weights in the export layout of
`export_weights`, the layout `mplstm.training.cell.recurrence` computes in):

    inputs   X [B, T, P, D] float, view_mask [B, P] bool, lengths [B] int64,
             W [dirs, P, D, 4U], R [dirs, U, 4U], bias [dirs, P, 4U],
             peephole_weights [dirs, 4U] (only where the layer has peepholes)
             initial_h [dirs, B, U], initial_c [dirs, B, U] (optional, inputs 7 and 8:
             the state to start from, as ONNX's LSTM op takes it; peephole_weights is
             then "" where the layer has none)
    outputs  Y [B, T, dirs*U] (zero past each sequence's end),
             Y_h [dirs, B, U], Y_c [dirs, B, U] (the states at each sequence's end)
    attrs    hidden_size, num_views, direction, recurrent_activation, peepholes,
             plugin_namespace, plugin_version

Gate order i, f, g, o; the g block of W, R and bias is pre-scaled by 2, so that one
Sigmoid over all gates gives s_g = σ(2 z_g) and tanh(z_g) = 2 s_g - 1. The reverse
direction reads each sequence from its own end, as in the torch layer.

One function body per layer configuration (views, direction, activation, peepholes),
told apart by the function `overload` (ONNX IR ≥ 10): a body built for a fixed P runs
P two-dimensional MatMuls, which ONNX Runtime prepacks, where one batched MatMul over
views is not, and is slower (docs/benchmarks.md, onnx_cell). `add_function_bodies` gives
every MPLSTM node of a model its overload and body from the node's attributes.

How the body is built, because per-step node overhead dominates on the CPU (§6):
- Outside the recurrence: the reverse direction's input is reversed per sequence
  (ReverseSequence), so both directions run forward in one Scan; the input projections
  of all steps go through one MatMul per view and direction, concatenated straight into
  the time-major layout the Scan slices; the biases and the view mask enter in one Add
  (a masked view's gates are saturated, i = o = 0 and f = 1 exactly, so it costs nothing
  per step); `lengths` need no per-step work either: the state runs on past a
  sequence's end, and after the Scan the outputs there are zeroed and the final states
  gathered at its last step.
- Per step: one prepacked MatMul per direction, one Sigmoid over every view's gates,
  the memory chain over views, and the output sum. The state carries c / 2, which
  saves the 2 of tanh = 2σ(2x) - 1 on the candidate.
- One view without peepholes (every layer after the first): an MP-LSTM is then an
  LSTM, and the body is ONNX's LSTM op, as fast as ONNX Runtime's LSTM.

Tried against this body (the layer of bench/onnx_cell.py) and not kept, because none
was faster at every batch size (figures: docs/benchmarks.md, onnx_cell):
- The closed-form memory chain (Π f as Exp of one reverse CumSum of Log f over views,
  plus a slot that carries c_{t-1}: 17 nodes a step instead of 23). Slower at every
  batch size: ORT's Log costs far more an element than Exp, and at B=1 Log, CumSum and
  Where each cost more than the Mul/Add pairs they replace.
- Per-view scan inputs concatenated inside the body, with the bias in a Gemm and the
  view mask as an extra input column whose weight row saturates the gates. This drops
  the Concat and Add passes over the [T, P, B, 4U] projections, but its gain at B=8 and
  32 was within noise and it was slower at B=1 (one more node and four more scan inputs
  per step).
- The floor at B=1: with the memory chain removed entirely (not a valid layer) the
  layer is still no better than the 1.5x target against ORT's LSTM op: each step pays
  the recurrent GEMV plus a fixed cost for each remaining node. Meeting the target at
  B=1 therefore needs a fused kernel (the TensorRT plugin, or an ORT custom op), not a
  different ONNX body.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

DOMAIN = "mplstm"
OP_TYPE = "MPLSTM"
DOMAIN_VERSION = 1
# The TensorRT ONNX parser looks these up in its plugin registry (DESIGN.md §6).
PLUGIN_NAMESPACE = "mplstm"
PLUGIN_VERSION = "1"
# Nodes with an initial state (8 tensor inputs) are another plugin for TensorRT, which
# fixes a plugin's inputs: the same op type and version in a namespace of their own.
STATE_PLUGIN_NAMESPACE = "mplstm_state"
DEFAULT_OPSET = 20  # what torch.onnx.export (dynamo) emits in torch 2.13
IR_VERSION = 10  # as torch.onnx.export; onnx 1.23 writes 14 by default, which ORT 1.31 refuses

INPUTS = ("X", "view_mask", "lengths", "W", "R", "bias")
PEEPHOLE_INPUT = "peephole_weights"
# A live session's step model carries the state from one chunk to the next (DESIGN.md §2).
STATE_INPUTS = ("initial_h", "initial_c")
OUTPUTS = ("Y", "Y_h", "Y_c")
ATTRIBUTES = (
    "hidden_size",
    "num_views",
    "direction",
    "recurrent_activation",
    "peepholes",
    "plugin_namespace",
    "plugin_version",
)

Activation = Literal["sigmoid", "hard_sigmoid"]
_ACTIVATIONS = ("sigmoid", "hard_sigmoid")
# Keras 2's hard_sigmoid, clip(0.2 x + 0.5, 0, 1), is ONNX HardSigmoid's default.
_HARD_SIGMOID = {"alpha": 0.2, "beta": 0.5}


@dataclass(frozen=True)
class CellConfig:
    """What a function body is built for: one per distinct layer configuration in a model."""

    num_views: int  # P: the body runs one 2-D MatMul per view (and direction)
    bidirectional: bool = False
    recurrent_activation: Activation = "sigmoid"
    peepholes: bool = False  # the node then takes a 7th input
    initial_state: bool = False  # inputs 8 and 9: initial_h, initial_c

    def __post_init__(self) -> None:
        if self.recurrent_activation not in _ACTIVATIONS:
            raise ValueError(
                f"recurrent_activation must be one of {_ACTIVATIONS}, "
                f"got {self.recurrent_activation!r}"
            )
        if self.num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {self.num_views}")

    @property
    def dirs(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def overload(self) -> str:
        """The function overload (and node overload) naming this configuration."""
        direction = "bidirectional" if self.bidirectional else "forward"
        peepholes = "_peepholes" if self.peepholes else ""
        state = "_state" if self.initial_state else ""
        return f"views{self.num_views}_{direction}_{self.recurrent_activation}{peepholes}{state}"

    @property
    def inputs(self) -> tuple[str, ...]:
        """The node's (and function's) formal inputs, in order."""
        if self.initial_state:
            return (*INPUTS, PEEPHOLE_INPUT, *STATE_INPUTS)
        return (*INPUTS, PEEPHOLE_INPUT) if self.peepholes else INPUTS


@dataclass(frozen=True)
class LayerWeights:
    """One layer's weights in the node's export layout (see the module docstring)."""

    W: np.ndarray  # [dirs, P, D, 4U]
    R: np.ndarray  # [dirs, U, 4U]
    bias: np.ndarray  # [dirs, P, 4U], bias_ih + bias_hh
    peepholes: np.ndarray | None  # [dirs, 4U], zero in the g block

    @property
    def hidden_size(self) -> int:
        return int(self.R.shape[1])

    @property
    def num_views(self) -> int:
        return int(self.W.shape[1])

    def arrays(self) -> list[np.ndarray]:
        """The weight inputs of the node, in input order."""
        extra = [] if self.peepholes is None else [self.peepholes]
        return [self.W, self.R, self.bias, *extra]


def export_weights(
    params: Mapping[str, np.ndarray],
    layer: int,
    bidirectional: bool,
    candidate_uses_forget_kernel: bool = False,
    peepholes: bool = False,
) -> LayerWeights:
    """Turn one layer's MPLSTM parameters (state_dict names, numpy) into the export layout.

    Stacks the directions, sums the two biases, transposes the kernels for MatMul,
    copies the U_f rows into U_g where the candidate reads U_f (exact: the layer then
    never reads U_g), and scales the g block by 2 for the one-Sigmoid trick (exact in
    floating point).
    """
    suffixes = ("", "_reverse") if bidirectional else ("",)
    w, r, b, p = [], [], [], []
    for suffix in suffixes:
        name = f"l{layer}{suffix}"
        w_ih = np.asarray(params[f"weight_ih_{name}"])  # [P, 4U, D]
        w_hh = np.asarray(params[f"weight_hh_{name}"])  # [4U, U]
        u = w_hh.shape[1]
        if candidate_uses_forget_kernel:
            w_hh = np.concatenate([w_hh[: 2 * u], w_hh[u : 2 * u], w_hh[3 * u :]])
        scale = np.ones(4 * u, dtype=w_ih.dtype)
        scale[2 * u : 3 * u] = 2.0
        w.append(w_ih.transpose(0, 2, 1) * scale)
        r.append(w_hh.T * scale)
        b.append((np.asarray(params[f"bias_ih_{name}"]) + params[f"bias_hh_{name}"]) * scale)
        if peepholes:
            p_i, p_f, p_o = np.asarray(params[f"weight_peep_{name}"])
            p.append(np.concatenate([p_i, p_f, np.zeros_like(p_i), p_o]))
    return LayerWeights(
        W=np.ascontiguousarray(np.stack(w)),
        R=np.ascontiguousarray(np.stack(r)),
        bias=np.stack(b),
        peepholes=np.stack(p) if peepholes else None,
    )


class _Builder:
    """Appends nodes to a list, naming their outputs uniquely within one graph."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self._count = 0

    def __call__(self, op_type: str, *inputs: str, outputs: int = 1, **attrs) -> str | list[str]:
        self._count += 1
        names = [f"{self.prefix}{op_type}_{self._count}_{k}" for k in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, **attrs))
        return names[0] if outputs == 1 else names

    def split(self, value: str, parts: int, axis: int) -> list[str]:
        """`parts` equal pieces along `axis` (no node for one piece)."""
        if parts == 1:
            return [value]
        return self("Split", value, axis=axis, num_outputs=parts, outputs=parts)

    def const(self, value: np.ndarray | float | list, dtype: type = np.int64) -> str:
        return self("Constant", value=numpy_helper.from_array(np.asarray(value, dtype=dtype)))

    def rename_last(self, name: str) -> str:
        """Give the last node's (single) output a fixed name: a graph output."""
        self.nodes[-1].output[0] = name
        return name


def _scan_body(config: CellConfig, outer: dict[str, str]) -> onnx.GraphProto:
    """One time step for all directions and views.

    State h and c/2, both [1, dirs, B, U]; scan input z_x [P, dirs, B, 4U] (input
    projections plus biases, masked views saturated). Reads from the outer scope the
    2-D recurrent kernels R_0 (, R_1) [U, 4U], HALF (and PEEP2 [1, dirs, 1, 4U]).
    """
    g = _Builder("s_")
    # 2-D kernels, one MatMul per direction: ORT prepacks a constant 2-D MatMul operand,
    # which more than pays for the extra node (docs/benchmarks.md, onnx_cell).
    per_dir = [
        g("MatMul", h, outer[f"R_{d}"]) for d, h in enumerate(g.split("h_prev", config.dirs, 1))
    ]
    rec = g("Concat", *per_dir, axis=1) if config.bidirectional else per_dir[0]  # [1, dirs, B, 4U]
    if config.peepholes:
        # z_{i,f,o} += p ⊙ c_{t-1}, the same for every view; PEEP2 = 2 p as the state is c/2.
        tiled = g("Concat", "ch_prev", "ch_prev", "ch_prev", "ch_prev", axis=-1)
        rec = g("Add", rec, g("Mul", tiled, outer["PEEP2"]))
    z = g("Add", "zx", rec)  # [P, dirs, B, 4U]
    if config.recurrent_activation == "sigmoid":
        i, f, s_g, o = g("Split", g("Sigmoid", z), axis=-1, num_outputs=4, outputs=4)
    else:
        hard = g("HardSigmoid", z, **_HARD_SIGMOID)
        i, f, _, o = g("Split", hard, axis=-1, num_outputs=4, outputs=4)
        s_g = g("Sigmoid", g("Split", z, axis=-1, num_outputs=4, outputs=4)[2])
    ig_half = g("Mul", i, g("Sub", s_g, outer["HALF"]))  # i ⊙ tanh(z_g) / 2
    # The memory chain over views, c^(j) = f^j c^(j-1) + i^j g^j, on c/2. A closed form,
    # Π f ⊙ c + Σ_j (Π_{k>j} f^k) i^j g^j with the products from one CumSum of log f,
    # has a node count independent of P. At P = 5 it was no faster: ORT's Log and CumSum
    # cost more than the 2P small nodes they replace (docs/benchmarks.md, onnx_cell).
    ch = "ch_prev"
    views = config.num_views
    for f_j, ig_j in zip(g.split(f, views, 0), g.split(ig_half, views, 0), strict=True):
        ch = g("Add", g("Mul", f_j, ch), ig_j)
    ch = g.rename_last("ch_next")
    g("Add", ch, ch)
    c = g.rename_last("c_out")
    o_sum = g("ReduceSum", o, g.const([0]), keepdims=1)
    g("Mul", o_sum, g("Tanh", c))
    g.rename_last("h_next")
    g("Identity", "h_next")
    g.rename_last("h_out")
    # ORT's Scan wants the rank of every body output.
    rank4 = ["v", "d", "b", "u"]
    f32 = TensorProto.FLOAT
    return helper.make_graph(
        g.nodes,
        "mplstm_step",
        [
            helper.make_tensor_value_info("h_prev", f32, rank4),
            helper.make_tensor_value_info("ch_prev", f32, rank4),
            helper.make_tensor_value_info("zx", f32, rank4),
        ],
        [
            helper.make_tensor_value_info(n, f32, rank4)
            for n in ("h_next", "ch_next", "h_out", "c_out")
        ],
    )


def _saturation(g: _Builder, hidden: str) -> str:
    """[4U]: -inf, +inf, 0, -inf per gate block, so σ gives i = o = 0 and f = 1."""
    blocks = g("CastLike", g.const([[-np.inf], [np.inf], [0.0], [-np.inf]], np.float32), "X")
    full = g("Expand", blocks, g("Concat", g.const([4]), hidden, axis=0))
    return g("Reshape", full, g.const([-1]))


def _scalar(g: _Builder, value: float) -> str:
    """A constant of X's float type: the body serves fp32 and fp16 models alike."""
    return g("CastLike", g.const(value, np.float32), "X")


def _lstm_layer(g: _Builder, config: CellConfig) -> None:
    """One view and no peepholes: an MP-LSTM is then exactly an LSTM, so ONNX's LSTM op.

    (ONNX's peepholes feed c_t, not c_{t-1}, to the o gate, hence not with peepholes.)
    ONNX's gate order is i, o, f, g, and its g block is not pre-scaled by 2. A masked
    (only) view gives i = o = 0: zero outputs and states, as the Scan body gives.
    """
    axis1 = g.const([1])

    def lstm_order(gates: str) -> str:
        """[dirs, 4U, ...] in i, f, g, o order, g x 2 → i, o, f, g, g unscaled."""
        i, f, g2, o = g("Split", gates, axis=1, num_outputs=4, outputs=4)
        return g("Concat", i, o, f, g("Mul", g2, _scalar(g, 0.5)), axis=1)

    w = lstm_order(g("Transpose", g("Squeeze", "W", axis1), perm=[0, 2, 1]))  # [dirs, 4U, D]
    r = lstm_order(g("Transpose", "R", perm=[0, 2, 1]))  # [dirs, 4U, U]
    bias = lstm_order(g("Squeeze", "bias", axis1))  # [dirs, 4U]
    bias = g("Concat", bias, g("Mul", bias, _scalar(g, 0.0)), axis=1)  # Wb, then Rb = 0
    x = g("Transpose", g("Squeeze", "X", g.const([2])), perm=[1, 0, 2])  # [T, B, D]
    lengths = g("Cast", "lengths", to=TensorProto.INT32)
    state = list(STATE_INPUTS) if config.initial_state else []
    attrs: dict[str, object] = {"direction": "bidirectional" if config.bidirectional else "forward"}
    if config.recurrent_activation == "hard_sigmoid":
        attrs["activations"] = ["HardSigmoid", "Tanh", "Tanh"] * config.dirs
        attrs["activation_alpha"] = [_HARD_SIGMOID["alpha"]] * config.dirs
        attrs["activation_beta"] = [_HARD_SIGMOID["beta"]] * config.dirs
    y, h_n, c_n = g("LSTM", x, w, r, bias, lengths, *state, outputs=3, **attrs)
    # ORT requires hidden_size: the node's own attribute.
    g.nodes[-1].attribute.append(helper.make_attribute_ref("hidden_size", AttributeProto.INT))
    present = g("CastLike", "view_mask", "X")  # [B, 1], 1 where the view is present
    y = g("Transpose", y, perm=[2, 0, 1, 3])  # [B, T, dirs, U]
    y = g("Reshape", y, g.const([0, 0, -1]))
    g("Mul", y, g("Unsqueeze", present, g.const([2])))
    g.rename_last("Y")
    state_mask = g("Unsqueeze", g("Squeeze", present, axis1), g.const([0, 2]))  # [1, B, 1]
    g("Mul", h_n, state_mask)
    g.rename_last("Y_h")
    if config.initial_state:
        # A masked view leaves c as it was (c^(1) = c^(0)), as the Scan body does.
        g("Where", g("Cast", state_mask, to=TensorProto.BOOL), c_n, "initial_c")
    else:
        g("Mul", c_n, state_mask)
    g.rename_last("Y_c")


def _scan_layer(g: _Builder, config: CellConfig) -> None:
    """The general body: one Scan over time for every direction and view."""
    batch = g("Shape", "X", start=0, end=1)
    dim = g("Shape", "X", start=3, end=4)
    hidden = g("Shape", "R", start=1, end=2)
    dirs = g.const([config.dirs])
    one = g.const([1])

    # The input per direction, [dirs, B, T, P, D]: the reverse direction reads each
    # sequence reversed within its length, so that both run forward in one Scan.
    x = g("Unsqueeze", "X", g.const([0]))
    if config.bidirectional:
        x_rev = g("ReverseSequence", "X", "lengths", batch_axis=0, time_axis=1)
        x = g("Concat", x, g("Unsqueeze", x_rev, g.const([0])), axis=0)
    # Input projections: one prepackable [T*B, D] x [D, 4U] MatMul per (view, direction),
    # concatenated in (view, direction) order into [T, P, dirs, B, 4U], the Scan's layout.
    n = config.num_views * config.dirs
    x = g("Transpose", x, perm=[3, 0, 2, 1, 4])  # [P, dirs, T, B, D]
    rows = g.split(g("Reshape", x, g("Concat", g.const([n, -1]), dim, axis=0)), n, 0)
    w_shape = g("Concat", g.const([n]), g("Shape", "W", start=2, end=4), axis=0)
    kernels = g.split(g("Reshape", g("Transpose", "W", perm=[1, 0, 2, 3]), w_shape), n, 0)
    gates = g("Shape", "W", start=3, end=4)
    step_shape = g("Concat", g.const([-1, 1]), batch, gates, axis=0)
    axis0 = g.const([0])
    pieces = [
        g("Reshape", g("MatMul", x_k, g("Squeeze", w_k, axis0)), step_shape)  # [T, 1, B, 4U]
        for x_k, w_k in zip(rows, kernels, strict=True)
    ]
    proj = g("Concat", *pieces, axis=1) if n > 1 else pieces[0]
    views_dirs = g.const([0, config.num_views, config.dirs])
    proj = g("Reshape", proj, g("Concat", views_dirs, batch, gates, axis=0))
    # Biases and view mask in one Add: masked views get saturated pre-activations.
    mask = g("Unsqueeze", g("Transpose", "view_mask", perm=[1, 0]), g.const([0, 2, 4]))
    offset = g("Where", mask, _scalar(g, 0.0), _saturation(g, hidden))  # [1, P, 1, B, 4U]
    bias = g("Unsqueeze", g("Transpose", "bias", perm=[1, 0, 2]), g.const([0, 3]))
    proj = g("Add", proj, g("Add", bias, offset))  # [T, P, dirs, B, 4U]

    h_seq, c_seq = _run_scan(g, config, proj, batch, hidden, dirs, one, axis0)
    _scan_outputs(g, config, h_seq, c_seq, batch, hidden, dirs, one, axis0)


def _run_scan(
    g: _Builder,
    config: CellConfig,
    proj: str,
    batch: str,
    hidden: str,
    dirs: str,
    one: str,
    axis0: str,
) -> tuple[str, str]:
    """The Scan over time from the initial (or zero) states: h and c at every step, [T, dirs, B, U]."""
    if config.initial_state:
        h_0 = g("Unsqueeze", "initial_h", axis0)
        ch_0 = g("Unsqueeze", g("Mul", "initial_c", _scalar(g, 0.5)), axis0)  # the state is c/2
    else:
        h_0 = ch_0 = g("Expand", _scalar(g, 0.0), g("Concat", one, dirs, batch, hidden, axis=0))
    outer = {"HALF": _scalar(g, 0.5)}
    for d, kernel in enumerate(g.split("R", config.dirs, 0)):
        outer[f"R_{d}"] = g("Squeeze", kernel, axis0)  # constant-folded by ORT
    if config.peepholes:
        peep = g("Mul", PEEPHOLE_INPUT, _scalar(g, 2.0))
        outer["PEEP2"] = g("Unsqueeze", peep, g.const([0, 2]))
    _, _, h_seq, c_seq = g(
        "Scan",
        h_0,
        ch_0,
        proj,
        outputs=4,
        num_scan_inputs=1,
        body=_scan_body(config, outer),
    )
    axis_views = g.const([1])
    h_seq = g("Squeeze", h_seq, axis_views)  # [T, dirs, B, U]
    c_seq = g("Squeeze", c_seq, axis_views)
    return h_seq, c_seq


def _scan_outputs(
    g: _Builder,
    config: CellConfig,
    h_seq: str,
    c_seq: str,
    batch: str,
    hidden: str,
    dirs: str,
    one: str,
    axis0: str,
) -> None:
    """Y_h and Y_c at each sequence's end, and Y: both directions in time order, zero past it."""
    # Final states: scan step lengths - 1 of each sequence, in both directions.
    last = g("Reshape", g("Sub", "lengths", g.const(1)), g.const([1, 1, -1, 1]))
    last = g("Expand", last, g("Concat", one, dirs, batch, hidden, axis=0))
    g("Squeeze", g("GatherElements", h_seq, last, axis=0), axis0)
    g.rename_last("Y_h")
    g("Squeeze", g("GatherElements", c_seq, last, axis=0), axis0)
    g.rename_last("Y_c")

    # Output: the reverse direction back in time order, zero past each end, [B, T, dirs*U].
    if config.bidirectional:
        fwd, rev = g("Split", h_seq, axis=1, num_outputs=2, outputs=2)
        rev = g("ReverseSequence", g("Squeeze", rev, one), "lengths", batch_axis=1, time_axis=0)
        h_seq = g(
            "Concat",
            g("Transpose", fwd, perm=[0, 2, 1, 3]),
            g("Unsqueeze", rev, g.const([2])),
            axis=2,
        )
    else:
        h_seq = g("Transpose", h_seq, perm=[0, 2, 1, 3])  # [T, B, dirs, U]
    steps = g("Squeeze", g("Shape", "X", start=1, end=2), axis0)
    time = g("Range", g.const(0), steps, g.const(1))
    valid = g("Less", g("Unsqueeze", time, g.const([1])), g("Unsqueeze", "lengths", axis0))
    valid = g("Unsqueeze", valid, g.const([2, 3]))  # [T, B, 1, 1]
    y = g("Where", valid, h_seq, _scalar(g, 0.0))
    g("Reshape", g("Transpose", y, perm=[1, 0, 2, 3]), g.const([0, 0, -1]))
    g.rename_last("Y")


def build_function(config: CellConfig, opset: int = DEFAULT_OPSET) -> onnx.FunctionProto:
    """The model-local function `mplstm::MPLSTM` for one layer configuration."""
    g = _Builder("")
    inputs = list(config.inputs)
    if config.num_views == 1 and not config.peepholes:
        _lstm_layer(g, config)
    else:
        _scan_layer(g, config)
    function = helper.make_function(
        DOMAIN,
        OP_TYPE,
        inputs,
        list(OUTPUTS),
        g.nodes,
        [helper.make_opsetid("", opset)],
        attributes=list(ATTRIBUTES),
    )
    function.overload = config.overload
    return function


def node_attributes(hidden_size: int, config: CellConfig) -> dict[str, object]:
    """The node's attributes, in the order of ATTRIBUTES."""
    return {
        "hidden_size": hidden_size,
        "num_views": config.num_views,
        "direction": "bidirectional" if config.bidirectional else "forward",
        "recurrent_activation": config.recurrent_activation,
        "peepholes": int(config.peepholes),
        "plugin_namespace": STATE_PLUGIN_NAMESPACE if config.initial_state else PLUGIN_NAMESPACE,
        "plugin_version": PLUGIN_VERSION,
    }


def config_of(node: onnx.NodeProto) -> CellConfig:
    """The layer configuration an `mplstm::MPLSTM` node's attributes describe."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    missing = {"num_views", "direction", "recurrent_activation", "peepholes"} - set(attrs)
    if missing:
        raise ValueError(f"MPLSTM node {node.name!r} lacks attributes {sorted(missing)}")
    state = [name for name in node.input[len(INPUTS) + 1 :] if name]
    if len(state) not in (0, len(STATE_INPUTS)):
        raise ValueError(f"MPLSTM node {node.name!r} takes initial_h and initial_c, or neither")
    return CellConfig(
        num_views=int(attrs["num_views"]),
        bidirectional=attrs["direction"] == b"bidirectional",
        recurrent_activation=attrs["recurrent_activation"].decode(),
        peepholes=bool(attrs["peepholes"]),
        initial_state=bool(state),
    )


def make_mplstm_node(
    inputs: list[str],
    outputs: list[str],
    hidden_size: int,
    config: CellConfig,
    name: str | None = None,
) -> onnx.NodeProto:
    """The `mplstm::MPLSTM` node with the attributes the body and a TensorRT plugin read."""
    expected = len(config.inputs)
    if len(inputs) != expected or len(outputs) != len(OUTPUTS):
        raise ValueError(
            f"an MPLSTM node takes {expected} inputs and {len(OUTPUTS)} outputs, "
            f"got {len(inputs)} and {len(outputs)}"
        )
    node = helper.make_node(
        OP_TYPE, inputs, outputs, name=name, domain=DOMAIN, **node_attributes(hidden_size, config)
    )
    node.overload = config.overload
    return node


def add_function_bodies(model: onnx.ModelProto) -> None:
    """Give every mplstm::MPLSTM node of `model` its overload and its function body.

    Bodies use the model's own default-domain opset; bodies already there are replaced.
    """
    if model.ir_version < 10:
        raise ValueError(f"function overloads need ONNX IR >= 10, the model has {model.ir_version}")
    opsets = {o.domain: o.version for o in model.opset_import}
    if "" not in opsets:
        raise ValueError("the model imports no default-domain opset for the function bodies")
    configs = {}
    for node in model.graph.node:
        if (node.domain, node.op_type) == (DOMAIN, OP_TYPE):
            config = config_of(node)
            node.overload = config.overload
            configs[config.overload] = config
    kept = [f for f in model.functions if (f.domain, f.name) != (DOMAIN, OP_TYPE)]
    del model.functions[:]
    model.functions.extend(kept)
    model.functions.extend(build_function(c, opsets[""]) for c in configs.values())
    if configs and DOMAIN not in opsets:
        model.opset_import.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))


def single_layer_model(
    weights: LayerWeights,
    config: CellConfig,
    input_size: int,
    opset: int = DEFAULT_OPSET,
) -> onnx.ModelProto:
    """A model of one MPLSTM node, weights as initializers, dynamic batch and time axes.

    With `config.initial_state`, initial_h and initial_c [dirs, B, U] are graph inputs.
    """
    if weights.num_views != config.num_views:
        raise ValueError(f"weights for {weights.num_views} views, config for {config.num_views}")
    f32 = TensorProto.FLOAT
    names = ["W", "R", "bias"] + ([PEEPHOLE_INPUT] if config.peepholes else [])
    initializers = [
        numpy_helper.from_array(np.asarray(a, np.float32), n)
        for n, a in zip(names, weights.arrays(), strict=True)
    ]
    views, hidden = config.num_views, weights.hidden_size
    node_inputs = ["X", "view_mask", "lengths", *names]
    state_inputs = []
    if config.initial_state:
        node_inputs += [""] * (len(INPUTS) + 1 - len(node_inputs)) + list(STATE_INPUTS)
        state_inputs = [
            helper.make_tensor_value_info(n, f32, [config.dirs, "B", hidden]) for n in STATE_INPUTS
        ]
    node = make_mplstm_node(node_inputs, list(OUTPUTS), hidden, config)
    graph = helper.make_graph(
        [node],
        "mplstm_layer",
        [
            helper.make_tensor_value_info("X", f32, ["B", "T", views, input_size]),
            helper.make_tensor_value_info("view_mask", TensorProto.BOOL, ["B", views]),
            helper.make_tensor_value_info("lengths", TensorProto.INT64, ["B"]),
            *state_inputs,
        ],
        [
            helper.make_tensor_value_info("Y", f32, ["B", "T", config.dirs * hidden]),
            helper.make_tensor_value_info("Y_h", f32, [config.dirs, "B", hidden]),
            helper.make_tensor_value_info("Y_c", f32, [config.dirs, "B", hidden]),
        ],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        ir_version=IR_VERSION,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)],
    )
    add_function_bodies(model)
    return model
