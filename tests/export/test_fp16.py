"""The fp16 twin of an exported model (`model.fp16.onnx`): types, structure, parity with fp32.

Two runtimes check the numbers, because ONNX Runtime's CPU provider (1.31, x86) has fp16
kernels only for data movement (Shape, Reshape, Transpose, Concat, Split, Squeeze,
Unsqueeze, Expand, GatherElements, ReverseSequence, Scan): it runs Conv, MaxPool,
BatchNormalization, MatMul, Gemm, Add/Sub/Mul/Div, Sigmoid, Tanh, Relu, Softmax,
ReduceMean and Where in fp32 behind Casts it inserts itself, so on the CPU it measures
the fp16 rounding of weights, not fp16 arithmetic. The ONNX reference evaluator runs
every op in numpy float16. Tolerance for both, on logits and probabilities against the
fp32 model in ONNX Runtime: 5e-3 absolute (measured 2e-4 in ORT and 4e-4 in the
reference evaluator on the small model below).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import AttributeProto, TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from mplstm.export import onnx_cell
from mplstm.export.fp16 import to_fp16
from mplstm.export.package import PackagedModel
from mplstm.export.torch_op import export_onnx
from mplstm.training.cell import MPLSTM
from mplstm.training.models import get_model

ATOL = 5e-3
VIEWS = 3
# Batch and length differ from the traced (2, 6); masks drop views.
VIEW_MASK = np.array([[1, 1, 1], [1, 0, 1], [0, 0, 1]], dtype=bool)


@pytest.fixture(scope="module")
def fp32_model() -> onnx.ModelProto:
    """A small mplstm-family model exported as the package's model.onnx would be."""
    torch.manual_seed(0)
    model = get_model(
        "mplstm", num_classes=4, num_views=VIEWS, widths=(8, 8, 16), hidden_size=16
    ).eval()
    clip = torch.randint(0, 255, (2, VIEWS, 6, 1, 32, 32), dtype=torch.uint8)
    mask = torch.ones(2, VIEWS, dtype=torch.bool)
    batch = torch.export.Dim("batch", max=64)
    time = torch.export.Dim("time", min=2, max=200)
    return export_onnx(
        PackagedModel(model),
        (clip, mask),
        input_names=["clip", "view_mask"],
        output_names=["logits", "probabilities"],
        dynamic_shapes={"clip": {0: batch, 2: time}, "view_mask": {0: batch}},
    )


@pytest.fixture(scope="module")
def fp16_model(fp32_model: onnx.ModelProto) -> onnx.ModelProto:
    return to_fp16(fp32_model)


@pytest.fixture(scope="module")
def feeds() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    clip = rng.integers(0, 256, (3, VIEWS, 9, 1, 32, 32), dtype=np.uint8)
    return {"clip": clip, "view_mask": VIEW_MASK}


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, feeds)


def _reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    # Sigmoid's reference evaluates both branches of a np.where: saturated (±inf) gates
    # of masked views warn about the discarded one.
    with np.errstate(invalid="ignore", over="ignore"):
        return ReferenceEvaluator(model).run(None, feeds)


def _graphs(model: onnx.ModelProto) -> Iterator[tuple[str, list[onnx.NodeProto]]]:
    """(where, nodes) of the main graph, every subgraph and every model-local function."""

    def walk(where: str, nodes: list[onnx.NodeProto]) -> Iterator[tuple[str, list]]:
        yield where, nodes
        for node in nodes:
            for attr in node.attribute:
                if attr.type == AttributeProto.GRAPH:
                    yield from walk(f"{where}/{node.op_type}", list(attr.g.node))

    yield from walk("graph", list(model.graph.node))
    for function in model.functions:
        yield from walk(f"function {function.name}:{function.overload}", list(function.node))


def _float32_values(model: onnx.ModelProto) -> list[str]:
    """Everything that still makes float32 inside the model, by where it is."""
    found = [f"initializer {i.name}" for i in model.graph.initializer if i.data_type == 1]
    for where, nodes in _graphs(model):
        for node in nodes:
            for attr in node.attribute:
                if attr.type == AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
                    found.append(f"{where}: {node.op_type} {node.output[0]}")
                if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                    found.append(f"{where}: Cast to float {node.output[0]}")
    return found


def _elem_types(values: list[onnx.ValueInfoProto]) -> dict[str, int]:
    return {v.name: v.type.tensor_type.elem_type for v in values}


def test_fp16_model_passes_the_full_onnx_check_with_float16_function_bodies(
    fp16_model: onnx.ModelProto,
) -> None:
    # full_check type-infers through the model-local MPLSTM body and its Scan body.
    onnx.checker.check_model(fp16_model, full_check=True)


def test_fp16_model_keeps_the_client_facing_input_and_output_types(
    fp32_model: onnx.ModelProto, fp16_model: onnx.ModelProto
) -> None:
    assert _elem_types(fp16_model.graph.input) == {
        "clip": TensorProto.UINT8,
        "view_mask": TensorProto.BOOL,
    }
    assert _elem_types(fp16_model.graph.output) == _elem_types(fp32_model.graph.output)
    assert set(_elem_types(fp16_model.graph.output).values()) == {TensorProto.FLOAT}


def test_fp16_model_computes_in_float16_with_a_cast_back_only_at_the_outputs(
    fp16_model: onnx.ModelProto,
) -> None:
    outputs = {o.name for o in fp16_model.graph.output}
    left = [f for f in _float32_values(fp16_model) if f.split()[-1] not in outputs]
    assert left == []
    halves = [i for i in fp16_model.graph.initializer if i.data_type == TensorProto.FLOAT16]
    assert halves, "no float16 weights"


def test_fp16_model_keeps_one_mplstm_node_with_its_plugin_attributes_and_body(
    fp16_model: onnx.ModelProto,
) -> None:
    nodes = [n for n in fp16_model.graph.node if n.domain == onnx_cell.DOMAIN]
    assert [n.op_type for n in nodes] == [onnx_cell.OP_TYPE]
    attrs = {a.name: helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert attrs["plugin_namespace"] == onnx_cell.PLUGIN_NAMESPACE.encode()
    assert attrs["plugin_version"] == onnx_cell.PLUGIN_VERSION.encode()
    bodies = {(f.domain, f.name, f.overload) for f in fp16_model.functions}
    assert (onnx_cell.DOMAIN, onnx_cell.OP_TYPE, nodes[0].overload) in bodies


def test_fp16_model_in_onnx_runtime_matches_fp32_on_new_shapes_with_masked_views(
    fp32_model: onnx.ModelProto, fp16_model: onnx.ModelProto, feeds: dict[str, np.ndarray]
) -> None:
    expected = _ort(fp32_model, feeds)
    got = _ort(fp16_model, feeds)
    _assert_close(expected, got)


def test_fp16_model_in_float16_arithmetic_matches_fp32_within_tolerance(
    fp32_model: onnx.ModelProto, fp16_model: onnx.ModelProto, feeds: dict[str, np.ndarray]
) -> None:
    expected = _ort(fp32_model, feeds)
    got = _reference(fp16_model, feeds)
    _assert_close(expected, got)


def _assert_close(expected: list[np.ndarray], got: list[np.ndarray]) -> None:
    for want, have in zip(expected, got, strict=True):
        assert have.dtype == np.float32
        np.testing.assert_allclose(have, want, atol=ATOL, rtol=0)
    logits, half_logits = expected[0], got[0]
    # Argmax must agree wherever the top two fp32 logits are further apart than fp16 noise.
    top2 = np.sort(logits, axis=-1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * ATOL
    assert clear.any()
    np.testing.assert_array_equal(logits.argmax(-1)[clear], half_logits.argmax(-1)[clear])


@pytest.mark.parametrize(
    "config",
    [
        onnx_cell.CellConfig(VIEWS, bidirectional=True),
        onnx_cell.CellConfig(VIEWS, recurrent_activation="hard_sigmoid", peepholes=True),
        onnx_cell.CellConfig(1),  # the body is ONNX's LSTM op
    ],
    ids=lambda c: c.overload,
)
def test_fp16_layer_keeps_float32_io_and_its_body_matches_fp32_in_float16(
    config: onnx_cell.CellConfig,
) -> None:
    """A float32 graph input (feature mode) stays float32: cast to fp16 inside."""
    torch.manual_seed(0)
    dim, hidden = 8, 12
    layer = MPLSTM(
        dim,
        hidden,
        config.num_views,
        bidirectional=config.bidirectional,
        recurrent_activation=config.recurrent_activation,
        peepholes=config.peepholes,
    ).eval()
    params = {k: v.numpy() for k, v in layer.state_dict().items()}
    weights = onnx_cell.export_weights(params, 0, config.bidirectional, peepholes=config.peepholes)
    fp32 = onnx_cell.single_layer_model(weights, config, dim)
    fp16 = to_fp16(fp32)
    onnx.checker.check_model(fp16, full_check=True)
    assert _elem_types(fp16.graph.input) == _elem_types(fp32.graph.input)
    assert _elem_types(fp16.graph.output) == _elem_types(fp32.graph.output)

    rng = np.random.default_rng(2)
    batch, steps = 3, 7
    feeds = {
        "X": rng.standard_normal((batch, steps, config.num_views, dim)).astype(np.float32),
        "view_mask": VIEW_MASK[:, : config.num_views] | (config.num_views == 1),
        "lengths": np.array([7, 4, 1], dtype=np.int64),
    }
    # The reference evaluator's LSTM ignores sequence_lens: full lengths for it.
    full = {**feeds, "lengths": np.full(batch, steps, dtype=np.int64)}
    for run, inputs in ((_ort, feeds), (_reference, full)):
        expected, got = _ort(fp32, inputs), run(fp16, inputs)
        for want, have in zip(expected, got, strict=True):
            assert have.dtype == np.float32
            np.testing.assert_allclose(have, want, atol=ATOL, rtol=0)


def test_fp16_keeps_inputs_that_onnx_types_float32_in_float32() -> None:
    """Resize's scales are tensor(float) whatever X's type: a Cast back goes in front."""
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    graph = helper.make_graph(
        [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")],
        "resize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])],
        initializer=[scales],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    fp16 = to_fp16(model)
    onnx.checker.check_model(fp16, full_check=True)
    resize = next(n for n in fp16.graph.node if n.op_type == "Resize")
    cast = next(n for n in fp16.graph.node if n.output[0] == resize.input[2])
    assert cast.op_type == "Cast" and cast.attribute[0].i == TensorProto.FLOAT
    x = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
    np.testing.assert_array_equal(_ort(fp16, {"x": x})[0], _ort(model, {"x": x})[0])


def test_fp16_clips_weights_beyond_the_float16_range_instead_of_making_them_infinite() -> None:
    big = numpy_helper.from_array(np.array([1e6, -1e6, 1.5], np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["y"])],
        "mul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        initializer=[big],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    halved = numpy_helper.to_array(to_fp16(model).graph.initializer[0])
    assert halved.dtype == np.float16
    np.testing.assert_array_equal(halved, np.array([65504, -65504, 1.5], np.float16))
