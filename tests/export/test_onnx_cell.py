"""The `mplstm::MPLSTM` node's function body, run by ONNX Runtime, against the torch layer.

Tolerance: the fp32 ONNX model against the same torch layer run in fp64, max abs
difference 1e-5 on outputs and final states (observed ≤ 5e-6 with weights ~N(0, 0.7²),
which reach σ saturation; the torch layer in fp32 is as far from fp64, up to 9e-6).
ONNX Runtime runs the model with no custom-op library: it inlines the local function.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from mplstm.export import onnx_cell
from mplstm.export.onnx_cell import CellConfig, export_weights, single_layer_model
from mplstm.training.cell import MPLSTM

P, D, U = 3, 5, 6
ATOL = 1e-5


def _random_layer(seed: int, views: int = P, **options) -> MPLSTM:
    layer = MPLSTM(D, U, views, **options).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in layer.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.7)
    return layer


def _onnx_layer(layer: MPLSTM, initial_state: bool = False) -> onnx.ModelProto:
    params = {k: v.detach().numpy() for k, v in layer.state_dict().items()}
    weights = export_weights(
        params, 0, layer.bidirectional, layer.candidate_uses_forget_kernel, layer.peepholes
    )
    config = CellConfig(
        layer.num_views,
        layer.bidirectional,
        layer.recurrent_activation,
        layer.peepholes,
        initial_state,
    )
    return single_layer_model(weights, config, input_size=D)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _inputs(
    batch: int, steps: int, seed: int, masked: bool, uneven: bool, views: int = P
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, views), bool)
    if masked:
        mask = rng.random((batch, views)) < 0.6
        mask[np.arange(batch), rng.integers(0, views, batch)] = True  # one view at least
    lengths = rng.integers(1, steps + 1, batch) if uneven else np.full(batch, steps)
    lengths[0] = steps  # the longest sequence fills T, as a padded batch does
    x = rng.standard_normal((batch, steps, views, D)).astype(np.float32)
    return {"X": x, "view_mask": mask, "lengths": lengths.astype(np.int64)}


def _torch_outputs(layer: MPLSTM, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The torch layer's answer in fp64: the truth that fp32 runs are measured against."""
    state = None
    if "initial_h" in feed:
        state = tuple(torch.from_numpy(feed[n]).double() for n in onnx_cell.STATE_INPUTS)
    with torch.no_grad():
        y, (h, c) = copy.deepcopy(layer).double()(
            torch.from_numpy(feed["X"]).double(),
            torch.from_numpy(feed["view_mask"]),
            torch.from_numpy(feed["lengths"]),
            state=state,
        )
    return [y.numpy(), h.numpy(), c.numpy()]


OPTIONS = {
    "forward": {},
    "single_view": {"views": 1},
    "single_view_bidirectional_hard_sigmoid": {
        "views": 1,
        "bidirectional": True,
        "recurrent_activation": "hard_sigmoid",
    },
    "single_view_peepholes": {"views": 1, "peepholes": True},
    "bidirectional": {"bidirectional": True},
    "hard_sigmoid": {"recurrent_activation": "hard_sigmoid"},
    "hard_sigmoid_bidirectional": {"recurrent_activation": "hard_sigmoid", "bidirectional": True},
    "candidate_uses_forget_kernel": {"candidate_uses_forget_kernel": True},
    "peepholes": {"peepholes": True},
    "peepholes_bidirectional_hard": {
        "peepholes": True,
        "bidirectional": True,
        "recurrent_activation": "hard_sigmoid",
        "candidate_uses_forget_kernel": True,
    },
}


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_function_body_matches_torch_layer_for_any_batch_time_mask_and_lengths(
    options: dict,
) -> None:
    options = dict(options)
    views = options.pop("views", P)
    layer = _random_layer(seed=len(options), views=views, **options)
    session = _session(_onnx_layer(layer))  # one session: B and T are dynamic
    for seed, (batch, steps) in enumerate([(1, 4), (3, 7), (8, 9), (3, 2)]):
        for masked, uneven in [(False, False), (True, True)]:
            feed = _inputs(batch, steps, seed, masked, uneven, views)
            got = session.run(None, feed)
            want = _torch_outputs(layer, feed)
            for name, g, w in zip(onnx_cell.OUTPUTS, got, want, strict=True):
                assert g.shape == w.shape, name
                np.testing.assert_allclose(g, w, rtol=0, atol=ATOL, err_msg=name)


def test_outputs_past_each_sequence_end_are_zero_in_both_directions() -> None:
    session = _session(_onnx_layer(_random_layer(seed=1, bidirectional=True)))
    feed = _inputs(3, 6, seed=2, masked=False, uneven=False)
    feed["lengths"] = np.array([6, 2, 4], np.int64)
    y = session.run(None, feed)[0]
    for b, length in enumerate(feed["lengths"]):
        assert not y[b, length:].any()
        assert (np.abs(y[b, :length]).sum(axis=-1) > 0).all()


def test_masked_view_is_ignored_whatever_its_input() -> None:
    session = _session(_onnx_layer(_random_layer(seed=3)))
    feed = _inputs(2, 5, seed=4, masked=False, uneven=False)
    feed["view_mask"][:, 1] = False
    noisy = dict(feed, X=feed["X"].copy())
    noisy["X"][:, :, 1] = 1e6
    for a, b in zip(session.run(None, feed), session.run(None, noisy), strict=True):
        np.testing.assert_array_equal(a, b)


def test_model_is_one_mplstm_node_with_function_body_and_plugin_attributes() -> None:
    model = _onnx_layer(_random_layer(seed=0, bidirectional=True, peepholes=True))
    onnx.checker.check_model(model, full_check=True)
    (node,) = model.graph.node
    assert (node.domain, node.op_type) == ("mplstm", "MPLSTM")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["plugin_namespace"] == b"mplstm"
    assert attrs["plugin_version"] == b"1"
    assert attrs["hidden_size"] == U and attrs["num_views"] == P
    assert attrs["direction"] == b"bidirectional" and attrs["peepholes"] == 1
    (function,) = model.functions
    assert (function.domain, function.name) == (node.domain, node.op_type)
    assert function.overload == node.overload == "views3_bidirectional_sigmoid_peepholes"
    assert set(attrs) == set(function.attribute)
    assert list(function.input) == [*node.input[:3], "W", "R", "bias", "peephole_weights"]
    ops = [n.op_type for n in function.node]
    assert ops.count("Scan") == 1 and "MatMul" in ops
    assert {o.domain: o.version for o in function.opset_import} == {
        o.domain: o.version for o in model.opset_import if o.domain == ""
    }


def test_node_with_wrong_input_count_is_refused() -> None:
    with pytest.raises(ValueError, match="takes 7 inputs"):
        onnx_cell.make_mplstm_node(
            ["X", "m", "l", "W", "R", "b"],
            list(onnx_cell.OUTPUTS),
            U,
            CellConfig(P, peepholes=True),
        )


@pytest.mark.parametrize("bidirectional", [False, True], ids=["forward", "bidirectional"])
def test_each_scan_step_runs_one_recurrent_matmul_per_direction_and_one_sigmoid(
    bidirectional: bool,
) -> None:
    # DESIGN.md §6: per-step node overhead dominates on the CPU, so each step runs one
    # recurrent GEMM per direction and one Sigmoid over every view's gates. The candidate's
    # tanh comes from that Sigmoid, so the step's only Tanh is the one on c_t.
    function = onnx_cell.build_function(CellConfig(P, bidirectional=bidirectional))
    (scan,) = [n for n in function.node if n.op_type == "Scan"]
    (body,) = [onnx.helper.get_attribute_value(a) for a in scan.attribute if a.name == "body"]
    ops = [n.op_type for n in body.node]
    assert ops.count("MatMul") == (2 if bidirectional else 1)
    assert ops.count("Sigmoid") == 1
    assert ops.count("Tanh") == 1


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_function_body_starts_from_the_initial_state_as_the_torch_layer_does(
    options: dict,
) -> None:
    options = dict(options)
    views = options.pop("views", P)
    layer = _random_layer(seed=len(options) + 7, views=views, **options)
    session = _session(_onnx_layer(layer, initial_state=True))
    dirs = 2 if layer.bidirectional else 1
    for seed, (batch, steps) in enumerate([(1, 3), (4, 6)]):
        feed = _inputs(batch, steps, seed, masked=True, uneven=True, views=views)
        rng = np.random.default_rng(seed + 10)
        for name in onnx_cell.STATE_INPUTS:
            feed[name] = rng.standard_normal((dirs, batch, U)).astype(np.float32)
        got = session.run(None, feed)
        want = _torch_outputs(layer, feed)
        for name, g, w in zip(onnx_cell.OUTPUTS, got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=0, atol=ATOL, err_msg=name)


def test_chunks_carrying_the_state_through_the_node_give_the_whole_sequence() -> None:
    layer = _random_layer(seed=5)
    whole = _session(_onnx_layer(layer))
    stepper = _session(_onnx_layer(layer, initial_state=True))
    feed = _inputs(3, 8, seed=6, masked=True, uneven=False)
    y, h_n, c_n = whole.run(None, feed)
    h = c = np.zeros((1, 3, U), np.float32)
    outputs = []
    for start, stop in ((0, 1), (1, 4), (4, 8)):
        chunk = dict(feed, X=feed["X"][:, start:stop], lengths=np.full(3, stop - start))
        out, h, c = stepper.run(None, {**chunk, "initial_h": h, "initial_c": c})
        outputs.append(out)
    np.testing.assert_allclose(np.concatenate(outputs, axis=1), y, rtol=0, atol=ATOL)
    np.testing.assert_allclose(h, h_n, rtol=0, atol=ATOL)
    np.testing.assert_allclose(c, c_n, rtol=0, atol=ATOL)


def test_a_state_node_names_its_overload_and_leaves_the_peephole_slot_empty() -> None:
    model = _onnx_layer(_random_layer(seed=0), initial_state=True)
    onnx.checker.check_model(model, full_check=True)
    (node,) = model.graph.node
    assert list(node.input[6:]) == ["", "initial_h", "initial_c"]
    assert node.overload == "views3_forward_sigmoid_state"
    assert onnx_cell.config_of(node).initial_state
