"""The TensorRT AOT plugin: registration, an engine built from a one-node ONNX model, parity.

The engine tests (marked gpu) need an NVIDIA GPU and TensorRT >= 10.9 (the GPU image);
elsewhere they skip with the reason in the test report. The engine is checked to hold the
plugin (not the node's inlined function body) and to run in a fresh process that never
registers it: the AOT kernel lives inside the engine.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from mplstm.export import onnx_cell, trt_plugin
from mplstm.inference.parity import TOLERANCES
from mplstm.training.cell import MPLSTM

BATCH, STEPS, VIEWS, DIM, HIDDEN = 5, 6, 3, 20, 48
MAX_BATCH, MAX_STEPS = 8, 10
VIEW_MASK = np.array([[1, 1, 1], [1, 0, 1], [0, 0, 1], [1, 1, 0], [1, 1, 1]], dtype=bool)
LENGTHS = np.array([6, 3, 1, 5, 4], dtype=np.int64)


def _tensorrt() -> ModuleType:
    """The tensorrt module, or a skip that says why (visible in the test report)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU: TensorRT plugin tests run on a GPU host (the GPU image)")
    return pytest.importorskip(
        "tensorrt", reason="TensorRT is not installed (not on PyPI alone): run in the GPU image"
    )


def _layer(bidirectional: bool) -> MPLSTM:
    torch.manual_seed(0)
    return MPLSTM(DIM, HIDDEN, VIEWS, bidirectional=bidirectional).eval()


def _onnx_model(layer: MPLSTM, dtype: np.dtype) -> onnx.ModelProto:
    """One mplstm::MPLSTM node (onnx_cell.single_layer_model), in fp32 or fp16, aot=1."""
    params = {k: v.numpy() for k, v in layer.state_dict().items()}
    weights = onnx_cell.export_weights(params, 0, layer.bidirectional)
    config = onnx_cell.CellConfig(VIEWS, layer.bidirectional)
    model = onnx_cell.single_layer_model(weights, config, DIM)
    # The TensorRT ONNX parser takes the AOT implementation where the node says aot=1.
    model.graph.node[0].attribute.append(helper.make_attribute("aot", 1))
    if dtype == np.float16:
        # TRT 11 networks are strongly typed: an fp16 engine comes from an fp16 graph.
        for init in model.graph.initializer:
            init.CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(init).astype(dtype), init.name)
            )
        for value in [*model.graph.input, *model.graph.output]:
            if value.type.tensor_type.elem_type == TensorProto.FLOAT:
                value.type.tensor_type.elem_type = TensorProto.FLOAT16
    return model


def _build_engine(model: onnx.ModelProto) -> tuple[bytes, list[str]]:
    """Serialized engine and the network's layer types."""
    trt = _tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):  # TRT 10; default in 11
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model.SerializeToString()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise AssertionError(f"ONNX parse failed: {errors}")
    layer_types = [str(network.get_layer(i).type) for i in range(network.num_layers)]
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    # (min, opt, max) per input: dynamic batch and time axes.
    shapes = {
        "X": ((1, 1, VIEWS, DIM), (BATCH, STEPS, VIEWS, DIM), (MAX_BATCH, MAX_STEPS, VIEWS, DIM)),
        "view_mask": ((1, VIEWS), (BATCH, VIEWS), (MAX_BATCH, VIEWS)),
        "lengths": ((1,), (BATCH,), (MAX_BATCH,)),
    }
    for name, (low, opt, high) in shapes.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    assert plan is not None, "engine build failed (see the TensorRT log above)"
    return bytes(plan), layer_types


# Runs an engine with the TensorRT runtime and torch CUDA buffers; no mplstm import, so no
# Python plugin definition exists in that process.
_RUNNER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorrt as trt
    import torch

    plan, inputs, out = sys.argv[1], np.load(sys.argv[2]), sys.argv[3]
    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(open(plan, "rb").read())
    context = engine.create_execution_context()
    buffers = {}
    for name in ("X", "view_mask", "lengths"):
        buffers[name] = torch.from_numpy(inputs[name]).cuda()
        context.set_input_shape(name, tuple(buffers[name].shape))
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if name not in buffers:
            dtype = torch.float16 if inputs["X"].dtype == np.float16 else torch.float32
            buffers[name] = torch.empty(tuple(context.get_tensor_shape(name)), dtype=dtype,
                                        device="cuda")
        context.set_tensor_address(name, buffers[name].data_ptr())
    stream = torch.cuda.Stream()
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    np.savez(out, **{n: buffers[n].cpu().numpy() for n in ("Y", "Y_h", "Y_c")})
    """
)


def test_register_without_tensorrt_says_where_to_get_it() -> None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(trt_plugin.TensorRTUnavailableError, match="GPU image"):
            trt_plugin.register()
    else:
        pytest.skip("TensorRT is installed here")


def test_plugin_spec_refuses_peephole_layers_which_have_a_seventh_input() -> None:
    with pytest.raises(ValueError, match="peephole"):
        trt_plugin.build_spec(torch.float32, 16, 3, "forward", "sigmoid", 1, 8)


def test_plugin_spec_is_the_fused_kernel_for_the_node_attributes() -> None:
    spec = trt_plugin.build_spec(torch.float16, 256, 3, "bidirectional", "hard_sigmoid", 0, 2048)
    assert (spec.fused, spec.dirs, spec.hard_sigmoid, spec.input_size) == (True, 2, True, 2048)


def test_a_node_with_initial_state_names_the_state_plugin_and_its_kernel_takes_h0_c0() -> None:
    layer = _layer(bidirectional=False)
    params = {k: v.numpy() for k, v in layer.state_dict().items()}
    config = onnx_cell.CellConfig(VIEWS, initial_state=True)
    model = onnx_cell.single_layer_model(onnx_cell.export_weights(params, 0, False), config, DIM)
    attrs = {a.name: helper.get_attribute_value(a) for a in model.graph.node[0].attribute}
    assert attrs["plugin_namespace"].decode() == onnx_cell.STATE_PLUGIN_NAMESPACE
    assert trt_plugin.STATE_PLUGIN_ID == "mplstm_state::MPLSTM"
    # Every tensor of the state plugin after lengths is one float type: 8 of them.
    assert trt_plugin.STATE_IO_TYPES.split(", ")[3:] == ["FP32|FP16"] * 8
    spec = trt_plugin.build_spec(torch.float16, HIDDEN, VIEWS, "forward", "sigmoid", 0, DIM, True)
    assert spec.initial_state and spec.fused


@pytest.mark.gpu
def test_plugin_registers_under_the_onnx_node_name_namespace_and_version() -> None:
    trt = _tensorrt()
    trt_plugin.register()
    trt_plugin.register()  # idempotent
    registry = trt.get_plugin_registry()
    for namespace in (onnx_cell.PLUGIN_NAMESPACE, onnx_cell.STATE_PLUGIN_NAMESPACE):
        creator = registry.get_creator(onnx_cell.OP_TYPE, onnx_cell.PLUGIN_VERSION, namespace)
        assert creator is not None, namespace


@pytest.mark.gpu
@pytest.mark.parametrize("bidirectional", [False, True], ids=["forward", "bidirectional"])
@pytest.mark.parametrize(
    ("dtype", "atol"),
    [(np.float32, TOLERANCES["plugin-fp32"]), (np.float16, TOLERANCES["plugin-fp16"])],
    ids=["fp32", "fp16"],
)
def test_engine_from_onnx_runs_the_aot_plugin_without_python_and_matches_the_layer(
    tmp_path: Path, bidirectional: bool, dtype: np.dtype, atol: float
) -> None:
    _tensorrt()
    trt_plugin.register()
    layer = _layer(bidirectional)
    plan, layer_types = _build_engine(_onnx_model(layer, dtype))
    assert any("PLUGIN" in t for t in layer_types), f"no plugin layer in {layer_types}"
    assert not any("LOOP" in t for t in layer_types), "the function body was inlined"

    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, STEPS, VIEWS, DIM)).astype(np.float32)
    (tmp_path / "model.plan").write_bytes(plan)
    np.savez(tmp_path / "inputs.npz", X=x.astype(dtype), view_mask=VIEW_MASK, lengths=LENGTHS)
    subprocess.run(
        [
            sys.executable,
            "-c",
            _RUNNER,
            str(tmp_path / "model.plan"),
            str(tmp_path / "inputs.npz"),
            str(tmp_path / "out.npz"),
        ],
        check=True,
    )
    got = np.load(tmp_path / "out.npz")

    with torch.no_grad():
        out, (h_n, c_n) = layer(
            torch.from_numpy(x), torch.from_numpy(VIEW_MASK), torch.from_numpy(LENGTHS)
        )
    for name, expected in (("Y", out), ("Y_h", h_n), ("Y_c", c_n)):
        np.testing.assert_allclose(
            got[name].astype(np.float32), expected.numpy(), atol=atol, rtol=0
        )
