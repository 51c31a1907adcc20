"""Model packages from checkpoints: every family, parity, the graph, hashes, Triton config, CLI."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from mplstm.cli import main as cli_main
from mplstm.core.package import (
    MANIFEST_NAME,
    ONNX_FP16_NAME,
    ONNX_NAME,
    TRITON_CONFIG_NAME,
    PackageError,
    load_package,
)
from mplstm.export import onnx_cell
from mplstm.export.check import check_package
from mplstm.export.package import ExportError, build_package, random_inputs
from mplstm.training.checkpoint import load_model
from mplstm.training.models import list_models


@pytest.mark.parametrize("family", list_models())
def test_every_family_exports_and_matches_pytorch_on_other_batches_lengths_and_masks(
    family: str, tiny_checkpoint: Callable[..., Path], tmp_path: Path
) -> None:
    package = build_package(tiny_checkpoint(family), tmp_path / "m" / "1")
    parity = package.manifest.parity
    assert parity["passed"] and parity["max_abs_diff"] <= 1e-4
    cases = parity["cases"]
    assert sorted(c["batch"] for c in cases) == [1, 3, 8]
    assert any(c["masked"] for c in cases)
    traced_frames = package.manifest.preprocess.frames
    if package.manifest.frames_range[0] < package.manifest.frames_range[1]:
        frames = {c["frames"] for c in cases}
        assert min(frames) < traced_frames < max(frames)

    # Independently of the recorded figures: a fresh input through both runtimes.
    model, _ = load_model(tiny_checkpoint(family))
    session = ort.InferenceSession(str(package.path / ONNX_NAME))
    clip = np.random.default_rng(7).integers(0, 256, (5, 3, traced_frames, 1, 32, 32), np.uint8)
    mask = np.array([[1, 1, 1], [0, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 1]], bool)
    logits, probs = session.run(None, {"clip": clip, "view_mask": mask})
    with torch.no_grad():
        expected = model(torch.from_numpy(clip), torch.from_numpy(mask)).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)


def test_package_graph_has_one_mplstm_node_per_layer_with_body_and_plugin_attributes(
    tiny_checkpoint: Callable[..., Path], tmp_path: Path
) -> None:
    package = build_package(tiny_checkpoint("mplstm", num_layers=2), tmp_path / "m" / "1")
    model = onnx.load(package.path / ONNX_NAME)
    onnx.checker.check_model(model, full_check=True)
    nodes = [n for n in model.graph.node if n.domain == onnx_cell.DOMAIN]
    assert [n.op_type for n in nodes] == [onnx_cell.OP_TYPE] * 2
    bodies = {(f.domain, f.name) for f in model.functions}
    assert (onnx_cell.DOMAIN, onnx_cell.OP_TYPE) in bodies
    for node in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["plugin_namespace"] == onnx_cell.PLUGIN_NAMESPACE.encode()
        assert attrs["plugin_version"] == onnx_cell.PLUGIN_VERSION.encode()
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] == "batch" and isinstance(dims[2], str)  # batch and time are symbolic
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8


def test_export_refuses_to_write_a_package_when_parity_does_not_hold(
    tiny_checkpoint: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "m" / "1"
    with pytest.raises(ExportError, match="parity check failed"):
        build_package(tiny_checkpoint(), out, tolerance=-1.0)
    assert not out.exists() and not any((tmp_path / "m").iterdir())


def test_convlstm_family_refuses_a_frames_range_other_than_its_training_length(
    tiny_checkpoint: Callable[..., Path], tmp_path: Path
) -> None:
    with pytest.raises(ExportError, match="training length only"):
        build_package(tiny_checkpoint("convlstm"), tmp_path / "m" / "1", frames_range=(4, 16))


def test_manifest_describes_views_io_and_hashes_and_triton_config_matches_it(
    tiny_checkpoint: Callable[..., Path], tmp_path: Path
) -> None:
    package = build_package(
        tiny_checkpoint(view_dropout=0.2), tmp_path / "tiny" / "3", max_batch=16
    )
    manifest = package.manifest
    assert (manifest.name, manifest.version, manifest.task) == ("tiny", "3", "lipreading")
    assert manifest.view_names == ("front", "left90", "right30")
    assert manifest.view_yaws == (0.0, -90.0, 30.0)
    assert manifest.allows_missing_views and manifest.preprocess_config().allow_missing_views
    assert [s.name for s in manifest.inputs] == ["clip", "view_mask"]
    assert manifest.inputs[0].shape == ("batch", 3, "time", 1, 32, 32)
    assert set(manifest.files) == {ONNX_NAME, TRITON_CONFIG_NAME}
    config = (package.path / TRITON_CONFIG_NAME).read_text()
    assert 'name: "tiny"' in config and "max_batch_size: 16" in config
    assert "dims: [3, -1, 1, 32, 32]" in config and "dynamic_batching" in config
    # Triton reads the model folder's copy.
    assert (package.path.parent / TRITON_CONFIG_NAME).read_text() == config


def test_changed_byte_in_a_package_is_refused_naming_the_file(
    tiny_checkpoint: Callable[..., Path], tmp_path: Path
) -> None:
    package = build_package(tiny_checkpoint(), tmp_path / "m" / "1")
    data = bytearray((package.path / ONNX_NAME).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (package.path / ONNX_NAME).write_bytes(bytes(data))
    with pytest.raises(PackageError, match=r"model\.onnx does not match its sha256"):
        load_package(package.path)
    rows = {r.item: r.status for r in check_package(package.path)}
    assert rows[ONNX_NAME] == "FAILED"


def test_manifest_of_another_format_is_refused_with_advice(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_NAME).write_text('{"format_version": 99}')
    with pytest.raises(PackageError, match="re-export"):
        load_package(tmp_path)


def test_export_cli_writes_a_package_that_check_passes_and_refuses_to_overwrite_it(
    tiny_checkpoint: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "models" / "tiny" / "1"
    ckpt = tiny_checkpoint()
    assert cli_main(["export", str(ckpt), "--out", str(out), "--max-batch", "8"]) == 0
    assert cli_main(["export", "--check", str(out)]) == 0
    table = capsys.readouterr().out
    assert "onnxruntime" in table and "FAILED" not in table
    assert cli_main(["export", str(ckpt), "--out", str(out)]) == 2
    assert "already holds a package" in capsys.readouterr().err


def test_random_inputs_keep_at_least_one_view_in_every_masked_row() -> None:
    from mplstm.export.package import ParityCase

    _, mask = random_inputs(ParityCase(64, 4, masked=True), 5, 1, 8, 8, seed=3)
    assert mask.any(axis=1).all() and not mask.all()


def test_export_with_tensorrt_on_a_host_without_it_fails_before_exporting(
    tiny_checkpoint: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mplstm.inference.tensorrt import TensorRTError, current_gpu, tensorrt_version

    try:
        tensorrt_version()
        current_gpu()
    except TensorRTError:
        pass
    else:
        pytest.skip(
            "this host has TensorRT and a GPU: the engine path is tested in test_tensorrt_build"
        )
    out = tmp_path / "m" / "1"
    assert cli_main(["export", str(tiny_checkpoint()), "--out", str(out), "--tensorrt"]) == 2
    assert "--tensorrt needs a GPU host with TensorRT" in capsys.readouterr().err
    assert not out.exists()


def test_fp16_export_adds_the_fp16_twin_which_check_compares_with_fp32(
    tiny_checkpoint: Callable[..., Path], tmp_path: Path
) -> None:
    package = build_package(tiny_checkpoint(), tmp_path / "m" / "1", fp16=True)
    assert ONNX_FP16_NAME in package.manifest.files
    fp16 = onnx.load(package.path / ONNX_FP16_NAME)
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    rows = {r.item: r for r in check_package(package.path)}
    assert rows[ONNX_FP16_NAME].status == "ok", rows[ONNX_FP16_NAME].detail
