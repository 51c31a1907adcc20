"""MP-LSTM layer forward time against torch.nn.LSTM of the same hidden size, side by side.

The LSTM reads the P views concatenated (input P·D), so both layers do the same
input-projection FLOPs and one [B, U] x [U, 4U] recurrent matmul per step; the
MP-LSTM adds its P element-wise gate blocks (DESIGN.md §2: target <= 1.5x). The
MP-LSTM is timed on its fused CPU recurrence (what inference runs) and on the eager one.
Runs alternate between the two layers so that load from other processes falls on
both; each figure is the median of the repeats.

    python -m bench.cell                      # P=5, D=U=256, T=30, B in 1, 8, 32
    python -m bench.cell --repeats 60 --batches 1 8 32 64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bench import report
from mplstm.training import cell_cpu
from mplstm.training.cell import MPLSTM

TARGET = 1.5


@dataclass
class Row:
    threads: int
    batch: int
    mplstm_ms: float
    masked_ms: float
    eager_ms: float
    lstm_ms: float

    @property
    def ratio(self) -> float:
        return self.mplstm_ms / self.lstm_ms

    @property
    def masked_ratio(self) -> float:
        return self.masked_ms / self.lstm_ms

    @property
    def eager_ratio(self) -> float:
        return self.eager_ms / self.lstm_ms


def time_side_by_side(
    fns: list[Callable[[], object]], repeats: int, warmup: int = 3
) -> list[float]:
    """Median wall time (ms) of each fn, the fns run in turn within every repeat."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, times in zip(fns, samples, strict=True):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
    return [statistics.median(times) for times in samples]


def measure(args: argparse.Namespace, threads: int, batch: int) -> Row:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    views, dim = args.views, args.dim
    mplstm = MPLSTM(dim, args.hidden, views).eval()
    lstm = torch.nn.LSTM(views * dim, args.hidden, batch_first=True).eval()
    x = torch.randn(batch, args.steps, views, dim)
    joint = x.reshape(batch, args.steps, views * dim)
    mask = torch.ones(batch, views, dtype=torch.bool)
    mask[:, -1] = False  # one camera missing: the masked path

    def eager() -> object:
        with cell_cpu.disabled():
            return mplstm(x)

    with torch.no_grad():
        mp, masked, eager_ms, ref = time_side_by_side(
            [lambda: mplstm(x), lambda: mplstm(x, mask), eager, lambda: lstm(joint)],
            args.repeats,
        )
    return Row(threads, batch, mp, masked, eager_ms, ref)


def plot(rows: list[Row], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for threads in sorted({r.threads for r in rows}):
        sub = [r for r in rows if r.threads == threads]
        batches = [r.batch for r in sub]
        ax.plot(batches, [r.ratio for r in sub], "o-", label=f"all views, {threads} thread(s)")
        ax.plot(
            batches,
            [r.masked_ratio for r in sub],
            "s--",
            label=f"1 view masked, {threads} thread(s)",
        )
        ax.plot(
            batches,
            [r.eager_ratio for r in sub],
            "x:",
            label=f"eager recurrence, {threads} thread(s)",
        )
    ax.axhline(TARGET, color="gray", linestyle=":", label=f"target {TARGET}x")
    ax.axhline(1.0, color="black", linewidth=0.5)
    ax.set_xscale("log", base=2)
    ticks = sorted({r.batch for r in rows})
    ax.set_xticks(ticks, [str(b) for b in ticks])
    ax.set_xlabel("batch size B")
    ax.set_ylabel("MPLSTM time / nn.LSTM time")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(report.plot_path("cell"), dpi=120)
    plt.close(fig)


def _shell_args(argv: list[str]) -> str:
    """The rerun command's arguments, without the free-text note."""
    shown: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--note":
            skip = True
        elif not arg.startswith("--note="):
            shown.append(arg)
    return "".join(f" {a}" for a in shown)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--views", type=int, default=5, help="P")
    parser.add_argument("--dim", type=int, default=256, help="D, per view")
    parser.add_argument("--hidden", type=int, default=256, help="U")
    parser.add_argument("--steps", type=int, default=30, help="T")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=40)
    cores = report.cores()
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=sorted({1, cores}),
        help="torch intra-op thread counts to run (default: 1 and every usable core)",
    )
    parser.add_argument("--note", default="", help="a line added to the section (run conditions)")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    rows = [measure(args, threads, b) for threads in args.threads for b in args.batches]
    shape = f"P={args.views}, D={args.dim}, U={args.hidden}, T={args.steps}"
    lines = [
        "## MP-LSTM layer vs torch.nn.LSTM (CPU forward)",
        "",
        f"{shape}, fp32, `torch.no_grad()`, median of {args.repeats} runs, the layers "
        f"alternating. torch.nn.LSTM reads the views concatenated (input P·D = "
        f"{args.views * args.dim}), same hidden size. Target: MP-LSTM <= {TARGET}x the LSTM. "
        "MPLSTM runs its fused CPU recurrence (mplstm/training/cell_cpu.cpp), as it does "
        "wherever no gradient is needed; the eager column is the same layer with the "
        "recurrence in eager PyTorch ops, the path training differentiates.",
        "",
        "| threads | B | nn.LSTM (ms) | MPLSTM (ms) | ratio | 1 view masked (ms) | ratio "
        "| eager recurrence (ms) | ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.threads} | {r.batch} | {r.lstm_ms:.2f} | {r.mplstm_ms:.2f} | "
            f"**{r.ratio:.2f}x** | {r.masked_ms:.2f} | {r.masked_ratio:.2f}x | "
            f"{r.eager_ms:.2f} | {r.eager_ratio:.2f}x |"
        )
    if args.note:
        lines += ["", args.note]
    lines += [
        "",
        "![MP-LSTM / LSTM forward time](plots/cell.png)",
        "",
        f"Command: `python -m bench.cell{_shell_args(argv)}`. "
        f"Machine: {report.machine()}. Date: {report.today()}. torch {torch.__version__}.",
    ]
    plot(rows, f"MP-LSTM / nn.LSTM forward time, {shape}")
    path = report.write_section("cell", "\n".join(lines))
    print("\n".join(lines))
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
