"""Native TensorRT backend: a package's `.plan` engine, with the mplstm plugin inside it.

An engine only runs on the TensorRT version and GPU architecture it was built for, so
`pick_engine` refuses any other with an error that names both sides; under
`MPLSTM_BACKEND=auto` that error is logged and ONNX Runtime serves instead.
`tensorrt` and `cuda-python` are imported only when this backend is asked for: they
exist in the GPU image, not in the CPU one.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from mplstm.core.package import EngineInfo, ModelPackage
from mplstm.service.backends.base import BackendUnavailableError, InferenceOutput

log = logging.getLogger(__name__)


def pick_engine(
    engines: tuple[EngineInfo, ...], tensorrt_version: str, gpu_arch: str, *, fp16: bool = False
) -> EngineInfo:
    """The package's engine built for this TensorRT version and GPU; else say what does not fit."""
    if not engines:
        raise BackendUnavailableError("the package has no TensorRT engine (.plan)")
    fits = [e for e in engines if e.tensorrt_version == tensorrt_version and e.gpu_arch == gpu_arch]
    if not fits:
        built = ", ".join(
            f"{e.file} (TensorRT {e.tensorrt_version}, {e.gpu_arch})" for e in engines
        )
        raise BackendUnavailableError(
            f"no engine fits this host (TensorRT {tensorrt_version}, GPU {gpu_arch}); the package "
            f"has {built}. Rebuild the engine here with `mplstm export --tensorrt`, or serve "
            "with MPLSTM_BACKEND=onnxruntime"
        )
    precision = "fp16" if fp16 else "fp32"
    return next((e for e in fits if e.precision == precision), fits[0])


def _cuda_runtime() -> Any:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError as exc:
            raise BackendUnavailableError(
                "the tensorrt backend needs cuda-python (the GPU image has it)"
            ) from exc
    return cudart


def _check(result: tuple) -> Any:
    err, *rest = result
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else rest


def running_gpu_arch(cudart: Any, device: int) -> str:
    """The GPU's architecture as engines name it ("sm_90")."""
    props = _check(cudart.cudaGetDeviceProperties(device))
    return f"sm_{props.major}{props.minor}"


class TensorRTBackend:
    """One deserialised engine and an execution context; batches run one at a time."""

    name = "tensorrt"
    on_gpu = True

    def __init__(self, package: ModelPackage, *, device: str = "auto") -> None:
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise BackendUnavailableError(
                "TensorRT is not installed (it comes with the GPU image, not from PyPI)"
            ) from exc
        self._cudart = _cuda_runtime()
        self._device = int(device.split(":")[1]) if ":" in device else 0
        if device == "cpu":
            raise BackendUnavailableError("MPLSTM_DEVICE=cpu: TensorRT needs a GPU")
        try:
            arch = running_gpu_arch(self._cudart, self._device)
        except RuntimeError as exc:
            raise BackendUnavailableError(f"no usable CUDA GPU ({exc})") from exc
        info = pick_engine(package.manifest.engines, trt.__version__, arch)
        _check(self._cudart.cudaSetDevice(self._device))
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        self._engine = runtime.deserialize_cuda_engine(package.file(info.file).read_bytes())
        if self._engine is None:
            raise BackendUnavailableError(f"TensorRT could not deserialise {info.file}")
        self._context = self._engine.create_execution_context()
        self._stream = _check(self._cudart.cudaStreamCreate())
        self._inputs = [spec.name for spec in package.manifest.inputs]
        self._outputs = [spec.name for spec in package.manifest.outputs]
        self.why = (
            f"tensorrt {trt.__version__}, engine {info.file} ({info.precision}, {arch}, "
            f"plugin={info.plugin})"
        )

    def infer(self, clip: np.ndarray, view_mask: np.ndarray) -> InferenceOutput:
        cudart = self._cudart
        batch = clip.shape[0]
        buffers = []
        try:
            for name, array in zip(self._inputs, (clip, view_mask), strict=True):
                array = np.ascontiguousarray(array)
                self._context.set_input_shape(name, array.shape)
                ptr = _check(cudart.cudaMalloc(max(array.nbytes, 1)))
                buffers.append(ptr)
                _check(
                    cudart.cudaMemcpyAsync(
                        ptr, array.ctypes.data, array.nbytes,
                        cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self._stream,
                    )
                )  # fmt: skip
                self._context.set_tensor_address(name, ptr)
            results = []
            for name in self._outputs:
                shape = tuple(self._context.get_tensor_shape(name))
                out = np.empty((batch, *shape[1:]), np.float32)
                ptr = _check(cudart.cudaMalloc(max(out.nbytes, 1)))
                buffers.append(ptr)
                self._context.set_tensor_address(name, ptr)
                results.append((out, ptr))
            if not self._context.execute_async_v3(self._stream):
                raise RuntimeError("TensorRT execution failed")
            for out, ptr in results:
                _check(
                    cudart.cudaMemcpyAsync(
                        out.ctypes.data, ptr, out.nbytes,
                        cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self._stream,
                    )
                )  # fmt: skip
            _check(cudart.cudaStreamSynchronize(self._stream))
            return InferenceOutput(results[0][0], results[1][0])
        finally:
            for ptr in buffers:
                cudart.cudaFree(ptr)

    def close(self) -> None:
        self._cudart.cudaStreamDestroy(self._stream)
        del self._context, self._engine
