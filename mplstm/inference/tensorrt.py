"""TensorRT engines, torch-free: naming, the host's GPU, engine selection, the one runner.

Export builds engines with these names and records them in the manifest
(`mplstm.export.tensorrt_build`); the service and the scorer run them through
`TensorRTBackend`; `mplstm export --check` compares them with model.onnx through the
same runner. An engine runs only under the TensorRT version and on the GPU
architecture it was built for, so `select_engine` refuses any other, saying what
differs; under `MPLSTM_BACKEND=auto` that refusal is logged and ONNX Runtime serves.

Nothing here imports torch. `tensorrt` and `cuda-python` are imported only when an
engine is run (they exist in the GPU image, not in the CPU one); the GPU is found by
asking the CUDA driver (libcuda) directly. The engines' MP-LSTM plugin is AOT: its
compiled kernel lives in the engine, so running one needs no plugin registration.
"""

from __future__ import annotations

import ctypes
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mplstm.core.package import EMBEDDING_OUTPUT, EngineInfo, ModelPackage, PackageError
from mplstm.inference.backend import BackendUnavailableError, InferenceOutput
from mplstm.inference.options import BackendOptions

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16")


class TensorRTError(BackendUnavailableError, PackageError):
    """TensorRT cannot run an engine here: not installed, no GPU, no fitting engine, a bad plan.

    A PackageError too: to `mplstm export --check`, an engine that cannot run here is a
    property of the package on this host.
    """


def engine_file_name(gpu_arch: str, trt_version: str, precision: str) -> str:
    """`model.<arch>.trt<major.minor>.<precision>.plan`, e.g. model.sm_90.trt10.13.fp16.plan."""
    if not re.fullmatch(r"sm_\d+[a-z]?", gpu_arch):
        raise ValueError(f"gpu_arch must look like 'sm_90', got {gpu_arch!r}")
    version = re.match(r"(\d+)\.(\d+)", trt_version)
    if version is None:
        raise ValueError(f"TensorRT version must start with MAJOR.MINOR, got {trt_version!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return f"model.{gpu_arch}.trt{version[1]}.{version[2]}.{precision}.plan"


def current_gpu(device: int = 0) -> tuple[str, str]:
    """(arch, name) of a CUDA device, e.g. ("sm_90", "NVIDIA H100 80GB HBM3").

    Asks the CUDA driver (libcuda) directly, so it needs neither torch nor TensorRT;
    CUDA_VISIBLE_DEVICES applies as for any CUDA program. TensorRTError without one.
    """
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        raise TensorRTError(f"no CUDA driver on this host (libcuda.so.1: {exc})") from exc

    def call(result: int, what: str) -> None:
        if result != 0:
            raise TensorRTError(f"CUDA driver call {what} failed with CUresult {result}")

    call(cuda.cuInit(0), "cuInit")
    count = ctypes.c_int()
    call(cuda.cuDeviceGetCount(ctypes.byref(count)), "cuDeviceGetCount")
    if device >= count.value:
        raise TensorRTError(f"no CUDA device {device} ({count.value} visible)")
    handle = ctypes.c_int()
    call(cuda.cuDeviceGet(ctypes.byref(handle), device), "cuDeviceGet")
    major, minor = ctypes.c_int(), ctypes.c_int()
    # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR
    call(cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, handle), "cuDeviceGetAttribute")
    call(cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, handle), "cuDeviceGetAttribute")
    name = ctypes.create_string_buffer(256)
    call(cuda.cuDeviceGetName(name, len(name), handle), "cuDeviceGetName")
    return f"sm_{major.value}{minor.value}", name.value.decode(errors="replace")


def import_tensorrt() -> Any:
    """The `tensorrt` module; TensorRTError saying where to get it."""
    try:
        import tensorrt
    except ImportError as exc:
        raise TensorRTError(
            f"TensorRT is not installed here ({exc}): TensorRT engines run only in the GPU "
            "image (it does not install from PyPI alone); use the onnxruntime backend elsewhere"
        ) from exc
    return tensorrt


def tensorrt_version() -> str:
    """The TensorRT version installed here; TensorRTError where there is none."""
    return str(import_tensorrt().__version__)


def select_engine(
    engines: tuple[EngineInfo, ...],
    *,
    precision: str | None = None,
    running_tensorrt: str | None = None,
    running_gpu: tuple[str, str] | None = None,
) -> EngineInfo:
    """The engine built for this host's TensorRT version and GPU architecture.

    Among those that fit, the one of `precision` if given, else fp32 before fp16 (the
    precision the package's accuracy was measured in). `running_tensorrt` and
    `running_gpu` default to this host's. A GPU of the same architecture but another
    model is accepted with a warning (TensorRT's own rule: it runs, possibly with
    tactics tuned for the other GPU). TensorRTError naming both sides when none fits.
    """
    if not engines:
        raise TensorRTError("the package has no TensorRT engine (.plan)")
    version = running_tensorrt if running_tensorrt is not None else tensorrt_version()
    arch, name = running_gpu if running_gpu is not None else current_gpu()
    fits = [e for e in engines if e.tensorrt_version == version and e.gpu_arch == arch]
    if not fits:
        built = ", ".join(
            f"{e.file} (TensorRT {e.tensorrt_version}, {e.gpu_arch} ({e.gpu_name}))"
            for e in engines
        )
        raise TensorRTError(
            f"no engine of this package fits this host (TensorRT {version}, GPU {arch} "
            f"({name})); it has {built}. TensorRT engines run only where they were built: "
            "Rebuild one on this host (mplstm export CHECKPOINT --out DIR --tensorrt) or "
            "serve with the onnxruntime backend"
        )
    order = [precision] if precision else ["fp32", "fp16"]
    chosen = next((e for p in order for e in fits if e.precision == p), None)
    if chosen is None:
        raise TensorRTError(f"no {precision} engine fits this host; it has {fits[0].file}")
    if name != chosen.gpu_name:
        log.warning(
            "engine %s was built on a %s and runs on a %s (same %s): tactics may not be "
            "the best for this GPU",
            chosen.file,
            chosen.gpu_name,
            name,
            arch,
        )
    return chosen


def _cuda_runtime() -> Any:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError as exc:
            raise TensorRTError(
                "running an engine needs cuda-python (the GPU image has it)"
            ) from exc
    return cudart


def _check(result: tuple[Any, ...]) -> Any:
    err, *rest = result
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else rest


class EngineRunner:
    """A deserialised engine with one execution context: numpy in, numpy out, one call at a time."""

    def __init__(self, path: str | Path, device: int = 0) -> None:
        trt = import_tensorrt()
        self._trt = trt
        self._cudart = _cuda_runtime()
        self.path = Path(path)
        try:
            _check(self._cudart.cudaSetDevice(device))
            self._stream = _check(self._cudart.cudaStreamCreate())
        except RuntimeError as exc:
            raise TensorRTError(f"no usable CUDA GPU {device} ({exc})") from exc
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise TensorRTError(
                f"TensorRT {trt.__version__} could not load {self.path} (see its log): "
                "rebuild the engine on this host"
            )
        self._context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = [self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names]
        self.inputs = [n for n, i in zip(names, is_input, strict=True) if i]
        self.outputs = [n for n, i in zip(names, is_input, strict=True) if not i]

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch: every input by name; every output as numpy, by name."""
        missing = set(self.inputs) - set(feeds)
        if missing:
            raise ValueError(f"{self.path.name} needs inputs {sorted(missing)}")
        buffers: list[Any] = []
        try:
            for name in self.inputs:
                self._set_input(name, np.ascontiguousarray(feeds[name]), buffers)
            results = {name: self._output(name, buffers) for name in self.outputs}
            if not self._context.execute_async_v3(self._stream):
                raise RuntimeError(f"TensorRT failed to run {self.path.name}")
            for out, ptr in results.values():
                self._copy(out.ctypes.data, ptr, out.nbytes, to_device=False)
            _check(self._cudart.cudaStreamSynchronize(self._stream))
            return {name: out for name, (out, _) in results.items()}
        finally:
            for ptr in buffers:
                self._cudart.cudaFree(ptr)

    def _set_input(self, name: str, array: np.ndarray, buffers: list[Any]) -> None:
        if not self._context.set_input_shape(name, array.shape):
            raise ValueError(
                f"{name} of shape {array.shape} is outside the engine's profile "
                f"{self.engine.get_tensor_profile_shape(name, 0)} (min, opt, max)"
            )
        ptr = _check(self._cudart.cudaMalloc(max(array.nbytes, 1)))
        buffers.append(ptr)
        self._copy(ptr, array.ctypes.data, array.nbytes, to_device=True)
        self._context.set_tensor_address(name, ptr)

    def _output(self, name: str, buffers: list[Any]) -> tuple[np.ndarray, Any]:
        dtype = self._trt.nptype(self.engine.get_tensor_dtype(name))
        out = np.empty(tuple(self._context.get_tensor_shape(name)), dtype)
        ptr = _check(self._cudart.cudaMalloc(max(out.nbytes, 1)))
        buffers.append(ptr)
        self._context.set_tensor_address(name, ptr)
        return out, ptr

    def _copy(self, dst: Any, src: Any, nbytes: int, *, to_device: bool) -> None:
        kinds = self._cudart.cudaMemcpyKind
        kind = kinds.cudaMemcpyHostToDevice if to_device else kinds.cudaMemcpyDeviceToHost
        _check(self._cudart.cudaMemcpyAsync(dst, src, nbytes, kind, self._stream))

    def close(self) -> None:
        """Release the stream, the context and the engine."""
        self._cudart.cudaStreamDestroy(self._stream)
        del self._context, self.engine


class TensorRTBackend:
    """A package's engine for this host, with the mplstm plugin inside it."""

    name = "tensorrt"
    on_gpu = True

    def __init__(self, package: ModelPackage, options: BackendOptions) -> None:
        if options.device == "cpu":
            raise TensorRTError("MPLSTM_DEVICE=cpu: TensorRT needs a GPU")
        running_gpu = current_gpu(options.device_id)
        info = select_engine(package.manifest.engines, running_gpu=running_gpu)
        self._runner = EngineRunner(package.file(info.file), options.device_id)
        self._inputs = [spec.name for spec in package.manifest.inputs]
        self.description = (
            f"tensorrt {tensorrt_version()}, engine {info.file} ({info.precision}, "
            f"{info.gpu_arch}, plugin={info.plugin})"
        )

    def infer(self, clip: np.ndarray, view_mask: np.ndarray) -> InferenceOutput:
        out = self._runner(dict(zip(self._inputs, (clip, view_mask), strict=True)))
        embedding = out.get(EMBEDDING_OUTPUT)
        return InferenceOutput(
            out["logits"].astype(np.float32, copy=False),
            out["probabilities"].astype(np.float32, copy=False),
            None if embedding is None else embedding.astype(np.float32, copy=False),
        )

    def close(self) -> None:
        self._runner.close()
