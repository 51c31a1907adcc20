"""TensorRT engines, torch-free: names, the host's GPU, and which engine runs where.

What runs everywhere: file names, engine selection and its messages, the import
footprint. Running an engine needs an NVIDIA GPU, TensorRT and cuda-python (the GPU
image): those tests are in tests/export/test_tensorrt_build.py, marked gpu.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest

from mplstm.core.package import EngineInfo
from mplstm.inference import tensorrt
from mplstm.inference.backend import BackendUnavailableError
from mplstm.inference.tensorrt import (
    TensorRTError,
    current_gpu,
    engine_file_name,
    select_engine,
)

H100 = ("sm_90", "NVIDIA H100 80GB HBM3")


def _engine(**changes: object) -> EngineInfo:
    values: dict[str, object] = {
        "file": "model.sm_90.trt10.13.fp16.plan",
        "gpu_arch": "sm_90",
        "gpu_name": H100[1],
        "tensorrt_version": "10.13.0.35",
        "precision": "fp16",
        "plugin": True,
        "max_batch": 32,
        "frames_range": (10, 40),
    }
    values.update(changes)
    return EngineInfo(**values)  # type: ignore[arg-type]


def _simple(trt: str, arch: str, precision: str = "fp32") -> EngineInfo:
    return _engine(
        file=f"model.{arch}.{trt}.{precision}.plan",
        gpu_arch=arch,
        gpu_name="test",
        tensorrt_version=trt,
        precision=precision,
    )


# -- naming ---------------------------------------------------------------------------


def test_engine_file_name_says_gpu_arch_tensorrt_major_minor_and_precision() -> None:
    name = engine_file_name("sm_90", "10.13.0.35", "fp16")
    assert name == "model.sm_90.trt10.13.fp16.plan"
    assert engine_file_name("sm_80", "11.0.1", "fp32").endswith("sm_80.trt11.0.fp32.plan")


@pytest.mark.parametrize(
    ("arch", "version", "precision", "message"),
    [
        ("90", "10.13.0", "fp16", "gpu_arch"),
        ("sm_90", "latest", "fp16", "MAJOR.MINOR"),
        ("sm_90", "10.13.0", "int8", "precision"),
    ],
)
def test_engine_file_name_refuses_malformed_parts(
    arch: str, version: str, precision: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        engine_file_name(arch, version, precision)


# -- compatibility --------------------------------------------------------------------


def test_engine_runs_where_tensorrt_version_and_gpu_arch_are_its_own() -> None:
    select_engine((_engine(),), running_tensorrt="10.13.0.35", running_gpu=H100)


def test_engine_from_another_tensorrt_version_is_refused_naming_both_versions() -> None:
    with pytest.raises(TensorRTError) as caught:
        select_engine((_engine(),), running_tensorrt="10.12.0.36", running_gpu=H100)
    message = str(caught.value)
    assert "TensorRT 10.13.0.35" in message and "TensorRT 10.12.0.36" in message
    assert "Rebuild" in message and "onnxruntime" in message


def test_engine_for_another_gpu_arch_is_refused_naming_both_gpus() -> None:
    with pytest.raises(TensorRTError) as caught:
        select_engine(
            (_engine(),), running_tensorrt="10.13.0.35", running_gpu=("sm_80", "NVIDIA A100")
        )
    message = str(caught.value)
    assert "sm_90" in message and "sm_80 (NVIDIA A100)" in message
    assert "model.sm_90.trt10.13.fp16.plan" in message


def test_engine_on_another_gpu_model_of_the_same_arch_runs_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger=tensorrt.__name__):
        select_engine(
            (_engine(),), running_tensorrt="10.13.0.35", running_gpu=("sm_90", "NVIDIA H200")
        )
    assert "NVIDIA H200" in caplog.text


def test_tensorrt_error_is_a_package_error_and_a_backend_unavailable_error() -> None:
    from mplstm.core.package import PackageError

    assert issubclass(TensorRTError, PackageError)
    assert issubclass(TensorRTError, BackendUnavailableError)


def test_engine_on_a_host_without_tensorrt_is_refused_saying_so() -> None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(TensorRTError, match="TensorRT is not installed"):
            select_engine((_engine(),), running_gpu=H100)
    else:
        pytest.skip("TensorRT is installed here")


def test_current_gpu_without_a_cuda_driver_says_so() -> None:
    try:
        current_gpu()
    except TensorRTError as exc:
        assert "CUDA" in str(exc)
    else:
        pytest.skip("a CUDA GPU is present here")


def test_compatibility_check_imports_neither_torch_nor_onnx() -> None:
    """The service (no torch in its image) selects engines."""
    script = textwrap.dedent(
        """
        import sys
        from mplstm.core.package import EngineInfo
        from mplstm.inference.tensorrt import select_engine
        info = EngineInfo("e.plan", "sm_90", "H100", "10.13.0.35", "fp16", True, 8, (5, 9))
        select_engine(
            (info,), running_tensorrt="10.13.0.35", running_gpu=("sm_90", "H100"))
        print(sorted(m for m in ("torch", "onnx", "triton") if m in sys.modules))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


# Moved from tests/service/test_settings_and_backends.py (the service's own pick_engine).
def test_engine_from_another_tensorrt_or_gpu_is_refused_saying_so() -> None:
    engines = (_simple("10.9.0", "sm_90"), _simple("10.9.0", "sm_80", "fp16"))
    gpu = ("sm_80", "test")
    chosen = select_engine(engines, running_tensorrt="10.9.0", running_gpu=gpu)
    assert chosen.gpu_arch == "sm_80"
    with pytest.raises(BackendUnavailableError) as caught:
        select_engine(engines, running_tensorrt="10.11.0", running_gpu=("sm_90", "test"))
    assert "TensorRT 10.11.0" in str(caught.value) and "TensorRT 10.9.0, sm_90" in str(caught.value)
    with pytest.raises(BackendUnavailableError, match="GPU sm_89"):
        select_engine(engines, running_tensorrt="10.9.0", running_gpu=("sm_89", "test"))
    with pytest.raises(BackendUnavailableError, match="no TensorRT engine"):
        select_engine((), running_tensorrt="10.9.0", running_gpu=("sm_90", "test"))


def test_fp32_is_preferred_unless_a_precision_is_asked_for() -> None:
    engines = (_simple("10.9.0", "sm_90", "fp16"), _simple("10.9.0", "sm_90", "fp32"))
    where = {"running_tensorrt": "10.9.0", "running_gpu": ("sm_90", "test")}
    assert select_engine(engines, **where).precision == "fp32"
    assert select_engine(engines, precision="fp16", **where).precision == "fp16"
    with pytest.raises(TensorRTError, match="no fp32 engine"):
        select_engine(engines[:1], precision="fp32", **where)
