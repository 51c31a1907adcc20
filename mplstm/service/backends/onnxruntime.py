"""ONNX Runtime backend: `model.onnx` of a package, on the best execution provider present.

Preference TensorRT > CUDA > CPU among the providers this onnxruntime build has
(`onnxruntime-gpu` on GPU hosts, plain `onnxruntime` elsewhere). ONNX Runtime silently
drops a provider that fails to initialise, so the providers the session really got are
what `why` reports.
"""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort

from mplstm.core.cpus import quota_cpus, usable_cpus
from mplstm.core.package import ONNX_NAME, ModelPackage
from mplstm.service.backends.base import BackendUnavailableError, InferenceOutput

log = logging.getLogger(__name__)

_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
_CPU = "CPUExecutionProvider"


def choose_providers(device: str, available: list[str]) -> list[str]:
    """Providers to ask for, best first, for device "auto", "cpu", "cuda" or "cuda:N"."""
    if device == "cpu":
        return [_CPU]
    gpu = [p for p in _GPU_PROVIDERS if p in available]
    if device.startswith("cuda") and not gpu:
        raise BackendUnavailableError(
            f"device {device!r} asked for, but this onnxruntime has no GPU provider "
            f"(available: {available}); install onnxruntime-gpu or set MPLSTM_DEVICE=cpu"
        )
    return [*gpu, _CPU]


class OnnxRuntimeBackend:
    """A package's `model.onnx` in one `onnxruntime.InferenceSession`."""

    name = "onnxruntime"

    def __init__(self, package: ModelPackage, *, device: str = "auto", intra_op_threads: int = 0):
        options = ort.SessionOptions()
        # ONNX Runtime's own default (0) is every physical core of the host, whatever the
        # container's CPU quota: capped to the quota where one is set.
        options.intra_op_num_threads = intra_op_threads or (usable_cpus() if quota_cpus() else 0)
        # Idle ORT workers would otherwise spin for a while after every run: on a CPU host
        # that is CPU taken from the decode threads sharing the cores. Measured on the 2-core
        # host (bench/serve.py), the service's CPU per tensor request fell from 28.6 to
        # 14.5 ms at 1 client with spinning off and one thread.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # Batches run one at a time per model; inter-op parallelism would only contend.
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        wanted = choose_providers(device, ort.get_available_providers())
        provider_options = [
            {"device_id": int(device.split(":")[1])} if ":" in device and p != _CPU else {}
            for p in wanted
        ]
        try:
            self._session = ort.InferenceSession(
                str(package.file(ONNX_NAME)),
                sess_options=options,
                providers=wanted,
                provider_options=provider_options,
            )
        except Exception as exc:  # ORT raises its own untyped errors for a bad graph
            raise BackendUnavailableError(
                f"onnxruntime cannot load {package.path / ONNX_NAME}: {exc}"
            ) from exc
        got = self._session.get_providers()
        self.on_gpu = got[0] != _CPU
        self.why = f"onnxruntime {ort.__version__} with {got[0]} (asked for {wanted})"
        if got[0] != wanted[0]:
            log.warning("%s: %s did not initialise; running on %s", package.name, wanted[0], got[0])
        # Manifest order: the uint8 clip, then the bool view mask.
        self._inputs = [spec.name for spec in package.manifest.inputs]
        self._outputs = [spec.name for spec in package.manifest.outputs]

    def infer(self, clip: np.ndarray, view_mask: np.ndarray) -> InferenceOutput:
        feeds = dict(zip(self._inputs, (clip, view_mask), strict=True))
        logits, probabilities = self._session.run(self._outputs, feeds)
        return InferenceOutput(logits, probabilities)

    def close(self) -> None:
        del self._session
