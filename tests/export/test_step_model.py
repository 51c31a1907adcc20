"""A live package's step model: exported beside model.onnx, parity-checked, recorded.

The tiny live model is untrained (random weights): parity is about arithmetic, not
accuracy. Tolerance: probabilities within `TOLERANCES["fp32"]` (1e-4), as at export.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from tiny_models import save_tiny_checkpoint

from mplstm.core.package import STEP_ONNX_NAME, ModelPackage, load_package, read_package_manifest
from mplstm.export.package import build_package, onnx_session
from mplstm.inference.options import BackendOptions
from mplstm.inference.parity import TOLERANCES
from mplstm.inference.step import StepBackend, run_in_chunks

FPS = 10.0


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> ModelPackage:
    work = tmp_path_factory.mktemp("live")
    checkpoint = save_tiny_checkpoint(work / "live.pt", fps=FPS, view_dropout=0.2)
    return build_package(checkpoint, work / "models" / "tiny-live" / "1")


def test_a_live_package_holds_a_step_model_with_its_state_and_parity(live: ModelPackage) -> None:
    manifest = live.manifest
    assert manifest.live and manifest.preprocess.fps == FPS
    assert manifest.step is not None and manifest.step.file == STEP_ONNX_NAME
    assert STEP_ONNX_NAME in manifest.files  # hashed like every file
    assert [s.name for s in manifest.step.state] == ["h", "c", "context", "pool"]
    assert manifest.step.state[2].shape == (3, 2, 1, 32, 32)  # views, 2 frames, C, H, W
    parity = manifest.parity["step_model"]
    assert parity["passed"] and parity["argmax_equal"]
    assert parity["max_abs_diff"] <= TOLERANCES["fp32"]
    assert {c["chunk"] for c in parity["cases"]} == {1, 3, 7}
    # The manifest reads back with its step model.
    assert read_package_manifest(live.path).step == manifest.step


def test_the_step_model_nodes_carry_state_and_name_the_state_plugin(live: ModelPackage) -> None:
    model = onnx.load(live.path / STEP_ONNX_NAME)
    nodes = [n for n in model.graph.node if n.op_type == "MPLSTM"]
    assert len(nodes) == 1 and nodes[0].overload.endswith("_state")
    names = [i.name for i in model.graph.input]
    assert names == ["clip", "view_mask", "h", "c", "context", "pool"]


def test_after_every_step_the_stream_answers_what_model_onnx_answers_on_the_prefix(
    live: ModelPackage,
) -> None:
    step = StepBackend.open(live, BackendOptions(device="cpu"))
    whole = onnx_session(live.path / "model.onnx")
    rng = np.random.default_rng(3)
    clip = rng.integers(0, 256, (2, 3, 9, 1, 32, 32), np.uint8)
    mask = np.array([[True, False, True], [True, True, True]])
    for k, out in enumerate(run_in_chunks(step, clip, mask, chunk=1), start=1):
        prefix = whole.run(["probabilities"], {"clip": clip[:, :, :k], "view_mask": mask})[0]
        np.testing.assert_allclose(out.probabilities, prefix, rtol=0, atol=TOLERANCES["fp32"])


def test_an_offline_model_gets_no_step_model(tmp_path: Path) -> None:
    checkpoint = save_tiny_checkpoint(tmp_path / "offline.pt")
    package = build_package(checkpoint, tmp_path / "models" / "tiny" / "1")
    assert package.manifest.step is None and not package.manifest.live
    assert STEP_ONNX_NAME not in package.manifest.files
    with pytest.raises(Exception, match="not a live package"):
        StepBackend.open(load_package(package.path), BackendOptions(device="cpu"))
