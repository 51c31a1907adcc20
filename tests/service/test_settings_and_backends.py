"""Settings validation, backend choice and the TensorRT engine check (no server needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from service_helpers import DROPOUT_MODEL

from mplstm.core.package import EngineInfo, load_package
from mplstm.service.backends.base import BackendUnavailableError
from mplstm.service.backends.onnxruntime import choose_providers
from mplstm.service.backends.select import open_backend
from mplstm.service.backends.tensorrt import pick_engine
from mplstm.service.settings import BackendChoice, SettingsError, load_settings


def _engine(trt: str, arch: str, precision: str = "fp32") -> EngineInfo:
    return EngineInfo(
        file=f"model.{arch}.{trt}.plan",
        gpu_arch=arch,
        gpu_name="test",
        tensorrt_version=trt,
        precision=precision,
        plugin=True,
        max_batch=32,
        frames_range=(4, 16),
    )


def test_bad_settings_fail_at_start_naming_each_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MPLSTM_MAX_BATCH", "0")
    monkeypatch.setenv("MPLSTM_BACKEND", "cuda-magic")
    monkeypatch.setenv("MPLSTM_DEVICE", "gpu0")
    monkeypatch.setenv("MPLSTM_VIDEO_INFERENCE", "gpu")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    for variable in (
        "MPLSTM_MAX_BATCH",
        "MPLSTM_BACKEND",
        "MPLSTM_DEVICE",
        "MPLSTM_VIDEO_INFERENCE",
    ):
        assert variable in message


def test_api_keys_come_from_the_list_and_the_file(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("# comment\nk3\n\n")
    settings = load_settings(api_keys=" k1,k2 ,", api_key_file=key_file)
    assert settings.load_api_keys() == {"k1", "k2", "k3"}
    with pytest.raises(SettingsError, match="MPLSTM_API_KEY_FILE"):
        load_settings(api_key_file=tmp_path / "missing")


def test_mplstm_serve_refuses_bad_settings_with_exit_status_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPLSTM_")}
    env["MPLSTM_MAX_DELAY_MS"] = "-1"
    run = subprocess.run(
        [sys.executable, "-m", "mplstm", "serve", "--models", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "MPLSTM_MAX_DELAY_MS" in run.stderr


def test_engine_from_another_tensorrt_or_gpu_is_refused_saying_so() -> None:
    engines = (_engine("10.9.0", "sm_90"), _engine("10.9.0", "sm_80", "fp16"))
    assert pick_engine(engines, "10.9.0", "sm_80").gpu_arch == "sm_80"
    with pytest.raises(BackendUnavailableError) as caught:
        pick_engine(engines, "10.11.0", "sm_90")
    assert "TensorRT 10.11.0" in str(caught.value) and "TensorRT 10.9.0, sm_90" in str(caught.value)
    with pytest.raises(BackendUnavailableError, match="GPU sm_89"):
        pick_engine(engines, "10.9.0", "sm_89")
    with pytest.raises(BackendUnavailableError, match="no TensorRT engine"):
        pick_engine((), "10.9.0", "sm_90")


def test_providers_prefer_tensorrt_then_cuda_then_cpu() -> None:
    available = ["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"]
    assert choose_providers("auto", available) == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert choose_providers("cpu", available) == ["CPUExecutionProvider"]
    assert choose_providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(BackendUnavailableError, match="onnxruntime-gpu"):
        choose_providers("cuda", ["CPUExecutionProvider"])


def test_auto_falls_back_to_onnxruntime_and_explicit_tensorrt_says_why_not(repo: Path) -> None:
    package = load_package(repo / DROPOUT_MODEL / "1")
    backend = open_backend(package, load_settings(backend=BackendChoice.AUTO))
    assert backend.name == "onnxruntime"
    backend.close()
    with pytest.raises(BackendUnavailableError):
        open_backend(package, load_settings(backend=BackendChoice.TENSORRT))


def test_native_tensorrt_backend_serves_a_package_engine(repo: Path) -> None:
    pytest.importorskip(
        "tensorrt", reason="TensorRT comes with the GPU image (NVIDIA's base image), not PyPI"
    )
    package = load_package(repo / DROPOUT_MODEL / "1")
    if not package.manifest.engines:
        pytest.skip("the test package has no engine: engines are built on a GPU host")
    from mplstm.service.backends.tensorrt import TensorRTBackend

    backend = TensorRTBackend(package)
    assert backend.name == "tensorrt"
