"""Export MPLSTM layers through torch.onnx.export (dynamo) as opaque `mplstm::MPLSTM` nodes.

DESIGN.md §6: a custom_translation_table entry that emits a node with a body is
always inlined by the exporter, so the translation emits the bare custom-domain
node and the function body (`onnx_cell.build_function`) is appended to
`model.functions` afterwards. The pieces:

- `mplstm_layer`, a torch custom op (`torch.ops.mplstm.mplstm_layer`) for one layer
  in the node's contract (export-layout weights). Its eager implementation runs the
  torch layer's own math (`mplstm.training.cell`), so exported and eager models agree.
- `ExportableMPLSTM`, an `nn.Module` with MPLSTM's interface that calls the op once
  per layer, its weights converted once by `onnx_cell.export_weights`.
- `exportable(model)`, a context manager that swaps every MPLSTM in a model for
  an ExportableMPLSTM and back.
- `TRANSLATION_TABLE` for `torch.onnx.export(..., custom_translation_table=...)`, then
  `onnx_cell.add_function_bodies(model_proto)`; `export_onnx` does all of it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import onnx
import torch
from onnx.defs import OpSchema
from onnxscript.values import Op, Opset
from torch import Tensor, nn

from mplstm.export import onnx_cell
from mplstm.training.cell import (
    MPLSTM,
    input_projection,
    prepare_gates,
    recurrence,
)


@torch.library.custom_op("mplstm::mplstm_layer", mutates_args=())
def mplstm_layer(
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
    """One MP-LSTM layer in the `mplstm::MPLSTM` node contract (see onnx_cell).

    x [B, T, P, D], view_mask [B, P] bool, lengths [B]; weights as export_weights
    gives them; initial_h, initial_c [dirs, B, U] or None (zeros)
    → (Y [B, T, dirs*U], Y_h [dirs, B, U], Y_c [dirs, B, U]).
    """
    steps, hidden = x.shape[1], weight_hh.shape[1]
    valid = (torch.arange(steps, device=x.device)[:, None] < lengths[None, :]).unsqueeze(-1)
    # prepare_gates() scales the projection's g block by 2 itself: undo export_weights'
    # factor 2 on the input side first (exact in floating point).
    g_half = torch.ones(4 * hidden, dtype=x.dtype, device=x.device)
    g_half[2 * hidden : 3 * hidden] = 0.5
    results = []
    for d in range(2 if bidirectional else 1):
        proj = input_projection(x, (weight_ih[d] * g_half).transpose(1, 2), bias[d] * g_half)
        results.append(
            recurrence(
                prepare_gates(proj, view_mask),
                weight_hh[d],
                None if peepholes is None else peepholes[d],
                valid,
                reverse=d == 1,
                hard=recurrent_activation == "hard_sigmoid",
                h0=None if initial_h is None else initial_h[d],
                c0=None if initial_c is None else initial_c[d],
            )
        )
    output = torch.cat([r[0] for r in results], dim=-1)  # [B, T, dirs*U]
    return output, torch.stack([r[1] for r in results]), torch.stack([r[2] for r in results])


@mplstm_layer.register_fake
def _mplstm_layer_shapes(
    x,
    view_mask,
    lengths,
    weight_ih,
    weight_hh,
    bias,
    peepholes,
    bidirectional,
    activation,
    initial_h=None,
    initial_c=None,
):
    dirs, hidden = weight_hh.shape[0], weight_hh.shape[1]
    batch, steps = x.shape[0], x.shape[1]
    return (
        x.new_empty(batch, steps, dirs * hidden),
        x.new_empty(dirs, batch, hidden),
        x.new_empty(dirs, batch, hidden),
    )


class ExportableMPLSTM(nn.Module):
    """An MPLSTM's forward, one `mplstm_layer` op per layer, on export-layout weights."""

    def __init__(self, layer: MPLSTM) -> None:
        super().__init__()
        self.layer = layer  # kept to put it back; its own parameters are not used
        params = {k: v.detach().cpu().numpy() for k, v in layer.state_dict().items()}
        device = next(layer.parameters()).device
        for k in range(layer.num_layers):
            weights = onnx_cell.export_weights(
                params, k, layer.bidirectional, layer.candidate_uses_forget_kernel, layer.peepholes
            )
            for name, array in zip(("W", "R", "bias", "peep"), weights.arrays(), strict=False):
                self.register_buffer(f"{name}_l{k}", torch.from_numpy(array).to(device))

    def forward(
        self,
        x: Tensor,
        view_mask: Tensor | None = None,
        lengths: Tensor | None = None,
        state: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Same inputs and outputs as MPLSTM.forward (eval mode: no dropout)."""
        layer = self.layer
        if not layer.batch_first:
            x = x.transpose(0, 1)
        batch, steps = x.shape[0], x.shape[1]
        if view_mask is None:
            view_mask = torch.ones(batch, layer.num_views, dtype=torch.bool, device=x.device)
        if lengths is None:
            lengths = torch.full((batch,), steps, dtype=torch.int64, device=x.device)
        mask, lengths = view_mask.to(torch.bool), lengths.to(torch.int64)
        out, h_n, c_n = x, [], []
        dirs = 2 if layer.bidirectional else 1
        for k in range(layer.num_layers):
            if k > 0:
                out = out.unsqueeze(2)  # the joint sequence is one "view"
                mask = torch.ones(batch, 1, dtype=torch.bool, device=x.device)
            rows = slice(k * dirs, (k + 1) * dirs)
            initial = (None, None) if state is None else (state[0][rows], state[1][rows])
            out, h, c = torch.ops.mplstm.mplstm_layer(
                out,
                mask,
                lengths,
                getattr(self, f"W_l{k}"),
                getattr(self, f"R_l{k}"),
                getattr(self, f"bias_l{k}"),
                getattr(self, f"peep_l{k}", None),
                layer.bidirectional,
                layer.recurrent_activation,
                *initial,
            )
            h_n.append(h)
            c_n.append(c)
        if not layer.batch_first:
            out = out.transpose(0, 1)
        return out, (torch.cat(h_n), torch.cat(c_n))


@contextmanager
def exportable(model: nn.Module) -> Iterator[nn.Module]:
    """Swap every MPLSTM in `model` for an ExportableMPLSTM; yields the module to export.

    Weights are converted on entry: change them before entering, not inside.
    """
    if isinstance(model, MPLSTM):
        yield ExportableMPLSTM(model).eval()
        return
    swapped: list[tuple[nn.Module, str, MPLSTM]] = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, MPLSTM):
                setattr(parent, name, ExportableMPLSTM(child))
                swapped.append((parent, name, child))
    try:
        yield model
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


def _op_schema() -> OpSchema:
    """The node's signature, for onnxscript: no schema is registered for a custom domain."""
    param = OpSchema.FormalParameter
    optional = OpSchema.FormalParameterOption.Optional
    inputs = [
        param("X", "T"),
        param("view_mask", "tensor(bool)"),
        param("lengths", "tensor(int64)"),
        param("W", "T"),
        param("R", "T"),
        param("bias", "T"),
        param(onnx_cell.PEEPHOLE_INPUT, "T", param_option=optional),
        *(param(name, "T", param_option=optional) for name in onnx_cell.STATE_INPUTS),
    ]
    attr_types = {
        "hidden_size": OpSchema.AttrType.INT,
        "num_views": OpSchema.AttrType.INT,
        "peepholes": OpSchema.AttrType.INT,
    }
    return OpSchema(
        onnx_cell.OP_TYPE,
        onnx_cell.DOMAIN,
        onnx_cell.DOMAIN_VERSION,
        inputs=inputs,
        outputs=[param(name, "T") for name in onnx_cell.OUTPUTS],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "float tensors")],
        attributes=[
            OpSchema.Attribute(name, attr_types.get(name, OpSchema.AttrType.STRING), name)
            for name in onnx_cell.ATTRIBUTES
        ],
    )


_MPLSTM_OP = Op(Opset(onnx_cell.DOMAIN, onnx_cell.DOMAIN_VERSION), onnx_cell.OP_TYPE, _op_schema())


def _translate_layer(
    x,
    view_mask,
    lengths,
    weight_ih,
    weight_hh,
    bias,
    peepholes,
    bidirectional,
    activation,
    initial_h=None,
    initial_c=None,
):
    """mplstm_layer → one bare mplstm::MPLSTM node (its body is added after export)."""
    views = int(weight_ih.shape[1])
    config = onnx_cell.CellConfig(views, bidirectional, activation, peepholes is not None)
    attrs = onnx_cell.node_attributes(int(weight_hh.shape[1]), config)
    state = () if initial_h is None else (initial_h, initial_c)
    return _MPLSTM_OP(x, view_mask, lengths, weight_ih, weight_hh, bias, peepholes, *state, **attrs)


TRANSLATION_TABLE = {torch.ops.mplstm.mplstm_layer.default: _translate_layer}


def export_onnx(
    model: nn.Module,
    args: tuple[Any, ...],
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_shapes: Any = None,
    opset_version: int | None = None,
) -> onnx.ModelProto:
    """torch.onnx.export (dynamo) with every MPLSTM layer as one mplstm::MPLSTM node."""
    with exportable(model.eval()) as module:
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_shapes=dynamic_shapes,
            opset_version=opset_version,
            custom_translation_table=TRANSLATION_TABLE,
            verbose=False,
        )
    proto = program.model_proto
    onnx_cell.add_function_bodies(proto)
    return proto
