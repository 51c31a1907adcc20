"""ONNX Runtime backend: `model.onnx` of a package, on the best execution provider present.

Preference TensorRT > CUDA > CPU among the providers this onnxruntime build has
(`onnxruntime-gpu` on GPU hosts, plain `onnxruntime` elsewhere), unless the options
name the providers. ONNX Runtime silently drops a provider that fails to initialise,
so the providers the session really got are what `description` reports.
"""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort

from mplstm.core.cpus import quota_cpus, usable_cpus
from mplstm.core.package import EMBEDDING_OUTPUT, ONNX_NAME, ModelPackage
from mplstm.inference.backend import BackendUnavailableError, InferenceOutput
from mplstm.inference.options import BackendOptions

log = logging.getLogger(__name__)

_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
_CPU = "CPUExecutionProvider"


def choose_providers(options: BackendOptions, available: list[str]) -> list[str]:
    """Providers to ask for, best first: the options' own, or the best for their device."""
    if options.providers:
        missing = [p for p in options.providers if p not in available]
        if missing:
            raise BackendUnavailableError(
                f"ONNX Runtime providers {missing} asked for (MPLSTM_ORT_PROVIDERS), but this "
                f"onnxruntime has only {available}"
            )
        return list(options.providers)
    if options.device == "cpu":
        return [_CPU]
    gpu = [p for p in _GPU_PROVIDERS if p in available]
    if options.device.startswith("cuda") and not gpu:
        raise BackendUnavailableError(
            f"device {options.device!r} asked for, but this onnxruntime has no GPU provider "
            f"(available: {available}); install onnxruntime-gpu or set MPLSTM_DEVICE=cpu"
        )
    return [*gpu, _CPU]


def session_options(threads: int) -> ort.SessionOptions:
    """Session options for a model whose batches run one at a time."""
    options = ort.SessionOptions()
    # ONNX Runtime's own default (0) is every physical core of the host, whatever the
    # container's CPU quota: capped to the quota where one is set.
    options.intra_op_num_threads = threads or (usable_cpus() if quota_cpus() else 0)
    # Idle ORT workers would otherwise spin after every run: CPU taken from the decode
    # workers sharing the cores (docs/benchmarks.md, service section).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Batches run one at a time per model; inter-op parallelism would only contend.
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return options


class OnnxRuntimeBackend:
    """A package's `model.onnx` in one `onnxruntime.InferenceSession`."""

    name = "onnxruntime"

    def __init__(self, package: ModelPackage, options: BackendOptions) -> None:
        wanted = choose_providers(options, ort.get_available_providers())
        provider_options = [
            {"device_id": options.device_id} if p != _CPU and ":" in options.device else {}
            for p in wanted
        ]
        try:
            self._session = ort.InferenceSession(
                str(package.file(ONNX_NAME)),
                sess_options=session_options(options.threads),
                providers=wanted,
                provider_options=provider_options,
            )
        except Exception as exc:  # ORT raises its own untyped errors for a bad graph
            raise BackendUnavailableError(
                f"onnxruntime cannot load {package.path / ONNX_NAME}: {exc}"
            ) from exc
        got = self._session.get_providers()
        self.on_gpu = got[0] != _CPU
        self.description = f"onnxruntime {ort.__version__} with {got[0]} (asked for {wanted})"
        if got[0] != wanted[0]:
            log.warning("%s: %s did not initialise; running on %s", package.name, wanted[0], got[0])
        # Manifest order: the uint8 clip, then the bool view mask.
        self._inputs = [spec.name for spec in package.manifest.inputs]
        self._outputs = [spec.name for spec in package.manifest.outputs]

    def infer(self, clip: np.ndarray, view_mask: np.ndarray) -> InferenceOutput:
        feeds = dict(zip(self._inputs, (clip, view_mask), strict=True))
        out = dict(zip(self._outputs, self._session.run(self._outputs, feeds), strict=True))
        return InferenceOutput(out["logits"], out["probabilities"], out.get(EMBEDDING_OUTPUT))

    def close(self) -> None:
        del self._session
