"""Part 1: the host. GPU, compute capability, memory, driver, CUDA, and package versions.

Every version is recorded next to our pin in pyproject.toml: a GPU host lent for minutes
has what it has, and a figure means something only with the versions that produced it.
"""

from __future__ import annotations

import importlib
import platform
import shutil
import subprocess
import sys
from typing import Any

from bench.gpu.common import ROOT, Context

ABSENT = "absent"
# Import name → distribution name in pyproject.toml's pins.
PACKAGES = {
    "torch": "torch",
    "triton": "triton",
    "onnxruntime": "onnxruntime",
    "tensorrt": "tensorrt",
    "onnx": "onnx",
    "av": "av",
    "numpy": "numpy",
}


def pins() -> dict[str, str]:
    """Distribution → pinned version, from every dependency list in pyproject.toml, and
    "python" → requires-python."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10 on a GPU host: versions are still recorded
        return {}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        specs.extend(extra)
    out: dict[str, str] = {"python": project.get("requires-python", "")}
    for spec in specs:
        name, sep, version = spec.partition("==")
        if sep:
            out.setdefault(name.strip(), version.strip())
    return out


def version_of(module: str) -> str:
    """The module's __version__, or "absent" (or why it failed to import)."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return ABSENT
    except Exception as exc:  # a broken install (missing CUDA libs) is worth recording
        return f"{ABSENT} (import failed: {type(exc).__name__}: {exc})"[:200]
    return str(getattr(mod, "__version__", "unknown"))


def driver_version() -> str:
    """The NVIDIA driver version from nvidia-smi, or "absent"."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ABSENT
    try:
        out = subprocess.run(
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown (nvidia-smi: {exc})"
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else "unknown"


def gpu_facts() -> dict[str, Any]:
    """The CUDA device torch sees (device 0), or "absent" for each fact."""
    facts: dict[str, Any] = {
        "gpu": ABSENT,
        "compute_capability": ABSENT,
        "memory_gib": ABSENT,
        "gpu_count": 0,
        "driver": driver_version(),
        "cuda_runtime_of_torch": ABSENT,
        "cudnn": ABSENT,
    }
    try:
        import torch
    except ImportError:
        return facts
    facts["cuda_runtime_of_torch"] = torch.version.cuda or ABSENT
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts.update(
            gpu=props.name,
            compute_capability=f"{props.major}.{props.minor} (sm_{props.major}{props.minor})",
            memory_gib=round(props.total_memory / 2**30, 1),
            gpu_count=torch.cuda.device_count(),
            multiprocessors=props.multi_processor_count,
        )
    if torch.backends.cudnn.is_available():
        facts["cudnn"] = str(torch.backends.cudnn.version())
    return facts


def git_commit() -> str:
    """The checkout's commit (and whether it has local changes), or "unknown"."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}{' (with local changes)' if dirty else ''}"


def run(ctx: Context) -> dict[str, Any]:
    """Part 1: what this host is and has."""
    pinned = pins()
    versions = {
        name: {"found": version_of(name), "pinned": pinned.get(dist, "")}
        for name, dist in PACKAGES.items()
    }
    ort_providers: list[str] = []
    if versions["onnxruntime"]["found"] != ABSENT:
        import onnxruntime as ort

        ort_providers = list(ort.get_available_providers())
    results = {
        **gpu_facts(),
        "versions": versions,
        "onnxruntime_providers": ort_providers,
        "python": {"found": sys.version.split()[0], "pinned": pinned.get("python", "")},
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": _cpu_count(),
        "commit": git_commit(),
    }
    ctx.log(
        f"host: GPU {results['gpu']} ({results['compute_capability']}), driver "
        f"{results['driver']}, CUDA {results['cuda_runtime_of_torch']}, torch "
        f"{versions['torch']['found']}, triton {versions['triton']['found']}"
    )
    return {"device": "this host (facts, no device figures)", "results": results}


def _cpu_count() -> int:
    from mplstm.core.cpus import usable_cpus

    return usable_cpus()
