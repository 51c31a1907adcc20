"""A live package's step model on ONNX Runtime: one chunk of frames and the state in, out.

Torch-free, like the rest of `inference`: the service's live sessions and export's parity
check both run `model.step.onnx` through `StepBackend`. State tensors are batch first
(`StepSpec.state`); a sequence starts from zeros (`zero_state`), and feeding each
chunk's new state into the next gives, after every chunk, the whole-clip model's answer
on every frame so far (checked at export: `run_in_chunks`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from mplstm.core.package import ModelPackage, PackageError, StepSpec
from mplstm.inference.backend import BackendUnavailableError
from mplstm.inference.onnxruntime import choose_providers, session_options
from mplstm.inference.options import BackendOptions

_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "uint8": np.uint8}


@dataclass(frozen=True)
class StepOutput:
    """One chunk's results, row i for sequence i."""

    logits: np.ndarray  # float32 [B, classes], after the chunk's last step
    probabilities: np.ndarray  # float32 [B, classes]
    state: list[np.ndarray]  # the new state, in `StepSpec.state` order, batch first


def zero_state(spec: StepSpec, batch: int) -> list[np.ndarray]:
    """The state every sequence starts from: zeros, [batch, *shape] per state tensor."""
    return [np.zeros((batch, *s.shape), _NUMPY_DTYPES[s.dtype]) for s in spec.state]


class StepBackend:
    """`model.step.onnx` in one ONNX Runtime session."""

    def __init__(self, path: str | Path, spec: StepSpec, options: BackendOptions) -> None:
        wanted = choose_providers(options, ort.get_available_providers())
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=session_options(options.threads), providers=wanted
            )
        except Exception as exc:  # ORT raises its own untyped errors for a bad graph
            raise BackendUnavailableError(f"onnxruntime cannot load {path}: {exc}") from exc
        self.spec = spec
        got = self._session.get_providers()
        self.on_gpu = got[0] != "CPUExecutionProvider"
        self.description = f"onnxruntime {ort.__version__} with {got[0]} (step model)"
        self._inputs = [*spec.inputs, *(s.name for s in spec.state)]
        self._outputs = [*spec.outputs, *(s.output for s in spec.state)]

    @classmethod
    def open(cls, package: ModelPackage, options: BackendOptions) -> StepBackend:
        """The step model of a live package; BackendUnavailableError when it has none."""
        spec = package.manifest.step
        if spec is None:
            raise BackendUnavailableError(
                f"{package.name} has no step model: it is not a live package (export a model "
                "trained with model.causal = true and data.fps)"
            )
        try:
            path = package.file(spec.file)
        except PackageError as exc:
            raise BackendUnavailableError(str(exc)) from exc
        return cls(path, spec, options)

    def zero_state(self, batch: int) -> list[np.ndarray]:
        """Zeros for `batch` new sequences."""
        return zero_state(self.spec, batch)

    def run(
        self, clip: np.ndarray, view_mask: np.ndarray, state: Sequence[np.ndarray]
    ) -> StepOutput:
        """clip uint8 [B, V, t, C, H, W], view_mask bool [B, V], state → one chunk's results."""
        feeds = dict(zip(self._inputs, (clip, view_mask, *state), strict=True))
        logits, probabilities, *new_state = self._session.run(self._outputs, feeds)
        return StepOutput(logits, probabilities, new_state)

    def close(self) -> None:
        del self._session


def run_in_chunks(
    step: StepBackend, clip: np.ndarray, view_mask: np.ndarray, chunk: int
) -> list[StepOutput]:
    """Run clips [B, V, T, ...] through the step model `chunk` steps at a time from zero state.

    Returns every chunk's output; the last one's probabilities are the whole clip's.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    state = step.zero_state(clip.shape[0])
    outputs = []
    for start in range(0, clip.shape[2], chunk):
        out = step.run(np.ascontiguousarray(clip[:, :, start : start + chunk]), view_mask, state)
        state = out.state
        outputs.append(out)
    return outputs
