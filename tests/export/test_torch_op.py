"""torch.onnx.export (dynamo) of a model with MPLSTM layers: one opaque node per layer.

Parity tolerance: the exported fp32 model in ONNX Runtime against the torch model run
in fp64, max abs difference 1e-5, on a batch and length different from the traced ones.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import Tensor, nn

from mplstm.export.torch_op import ExportableMPLSTM, export_onnx, exportable
from mplstm.training.cell import MPLSTM

VIEWS, FEATURES, HIDDEN, CLASSES, LAYERS = 3, 6, 5, 4, 2
ATOL = 1e-5


class TinyNet(nn.Module):
    """Per-view embedding → 2-layer bidirectional MPLSTM → per-step classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(FEATURES, 8)
        self.rnn = MPLSTM(8, HIDDEN, VIEWS, num_layers=LAYERS, bidirectional=True)
        self.head = nn.Linear(2 * HIDDEN, CLASSES)

    def forward(self, x: Tensor, view_mask: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        y, (h_n, _) = self.rnn(self.embed(x), view_mask, lengths)
        return self.head(y), h_n


def _inputs(batch: int, steps: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch, VIEWS, generator=gen) < 0.6
    mask[:, 0] = True
    lengths = torch.randint(1, steps + 1, (batch,), generator=gen)
    lengths[0] = steps
    return torch.randn(batch, steps, VIEWS, FEATURES, generator=gen), mask, lengths


@pytest.fixture(scope="module")
def exported() -> tuple[TinyNet, onnx.ModelProto]:
    torch.manual_seed(0)
    net = TinyNet().eval()
    batch, steps = torch.export.Dim("batch"), torch.export.Dim("time")
    model = export_onnx(
        net,
        _inputs(2, 4, seed=0),
        input_names=["x", "view_mask", "lengths"],
        output_names=["logits", "h_n"],
        dynamic_shapes={"x": {0: batch, 1: steps}, "view_mask": {0: batch}, "lengths": {0: batch}},
    )
    return net, model


def test_export_gives_one_mplstm_node_per_layer_with_body_and_plugin_attributes(
    exported: tuple[TinyNet, onnx.ModelProto],
) -> None:
    _, model = exported
    onnx.checker.check_model(model, full_check=True)
    nodes = [n for n in model.graph.node if n.domain == "mplstm"]
    assert [n.op_type for n in nodes] == ["MPLSTM"] * LAYERS
    assert not any(n.op_type == "Scan" for n in model.graph.node)  # not inlined
    # One body per layer configuration: the first layer reads VIEWS views, the second one.
    bodies = {f.overload: f for f in model.functions}
    assert (
        [n.overload for n in nodes]
        == list(bodies)
        == [
            f"views{VIEWS}_bidirectional_sigmoid",
            "views1_bidirectional_sigmoid",
        ]
    )
    opsets = {o.domain: o.version for o in model.opset_import}
    assert opsets["mplstm"] == 1
    for function, recurrence in zip(bodies.values(), ["Scan", "LSTM"], strict=True):
        assert (function.domain, function.name) == ("mplstm", "MPLSTM")
        assert recurrence in [n.op_type for n in function.node]  # one view: ONNX's LSTM
        assert [(o.domain, o.version) for o in function.opset_import] == [("", opsets[""])]
    for node, views in zip(nodes, [VIEWS, 1], strict=True):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["plugin_namespace"] == b"mplstm" and attrs["plugin_version"] == b"1"
        assert attrs["hidden_size"] == HIDDEN and attrs["num_views"] == views
        assert attrs["direction"] == b"bidirectional"


def test_exported_model_matches_torch_on_other_batch_and_length(
    exported: tuple[TinyNet, onnx.ModelProto],
) -> None:
    net, model = exported
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    reference = copy.deepcopy(net).double()
    for batch, steps, seed in [(5, 7, 1), (1, 3, 2)]:
        x, mask, lengths = _inputs(batch, steps, seed)
        got = session.run(
            None, {"x": x.numpy(), "view_mask": mask.numpy(), "lengths": lengths.numpy()}
        )
        with torch.no_grad():
            want = reference(x.double(), mask, lengths)
        for g, w in zip(got, want, strict=True):
            assert g.shape == tuple(w.shape)
            np.testing.assert_allclose(g, w.numpy(), rtol=0, atol=ATOL)


def test_exportable_swaps_layers_keeps_outputs_and_restores_them() -> None:
    torch.manual_seed(1)
    net = TinyNet().eval()
    args = _inputs(3, 5, seed=3)
    with torch.no_grad():
        want = net(*args)
        with exportable(net) as module:
            assert isinstance(module.rnn, ExportableMPLSTM)
            got = module(*args)
    assert isinstance(net.rnn, MPLSTM)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-6)


class StatefulNet(nn.Module):
    """A 2-layer unidirectional MPLSTM that takes and returns (h, c): a step model's core."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = MPLSTM(FEATURES, HIDDEN, VIEWS, num_layers=LAYERS)

    def forward(
        self, x: Tensor, view_mask: Tensor, h: Tensor, c: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        y, (h_n, c_n) = self.rnn(x, view_mask, state=(h, c))
        return y, h_n, c_n


def test_exported_state_inputs_carry_chunks_into_the_whole_sequence() -> None:
    torch.manual_seed(2)
    net = StatefulNet().eval()
    # Two tensors: the exporter would read one tensor passed twice as one input.
    h0, c0 = torch.zeros(LAYERS, 2, HIDDEN), torch.zeros(LAYERS, 2, HIDDEN)
    batch, steps = torch.export.Dim("batch"), torch.export.Dim("time")
    model = export_onnx(
        net,
        (torch.randn(2, 4, VIEWS, FEATURES), torch.ones(2, VIEWS, dtype=torch.bool), h0, c0),
        input_names=["x", "view_mask", "h", "c"],
        output_names=["y", "h_n", "c_n"],
        dynamic_shapes={
            "x": {0: batch, 1: steps},
            "view_mask": {0: batch},
            "h": {1: batch},
            "c": {1: batch},
        },
    )
    nodes = [n for n in model.graph.node if n.domain == "mplstm"]
    assert [n.overload for n in nodes] == [
        f"views{VIEWS}_forward_sigmoid_state",
        "views1_forward_sigmoid_state",
    ]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x, mask, _ = _inputs(3, 7, seed=4)
    with torch.no_grad():
        want, (h_want, c_want) = copy.deepcopy(net.rnn).double()(x.double(), mask)
    h = c = np.zeros((LAYERS, 3, HIDDEN), np.float32)
    outputs = []
    for start, stop in ((0, 1), (1, 4), (4, 7)):
        feed = {"x": x[:, start:stop].numpy(), "view_mask": mask.numpy(), "h": h, "c": c}
        y, h, c = session.run(None, feed)
        outputs.append(y)
    np.testing.assert_allclose(np.concatenate(outputs, axis=1), want.numpy(), rtol=0, atol=ATOL)
    np.testing.assert_allclose(h, h_want.numpy(), rtol=0, atol=ATOL)
    np.testing.assert_allclose(c, c_want.numpy(), rtol=0, atol=ATOL)
