"""Whole demo model on the CPU: ONNX Runtime (the package's model.onnx) vs PyTorch eager.

Latency at batch 1 and throughput at batch 32, uint8 clips in, logits out, all views
present, both runtimes with the same intra-op threads, in alternating rounds in one
process so that the ratio holds on a busy machine. The PyTorch model is rebuilt from
the package's manifest (family and config; weights do not change the cost).

Run: .venv/bin/python bench/model.py [--package models/demo-lipreading/1] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench/onnx_cell.py

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import report
from mplstm.core.package import ONNX_NAME, ModelPackage, load_package
from mplstm.training import cell_cpu
from mplstm.training.models import get_model

COMMAND = ".venv/bin/python bench/model.py"
RUNTIMES = ("ONNX Runtime", "PyTorch eager")
BATCHES = (1, 32)


def torch_model(package: ModelPackage) -> torch.nn.Module:
    """The package's architecture in PyTorch (untrained weights: same cost)."""
    config = dict(package.manifest.training["model_config"])
    return get_model(package.manifest.model_family, **config).eval()


def onnx_session(package: ModelPackage, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(
        str(package.path / ONNX_NAME), options, providers=["CPUExecutionProvider"]
    )


def forwards(package: ModelPackage, batch: int, threads: int) -> dict[str, Callable[[], object]]:
    """One forward of each runtime on the same random batch of clips."""
    manifest = package.manifest
    pre = manifest.preprocess
    shape = (batch, len(manifest.view_names), pre.frames, pre.channels, pre.height, pre.width)
    clip = np.random.default_rng(batch).integers(0, 256, shape, np.uint8)
    mask = np.ones(shape[:2], bool)
    session = onnx_session(package, threads)
    model = torch_model(package)
    clip_t, mask_t = torch.from_numpy(clip), torch.from_numpy(mask)

    def eager() -> object:
        # Op by op: the MP-LSTM layer's fused CPU recurrence is not eager PyTorch (it is
        # timed against nn.LSTM in bench/cell.py).
        with torch.no_grad(), cell_cpu.disabled():
            return model(clip_t, mask_t)

    feed = {"clip": clip, "view_mask": mask}
    return dict(zip(RUNTIMES, [lambda: session.run(["logits"], feed), eager], strict=True))


def measure(package: ModelPackage, rounds: int, threads: int) -> dict[int, dict[str, float]]:
    """Median ms per forward, per batch size and runtime, alternating runtimes each round."""
    torch.set_num_threads(threads)
    results: dict[int, dict[str, float]] = {}
    for batch in BATCHES:
        fns = forwards(package, batch, threads)
        for fn in fns.values():
            fn()
            fn()
        calls = max(2, 24 // batch)
        samples: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(rounds):
            for name, fn in fns.items():
                start = time.perf_counter()
                for _ in range(calls):
                    fn()
                samples[name].append((time.perf_counter() - start) / calls * 1e3)
        results[batch] = {name: float(np.median(s)) for name, s in samples.items()}
        print(f"B={batch}: " + ", ".join(f"{n} {v:.1f} ms" for n, v in results[batch].items()))
    return results


def plot(results: dict[int, dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
    for ax, batch in zip(axes, BATCHES, strict=True):
        values = [results[batch][r] for r in RUNTIMES]
        if batch == 1:
            ax.bar(RUNTIMES, values, color=["C0", "C1"])
            ax.set_ylabel("latency, ms (lower is better)")
        else:
            ax.bar(RUNTIMES, [batch / v * 1e3 for v in values], color=["C0", "C1"])
            ax.set_ylabel("clips/s (higher is better)")
        ax.set_title(f"batch {batch}")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(package: ModelPackage, results: dict[int, dict[str, float]], threads: int) -> str:
    m = package.manifest
    pre = m.preprocess
    ort_ms, torch_ms = (results[1][r] for r in RUNTIMES)
    ort_b, torch_b = (32 / results[32][r] * 1e3 for r in RUNTIMES)
    return "\n".join(
        [
            "## Whole demo model on the CPU: ONNX Runtime vs PyTorch eager",
            "",
            f"`{m.name}/{m.version}` ({m.model_family}, {len(m.view_names)} views x {pre.frames} "
            f"frames x {pre.channels}x{pre.height}x{pre.width} uint8 in, logits out), "
            f"{threads} intra-op threads each, median over alternating rounds.",
            "",
            "| | ONNX Runtime | PyTorch eager | PyTorch / ORT |",
            "| --- | ---: | ---: | ---: |",
            f"| latency, batch 1 (ms) | {ort_ms:.1f} | {torch_ms:.1f} | "
            f"**{torch_ms / ort_ms:.2f}x** |",
            f"| throughput, batch 32 (clips/s) | {ort_b:.0f} | {torch_b:.0f} | "
            f"**{ort_b / torch_b:.2f}x** |",
            "",
            "![model](plots/model.png)",
            "",
            f"Rerun: `{COMMAND} --package {package.path}`. Machine: {report.machine()}; "
            f"{report.today()}; onnxruntime {ort.__version__}, torch {torch.__version__}.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, default=Path("models/demo-lipreading/1"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    package = load_package(args.package)
    results = measure(package, args.rounds, args.threads)
    if not args.no_write:
        plot(results, report.plot_path("model"), f"{package.name}: ORT vs PyTorch, CPU")
        report.write_section("model", markdown(package, results, args.threads))


if __name__ == "__main__":
    main()
