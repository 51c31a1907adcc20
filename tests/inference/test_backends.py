"""Opening a package's backend: providers, `auto`'s fallback, what TensorRT needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from mplstm.core.package import load_package
from mplstm.inference.backend import BackendUnavailableError
from mplstm.inference.onnxruntime import choose_providers
from mplstm.inference.options import BackendChoice, BackendOptions
from mplstm.inference.select import open_backend


def test_providers_prefer_tensorrt_then_cuda_then_cpu() -> None:
    available = ["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"]
    assert choose_providers(BackendOptions(device="auto"), available) == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert choose_providers(BackendOptions(device="cpu"), available) == ["CPUExecutionProvider"]
    assert choose_providers(BackendOptions(device="auto"), ["CPUExecutionProvider"]) == [
        "CPUExecutionProvider"
    ]
    with pytest.raises(BackendUnavailableError, match="onnxruntime-gpu"):
        choose_providers(BackendOptions(device="cuda"), ["CPUExecutionProvider"])


def test_auto_falls_back_to_onnxruntime_and_explicit_tensorrt_says_why_not(
    package_dir: Path,
) -> None:
    package = load_package(package_dir)
    backend = open_backend(package, BackendOptions(BackendChoice.AUTO))
    assert backend.name == "onnxruntime"
    backend.close()
    with pytest.raises(BackendUnavailableError):
        open_backend(package, BackendOptions(BackendChoice.TENSORRT))


def test_native_tensorrt_backend_serves_a_package_engine(package_dir: Path) -> None:
    pytest.importorskip(
        "tensorrt", reason="TensorRT comes with the GPU image (NVIDIA's base image), not PyPI"
    )
    package = load_package(package_dir)
    if not package.manifest.engines:
        pytest.skip("the test package has no engine: engines are built on a GPU host")
    from mplstm.inference.tensorrt import TensorRTBackend

    backend = TensorRTBackend(package, BackendOptions())
    assert backend.name == "tensorrt"


def test_explicit_providers_are_asked_for_as_given_and_missing_ones_refused() -> None:
    available = ["CPUExecutionProvider", "CUDAExecutionProvider"]
    options = BackendOptions(providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    assert choose_providers(options, available) == list(options.providers)
    with pytest.raises(BackendUnavailableError, match="MPLSTM_ORT_PROVIDERS"):
        choose_providers(BackendOptions(providers=("OpenVINOExecutionProvider",)), available)


def test_explicit_tensorrt_on_the_cpu_is_refused_before_anything_opens(package_dir: Path) -> None:
    package = load_package(package_dir)
    with pytest.raises(BackendUnavailableError, match="needs a GPU"):
        open_backend(package, BackendOptions(BackendChoice.TENSORRT, device="cpu"))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("device", "gpu0", "device must be"), ("threads", -1, "threads must be")],
)
def test_backend_options_refuse_bad_values(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BackendOptions(**{field: value})  # type: ignore[arg-type]
