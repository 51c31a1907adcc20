"""The step model of a live package (DESIGN.md §5, §9): `model.step.onnx` and its parity.

A live (causal) model runs a session one chunk at a time: frames of the chunk [B, V, t,
C, H, W] uint8, the view mask [B, V] and the state in; logits and probabilities after
the chunk's last step and the new state out. The state is every tensor the model needs
to continue (`MPLSTMModel.step_state_shapes`): the MP-LSTM's (h, c) per layer, the
front-end's last input frames, the pooling's accumulator. Its MP-LSTM layers export as
`mplstm::MPLSTM` nodes with an initial state (`onnx_cell`, overload `_state`).

Parity at export (recorded in the manifest, `parity.step_model`): clips run through the
step model in chunks of 1, 3 and 7 steps end with the whole-clip model's (model.onnx)
probabilities within `TOLERANCES["fp32"]` and the same argmax, or no package is written
(`export.package.build_package` refuses it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from mplstm.core.package import STEP_ONNX_NAME, StateSpec, StepSpec
from mplstm.export.torch_op import export_onnx
from mplstm.inference.options import BackendOptions
from mplstm.inference.parity import TOLERANCES
from mplstm.inference.step import StepBackend, run_in_chunks, zero_state

CHUNKS = (1, 3, 7)  # steps per chunk in the parity check (DESIGN.md §5)
TRACE_CHUNK = 3
OUTPUT_SUFFIX = "_out"


# (clip, view_mask) → the whole-clip model's probabilities [B, classes].
WholeClip = Callable[[np.ndarray, np.ndarray], np.ndarray]


class StepModel(nn.Module):
    """(clip uint8 [B, V, t, C, H, W], view_mask [B, V], *state) → (logits, probs, *state)."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, clip: Tensor, view_mask: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        logits, new = self.model.step(
            self.model.normalise(clip), view_mask, dict(zip(self.names, state, strict=True))
        )
        return (logits, logits.softmax(dim=-1), *(new[name] for name in self.names))


def is_live(model: nn.Module) -> bool:
    """Whether `model` is a causal (live) model with a step function."""
    return bool(getattr(model.config, "causal", False)) and hasattr(model, "step")


def step_spec(model: nn.Module, height: int, width: int) -> StepSpec:
    """The step model's state tensors (inputs by name, outputs `<name>_out`), fp32."""
    shapes = model.step_state_shapes(height, width)
    state = tuple(
        StateSpec(name, f"{name}{OUTPUT_SUFFIX}", "float32", shape)
        for name, shape in shapes.items()
    )
    return StepSpec(file=STEP_ONNX_NAME, state=state)


def export_step_onnx(
    model: nn.Module, spec: StepSpec, shape: tuple[int, int, int, int], path: Path, max_batch: int
) -> onnx.ModelProto:
    """Export the step model to `path`: dynamic batch and chunk length."""
    views, channels, height, width = shape
    rng = np.random.default_rng(0)
    batch = 2
    clip = rng.integers(0, 256, (batch, views, TRACE_CHUNK, channels, height, width), np.uint8)
    mask = np.ones((batch, views), bool)
    # Distinct tensors (the exporter would read one tensor passed twice as one input).
    state = [torch.from_numpy(a) for a in zero_state(spec, batch)]
    batch_dim = torch.export.Dim("batch", min=1, max=max(max_batch, 64))
    chunk_dim = torch.export.Dim("chunk", min=1, max=256)
    dynamic = {
        "clip": {0: batch_dim, 2: chunk_dim},
        "view_mask": {0: batch_dim},
        "state": tuple({0: batch_dim} for _ in spec.state),
    }
    names = tuple(s.name for s in spec.state)
    proto = export_onnx(
        StepModel(model, names).eval(),
        (torch.from_numpy(clip), torch.from_numpy(mask), *state),
        input_names=[*spec.inputs, *names],
        output_names=[*spec.outputs, *(s.output for s in spec.state)],
        dynamic_shapes=dynamic,
    )
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, path)
    return proto


def check_step_parity(
    whole: WholeClip,
    step_path: Path,
    spec: StepSpec,
    clips: list[tuple[np.ndarray, np.ndarray]],
    tolerance: float = TOLERANCES["fp32"],
) -> dict[str, Any]:
    """The whole-clip model on `clips` against model.step.onnx in chunks of 1, 3 and 7 steps."""
    step = StepBackend(step_path, spec, BackendOptions(device="cpu"))
    cases = []
    for clip, mask in clips:
        expected = whole(clip, mask)
        for chunk in CHUNKS:
            got = run_in_chunks(step, clip, mask, chunk)[-1].probabilities
            cases.append(
                {
                    "batch": int(clip.shape[0]),
                    "steps": int(clip.shape[2]),
                    "chunk": chunk,
                    "masked": bool(not mask.all()),
                    "max_abs_diff": float(np.abs(got - expected).max()),
                    "argmax_equal": bool((got.argmax(-1) == expected.argmax(-1)).all()),
                }
            )
    step.close()
    worst = max(c["max_abs_diff"] for c in cases)
    argmax = all(c["argmax_equal"] for c in cases)
    return {
        "reference": "model.onnx on the whole clip (ONNX Runtime CPU)",
        "compared": "probabilities after the last chunk",
        "chunks": list(CHUNKS),
        "tolerance": tolerance,
        "max_abs_diff": worst,
        "argmax_equal": argmax,
        "passed": worst <= tolerance and argmax,
        "cases": cases,
    }


def add_step_model(
    model: nn.Module,
    folder: Path,
    shape: tuple[int, int, int, int],
    max_batch: int,
    clips: list[tuple[np.ndarray, np.ndarray]],
    whole: WholeClip,
    log: Callable[[str], None],
) -> tuple[StepSpec, dict[str, Any]]:
    """Export `folder/model.step.onnx` for a live model; its parity against `whole` on `clips`.

    `shape`: (V, C, H, W). The caller refuses the package when `parity["passed"]` is False.
    """
    spec = step_spec(model, shape[2], shape[3])
    log(f"exporting the step model ({', '.join(s.name for s in spec.state)} carried)")
    export_step_onnx(model, spec, shape, folder / spec.file, max_batch)
    log("checking parity: the step model in chunks of 1, 3 and 7 steps vs model.onnx")
    return spec, check_step_parity(whole, folder / spec.file, spec, clips)
