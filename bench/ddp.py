"""Data-parallel training on the CPU: clips/s of 1 vs 2 processes, and communication per step.

Two measurements, side by side in one run:

1. Throughput of `mplstm train` itself (training clips/s from history.json, epochs after
   the first, clip cache warm) for 1 process x 1 thread, 1 process x 2 threads and
   2 processes (torchrun, gloo) x 1 thread, same config and global batch, in alternating
   rounds.
2. Where a 2-process step's time goes: each rank times the same training step (model of
   the config, random uint8 clips of its share of the global batch) in alternating blocks
   as training runs it (DDP + global-batch BatchNorm), under `no_sync()` (no gradient
   all-reduce), and without DDP and with plain BatchNorm (no communication at all).
   Communication share = (full - none) / full, split into the gradient all-reduce and the
   BatchNorm exchanges.

Run: .venv/bin/python bench/ddp.py [--data MANIFEST] [--rounds 2] [--epochs 3]
(without --data it writes a small synthetic set to a temporary folder first).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import report

COMMAND = ".venv/bin/python bench/ddp.py"
ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "mplstm_lipreading.toml"
# (label, processes, threads per process)
SETTINGS: tuple[tuple[str, int, int], ...] = (
    ("1 process x 1 thread", 1, 1),
    ("1 process x 2 threads", 1, 2),
    ("2 processes x 1 thread", 2, 1),
)
MODES = ("DDP step", "no gradient all-reduce", "no communication")


def torchrun(nproc: int, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc-per-node", str(nproc), *args,
    ]  # fmt: skip


def run(command: list[str], threads: int) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout


def synthetic_set(folder: Path) -> Path:
    """64 training clips of 3 views, 64x64 (the shipped config's input size)."""
    from mplstm.core.synth import SynthConfig, generate

    config = SynthConfig(
        task="lipreading", speakers=4, words=4, views=3, clips_per_pair=4, split="train"
    )
    generate(config, folder, workers=2, progress=False)
    return folder / "manifest.jsonl"


def train_args(manifest: Path, out: Path, epochs: int, threads: int, extra: list[str]) -> list[str]:
    return [
        "-m", "mplstm", "train", "--data", str(manifest), "--config", str(CONFIG),
        "--out", str(out), "--epochs", str(epochs), "--threads", str(threads),
        "--eval-split", "none", "--no-progress", *extra,
    ]  # fmt: skip


def throughput(
    manifest: Path, work: Path, rounds: int, epochs: int, extra: list[str]
) -> dict[str, float]:
    """Median training clips/s per setting (epochs after the first), alternating settings."""
    # Fill the clip cache first, so that no setting pays for decoding.
    run(torchrun(1, *train_args(manifest, work / "warm", 1, 2, extra)), 2)
    samples: dict[str, list[float]] = {label: [] for label, _, _ in SETTINGS}
    for r in range(rounds):
        for label, nproc, threads in SETTINGS:
            out = work / f"run-{r}-{nproc}x{threads}"
            run(torchrun(nproc, *train_args(manifest, out, epochs, threads, extra)), threads)
            history = json.loads((out / "history.json").read_text())
            samples[label] += [row["clips_per_s"] for row in history[1:]]
            print(f"round {r + 1}: {label}: {samples[label][-1]:.1f} clips/s", flush=True)
    return {label: statistics.median(values) for label, values in samples.items()}


def step_shares(work: Path, rounds: int, steps: int, extra: list[str]) -> dict[str, float]:
    """Seconds per 2-process step in each of MODES (from the worker's JSON)."""
    result = work / "steps.json"
    args = [__file__, "--worker", str(result), "--rounds", str(rounds), "--steps", str(steps)]
    run(torchrun(2, *args, *(f"--set={item}" for item in extra)), 1)
    return json.loads(result.read_text())


def worker(result: Path, rounds: int, steps: int, overrides: list[str]) -> None:
    """One rank of the step-time measurement (started by torchrun from `step_shares`)."""
    from torch import nn

    from mplstm.training.distributed import init_world, local_batch_size, shutdown, wrap
    from mplstm.training.models import get_model
    from mplstm.training.train import load_config

    torch.set_num_threads(1)
    world = init_world(torch.device("cpu"))
    config = load_config(CONFIG, overrides)
    data, batch = config.data, local_batch_size(config.train.batch_size, world)
    fields = {k: v for k, v in config.model.items() if k != "name"}
    torch.manual_seed(0)
    plain = get_model(config.model["name"], num_classes=4, num_views=3, **fields)
    synced = wrap(get_model(config.model["name"], num_classes=4, num_views=3, **fields), world)
    shape = (batch, 3, data.frames, data.channels, data.height, data.width)
    clips = torch.randint(0, 256, shape, dtype=torch.uint8)
    labels = torch.randint(0, 4, (batch,))
    criterion = nn.CrossEntropyLoss()
    optimizers = {
        model: torch.optim.AdamW(model.parameters(), lr=1e-4) for model in (plain, synced)
    }

    def step(model: nn.Module) -> None:
        loss = criterion(model(clips), labels)
        optimizers[model].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[model].step()

    def block(mode: str) -> float:
        world.barrier()
        start = time.perf_counter()
        for _ in range(steps):
            if mode == MODES[0]:
                step(synced)
            elif mode == MODES[1]:
                with synced.no_sync():
                    step(synced)
            else:
                step(plain)
        return world.max([time.perf_counter() - start])[0] / steps

    for mode in MODES:
        block(mode)  # warm-up
    samples: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(rounds):
        for mode in MODES:
            samples[mode].append(block(mode))
    if world.is_main:
        medians = {mode: statistics.median(values) for mode, values in samples.items()}
        result.write_text(json.dumps(medians))
    shutdown(world)


def plot(clips: dict[str, float], seconds: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    left.bar(range(len(clips)), list(clips.values()), color=["C0", "C0", "C1"])
    left.set_xticks(range(len(clips)), [label.replace(" x ", "\nx ") for label in clips])
    left.set_ylabel("training clips/s (higher is better)")
    left.set_title("mplstm train, same global batch")
    full, no_grad, none = (seconds[m] * 1e3 for m in MODES)
    parts = {
        "compute": none,
        "BatchNorm exchange": max(no_grad - none, 0.0),
        "gradient all-reduce": max(full - no_grad, 0.0),
    }
    bottom = 0.0
    for (name, value), color in zip(parts.items(), ["C0", "C2", "C3"], strict=True):
        right.bar(["2-process step"], [value], bottom=bottom, label=name, color=color, width=0.4)
        bottom += value
    right.set_ylabel("ms per step")
    right.set_title("where a 2-process step goes")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(
    clips: dict[str, float],
    seconds: dict[str, float],
    batch: int,
    rounds: int,
    data: str,
    rerun: str,
) -> str:
    single, _, double = (clips[label] for label, _, _ in SETTINGS)
    full, no_grad, none = (seconds[m] for m in MODES)
    rows = [f"| {label} | {value:.1f} | {value / single:.2f}x |" for label, value in clips.items()]
    return "\n".join(
        [
            "## Data-parallel training on the CPU (torchrun, gloo)",
            "",
            f"`mplstm train` with configs/mplstm_lipreading.toml on {data}, global batch "
            f"{batch} in every setting, training clips/s of the epochs after the first "
            f"(clip cache warm), median of {rounds} alternating round(s).",
            "",
            "| setting | clips/s | vs 1 x 1 |",
            "| --- | ---: | ---: |",
            *rows,
            "",
            f"Scaling efficiency of 2 processes over one single-thread process: "
            f"**{double / (2 * single):.0%}**.",
            "",
            f"Per 2-process step ({batch // 2} clips per rank): {full * 1e3:.0f} ms as trained; "
            f"{no_grad * 1e3:.0f} ms without the gradient all-reduce; {none * 1e3:.0f} ms with "
            f"no communication at all (plain BatchNorm, no DDP). Communication share of a "
            f"step: **{(full - none) / full:.0%}** (gradient all-reduce "
            f"{(full - no_grad) / full:.0%}, BatchNorm statistics "
            f"{(no_grad - none) / full:.0%}).",
            "",
            "![ddp](plots/ddp.png)",
            "",
            f"Rerun: `{rerun}` on a quiet machine. Machine: "
            f"{report.machine()}; {report.today()}; torch {torch.__version__}.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="manifest (default: a small synthetic set)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3, help="per run; the first is not counted")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed block (part 2)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="config override for every run, e.g. --set data.frames=10",
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.rounds, args.steps, args.overrides)
        return
    extra = [f"--set={item}" for item in args.overrides]
    with (
        tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp,
        contextlib.chdir(ROOT),
    ):
        work = Path(tmp)
        manifest = args.data or synthetic_set(work / "data")
        clips = throughput(manifest, work, args.rounds, args.epochs, extra)
        seconds = step_shares(work, max(3, args.rounds * 2), args.steps, args.overrides)
    from mplstm.training.train import load_config

    batch = load_config(CONFIG, args.overrides).train.batch_size
    data = str(args.data) if args.data else "64 synthetic 3-view 64x64 clips"
    rerun = " ".join([COMMAND, *sys.argv[1:]])
    text = markdown(clips, seconds, batch, args.rounds, data, rerun)
    print(text)
    if not args.no_write:
        plot(clips, seconds, report.plot_path("ddp"))
        report.write_section("ddp", text)


if __name__ == "__main__":
    main()
