"""Building TensorRT engines for a package: what the parser is given, builds, runs, parity.

The pure parts (the profile, the node attributes the parser reads, classifying the
network's layers) run everywhere; names and engine selection: tests/inference.
Building and running engines (marked gpu) need an NVIDIA GPU and TensorRT >= 10.9 (the
GPU image); elsewhere they skip, and the report says which is missing.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper

from mplstm.core.package import EngineInfo
from mplstm.export import onnx_cell, tensorrt_build
from mplstm.export.check import engine_parity
from mplstm.export.fp16 import to_fp16
from mplstm.export.package import PackagedModel, ParityCase, random_inputs
from mplstm.export.torch_op import export_onnx
from mplstm.inference.parity import TOLERANCES
from mplstm.inference.tensorrt import EngineRunner, current_gpu, engine_file_name, select_engine
from mplstm.training.cell import MPLSTM
from mplstm.training.models import get_model

VIEWS, DIM, HIDDEN = 3, 8, 12


def _layer_model(peepholes: bool = False) -> onnx.ModelProto:
    torch.manual_seed(0)
    layer = MPLSTM(DIM, HIDDEN, VIEWS, peepholes=peepholes).eval()
    params = {k: v.numpy() for k, v in layer.state_dict().items()}
    weights = onnx_cell.export_weights(params, 0, False, peepholes=peepholes)
    return onnx_cell.single_layer_model(
        weights, onnx_cell.CellConfig(VIEWS, peepholes=peepholes), DIM
    )


def _attrs(model: onnx.ModelProto) -> dict[str, object]:
    node = model.graph.node[0]
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


# -- what the parser and the builder are given ---------------------------------------


def test_parser_gets_aot_plugin_nodes_when_the_plugin_is_used() -> None:
    model = _layer_model()
    assert tensorrt_build.prepare_for_parser(model, use_plugin=True) == 1
    attrs = _attrs(model)
    assert attrs["aot"] == 1
    assert attrs["plugin_namespace"] == onnx_cell.PLUGIN_NAMESPACE.encode()
    assert tensorrt_build.prepare_for_parser(model, use_plugin=True) == 1
    assert [a.name for a in model.graph.node[0].attribute].count("aot") == 1


def test_parser_inlines_the_body_without_the_plugin_and_for_peephole_layers() -> None:
    for model, use_plugin in ((_layer_model(), False), (_layer_model(peepholes=True), True)):
        assert tensorrt_build.prepare_for_parser(model, use_plugin) == 0
        attrs = _attrs(model)
        assert not {"aot", "plugin_namespace", "plugin_version"} & set(attrs)
        assert attrs["hidden_size"] == HIDDEN  # the body's own attributes stay
        onnx.checker.check_model(model, full_check=True)


def test_onnx_precision_tells_the_fp16_twin_from_the_fp32_model() -> None:
    model = _layer_model()
    assert tensorrt_build.onnx_precision(model) == "fp32"
    assert tensorrt_build.onnx_precision(to_fp16(model)) == "fp16"


def test_profile_spans_batch_one_to_max_and_the_frames_range() -> None:
    inputs = [("clip", ["batch", 3, "time", 1, 88, 88]), ("view_mask", ["batch", 3])]
    shapes = tensorrt_build.profile_shapes(inputs, 32, (10, 40), 20)
    assert shapes["clip"] == ((1, 3, 10, 1, 88, 88), (32, 3, 20, 1, 88, 88), (32, 3, 40, 1, 88, 88))
    assert shapes["view_mask"] == ((1, 3), (32, 3), (32, 3))
    low_opt = tensorrt_build.profile_shapes(inputs, 32, (10, 40), 20, batch_opt=4)
    assert low_opt["view_mask"][1] == (4, 3)


def test_profile_reads_the_dims_of_an_onnx_model() -> None:
    dims = tensorrt_build.onnx_input_dims(_layer_model())
    assert dims == [("X", ["B", "T", VIEWS, DIM]), ("view_mask", ["B", VIEWS]), ("lengths", ["B"])]
    shapes = tensorrt_build.profile_shapes(dims, 8, (2, 30), 5)
    assert shapes["X"] == ((1, 2, VIEWS, DIM), (8, 5, VIEWS, DIM), (8, 30, VIEWS, DIM))


@pytest.mark.parametrize(
    ("inputs", "frames", "opt", "message"),
    [
        ([("x", ["batch", "s17"])], (2, 9), 4, "'s17'"),
        ([("x", ["batch", "time"])], (10, 40), 50, "opt"),
        ([("x", ["batch", "time"])], (0, 40), 5, "1 <= A"),
    ],
)
def test_profile_refuses_unknown_dynamic_dims_and_an_opt_outside_the_range(
    inputs: list, frames: tuple[int, int], opt: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        tensorrt_build.profile_shapes(inputs, 8, frames, opt)


def test_network_with_a_plugin_layer_per_node_took_the_plugin_path() -> None:
    layers = ["LayerType.CONVOLUTION", "LayerType.PLUGIN_V3", "LayerType.MATRIX_MULTIPLY"]
    path = tensorrt_build.cell_path(layers, mplstm_nodes=1)
    assert path.plugin
    assert "TensorRT plugin mplstm::MPLSTM" in path.describe()


def test_network_with_loop_layers_and_no_plugin_inlined_the_body() -> None:
    layers = ["CONVOLUTION", "TRIP_LIMIT", "RECURRENCE", "RECURRENCE", "LOOP_OUTPUT", "ITERATOR"]
    path = tensorrt_build.cell_path(layers, mplstm_nodes=1)
    assert not path.plugin
    assert (path.plugin_layers, path.loop_layers) == (0, 5)
    assert "inlined ONNX function body" in path.describe()


def test_network_with_fewer_plugin_layers_than_nodes_is_not_the_plugin_path() -> None:
    assert not tensorrt_build.cell_path(["PLUGIN_V3", "TRIP_LIMIT"], mplstm_nodes=2).plugin


def test_default_timing_cache_is_per_user_gpu_arch_and_tensorrt_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = tensorrt_build.default_timing_cache("sm_90", "10.13.0.35")
    assert path == tmp_path / "mplstm" / "timing.sm_90.trt10.13.0.35.cache"


def test_building_fp16_from_the_fp32_model_is_refused_before_tensorrt_is_needed(
    tmp_path: Path,
) -> None:
    onnx.save(_layer_model(), tmp_path / "model.onnx")
    with pytest.raises(tensorrt_build.EngineBuildError, match=r"model\.fp16\.onnx"):
        tensorrt_build.build_engine(
            tmp_path / "model.onnx",
            tmp_path,
            fp16=True,
            max_batch=2,
            frames_range=(2, 4),
            frames_opt=3,
            timing_cache=None,
        )
    assert list(tmp_path.iterdir()) == [tmp_path / "model.onnx"]


# -- GPU: build, run, parity ----------------------------------------------------------


def _tensorrt() -> ModuleType:
    """The tensorrt module, or a skip that says why (visible in the test report)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU: TensorRT engine builds run on a GPU host (the GPU image)")
    return pytest.importorskip(
        "tensorrt", reason="TensorRT is not installed (not on PyPI alone): run in the GPU image"
    )


FRAMES, FRAMES_RANGE, MAX_BATCH = 6, (4, 10), 4


@pytest.fixture(scope="module")
def package_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model.onnx and model.fp16.onnx of a small mplstm-family model (no manifest needed)."""
    _tensorrt()
    torch.manual_seed(0)
    model = get_model("mplstm", num_classes=4, num_views=VIEWS, widths=(8, 8, 16), hidden_size=16)
    clip, mask = random_inputs(ParityCase(2, FRAMES, masked=False), VIEWS, 1, 32, 32, seed=0)
    batch = torch.export.Dim("batch", max=64)
    time = torch.export.Dim("time", min=FRAMES_RANGE[0], max=FRAMES_RANGE[1])
    proto = export_onnx(
        PackagedModel(model.eval()),
        (torch.from_numpy(clip), torch.from_numpy(mask)),
        input_names=["clip", "view_mask"],
        output_names=["logits", "probabilities"],
        dynamic_shapes={"clip": {0: batch, 2: time}, "view_mask": {0: batch}},
    )
    folder = tmp_path_factory.mktemp("package")
    onnx.save(proto, folder / "model.onnx")
    onnx.save(to_fp16(proto), folder / "model.fp16.onnx")
    return folder


def _build(folder: Path, fp16: bool, use_plugin: bool, out: Path) -> EngineInfo:
    return tensorrt_build.build_engine(
        folder / ("model.fp16.onnx" if fp16 else "model.onnx"),
        out,
        fp16=fp16,
        max_batch=MAX_BATCH,
        frames_range=FRAMES_RANGE,
        frames_opt=FRAMES,
        timing_cache=out / "timing.cache",
        use_plugin=use_plugin,
    )


@pytest.mark.gpu
def test_current_gpu_from_the_driver_matches_torch() -> None:
    _tensorrt()
    major, minor = torch.cuda.get_device_capability()
    assert current_gpu() == (f"sm_{major}{minor}", torch.cuda.get_device_name())


@pytest.mark.gpu
@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_engine_with_the_plugin_matches_onnx_runtime_on_the_profile_corners(
    package_dir: Path, tmp_path: Path, fp16: bool
) -> None:
    trt = _tensorrt()
    info = _build(package_dir, fp16, use_plugin=True, out=tmp_path)
    arch, name = current_gpu()
    precision = "fp16" if fp16 else "fp32"
    assert info.file == engine_file_name(arch, trt.__version__, precision)
    assert (info.plugin, info.precision, info.gpu_name) == (True, precision, name)
    assert (tmp_path / info.file).is_file() and (tmp_path / "timing.cache").stat().st_size > 0
    select_engine((info,), precision=precision)
    (package_dir / info.file).write_bytes((tmp_path / info.file).read_bytes())
    clips = [
        random_inputs(ParityCase(1, FRAMES_RANGE[0], masked=False), VIEWS, 1, 32, 32, seed=1),
        random_inputs(ParityCase(MAX_BATCH, FRAMES_RANGE[1], masked=True), VIEWS, 1, 32, 32, 2),
    ]
    parity = engine_parity(package_dir, info, clips)
    assert parity.passed, parity


@pytest.mark.gpu
def test_engine_without_the_plugin_inlines_the_function_body_and_says_so(
    package_dir: Path, tmp_path: Path
) -> None:
    _tensorrt()
    info = _build(package_dir, fp16=False, use_plugin=False, out=tmp_path)
    assert info.plugin is False
    clip, mask = random_inputs(ParityCase(2, FRAMES, masked=True), VIEWS, 1, 32, 32, seed=3)
    runner = EngineRunner(tmp_path / info.file)
    got = runner({"clip": clip, "view_mask": mask})
    session = ort.InferenceSession(
        str(package_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    expected = session.run(["logits"], {"clip": clip, "view_mask": mask})[0]
    np.testing.assert_allclose(got["logits"], expected, atol=TOLERANCES["tensorrt-fp32"])


@pytest.mark.gpu
def test_engine_refuses_a_batch_beyond_its_profile_saying_so(
    package_dir: Path, tmp_path: Path
) -> None:
    _tensorrt()
    info = _build(package_dir, fp16=False, use_plugin=True, out=tmp_path)
    clip, mask = random_inputs(ParityCase(MAX_BATCH + 1, FRAMES, False), VIEWS, 1, 32, 32, 4)
    with pytest.raises(ValueError, match="outside the engine's profile"):
        EngineRunner(tmp_path / info.file)({"clip": clip, "view_mask": mask})
