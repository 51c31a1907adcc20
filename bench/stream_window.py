"""The sliding-window baseline of bench/stream.py, built as a live package of its own.

What lip-reading codebases do for live use: at every update, re-run the whole-clip model
on the last T frames. Here that is a "step model" whose state is the window of the last
T - 1 frames (uint8, zeros before the first): each step appends its frame, runs
model.onnx on the T frames and keeps the newest T - 1. Served by the same service, with
the same protocol, sync, continuous batching and update rate as the live package, so the
two differ only in what a step costs: O(T) frames through the model instead of O(1).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mplstm.core.package import (
    STEP_ONNX_NAME,
    ModelPackage,
    StateSpec,
    StepSpec,
    load_package,
    read_package_manifest,
    write_package_manifest,
)


def window_step_model(whole: onnx.ModelProto, frames: int) -> onnx.ModelProto:
    """model.onnx (clip [B, V, T, C, H, W], view_mask) → a step model over a T-frame window."""
    model = onnx.ModelProto()
    model.CopyFrom(whole)
    graph = model.graph
    clip = next(i for i in graph.input if i.name == "clip")
    dims = [d.dim_value or d.dim_param for d in clip.type.tensor_type.shape.dim]
    views, channels, height, width = dims[1], dims[3], dims[4], dims[5]
    for node in graph.node:  # the whole-clip graph now reads the joined window
        node.input[:] = ["window_all" if name == "clip" else name for name in node.input]
    keep = numpy_helper.from_array(np.array([-(frames - 1)], np.int64), "window_keep_start")
    end = numpy_helper.from_array(np.array([np.iinfo(np.int64).max], np.int64), "window_keep_end")
    axis = numpy_helper.from_array(np.array([2], np.int64), "window_axis")
    graph.initializer.extend([keep, end, axis])
    joined = helper.make_node("Concat", ["window", "clip"], ["window_all"], axis=2)
    newest = helper.make_node(
        "Slice",
        ["window_all", "window_keep_start", "window_keep_end", "window_axis"],
        ["window_out"],
    )
    graph.node.insert(0, newest)
    graph.node.insert(0, joined)
    shape = ["batch", views, frames - 1, channels, height, width]
    graph.input.append(helper.make_tensor_value_info("window", TensorProto.UINT8, shape))
    graph.output.append(helper.make_tensor_value_info("window_out", TensorProto.UINT8, shape))
    onnx.checker.check_model(model)
    return model


def build_window_package(live: ModelPackage, out: Path, frames: int) -> ModelPackage:
    """A copy of `live` whose step model re-runs model.onnx on the last `frames` steps."""
    shutil.copytree(live.path, out)
    (out / STEP_ONNX_NAME).unlink()
    onnx.save(window_step_model(onnx.load(live.path / "model.onnx"), frames), out / STEP_ONNX_NAME)
    manifest = read_package_manifest(out)
    pre = manifest.preprocess
    views = len(manifest.view_names)
    state = StateSpec(
        "window", "window_out", "uint8", (views, frames - 1, pre.channels, pre.height, pre.width)
    )
    manifest.step = StepSpec(file=STEP_ONNX_NAME, state=(state,))
    manifest.name = out.parent.name
    manifest.parity = {"note": "sliding-window baseline of bench/stream.py: no parity claim"}
    write_package_manifest(out, manifest)
    return load_package(out)
