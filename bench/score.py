"""Batch scoring benchmark: `mplstm score`'s pipeline vs a naive decode-one-infer-one loop.

Clips/s of the scoring pipeline (decode in 1 or 2 worker processes overlapping batched
inference, `mplstm.scoring.pipeline`) and of a naive sequential loop (`load_clip` one
clip, infer it alone, next), over the same synthetic clips with the same model package
and backend, side by side in one run: every round runs each method once, in rotating
order, so a busy machine slows them alike. Clips/s come from the median round's wall
time; the decode workers start once, before the first (warm-up) round, as they start
once per `mplstm score` run (about a second each to import PyAV and numpy). The naive loop also measures
the share of time in decode vs inference; the pipeline's decode time is summed over
its workers. Target: >= 1.8x the naive loop with 2 decode workers on 2 cores.

Run: .venv/bin/python bench/score.py [--model models/demo-lipreading] [--clips 60]
     [--rounds 3] [--batch-size 8] [--no-write]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import report
from mplstm.core.manifest import ClipRecord
from mplstm.core.package import ModelPackage, load_package, resolve_package
from mplstm.core.preprocess import PreprocessConfig, load_clip
from mplstm.core.synth import VIEWS, SynthConfig, generate
from mplstm.scoring.pipeline import DecodeWorkers, StageTimes, score_clips
from mplstm.service.backends.base import Backend
from mplstm.service.backends.select import open_backend
from mplstm.service.settings import Settings

COMMAND = ".venv/bin/python bench/score.py"
TARGET = 1.8
NAIVE = "naive loop (decode one, infer one)"


@dataclass
class Method:
    """One way to score the clips, and what each of its rounds measured."""

    name: str
    run: Callable[[], tuple[float, float]]  # -> (decode s, inference s)
    wall_s: list[float] = field(default_factory=list)
    decode_s: list[float] = field(default_factory=list)
    inference_s: list[float] = field(default_factory=list)

    def median(self, values: list[float]) -> float:
        return float(np.median(values))

    def clips_per_s(self, clips: int) -> float:
        return clips / self.median(self.wall_s)

    def decode_share(self) -> float:
        decode, inference = self.median(self.decode_s), self.median(self.inference_s)
        return decode / (decode + inference)


def naive_loop(
    records: list[ClipRecord], backend: Backend, config: PreprocessConfig
) -> tuple[float, float]:
    """Decode a clip, infer it alone, go on: what a first script would do."""
    decode = inference = 0.0
    for record in records:
        start = time.perf_counter()
        clip = load_clip(dict(record.views), config)
        mid = time.perf_counter()
        backend.infer(clip.frames[None], clip.view_mask[None])
        decode, inference = decode + mid - start, inference + time.perf_counter() - mid
    return decode, inference


def pipelined(
    records: list[ClipRecord],
    backend: Backend,
    config: PreprocessConfig,
    batch: int,
    workers: DecodeWorkers,
) -> tuple[float, float]:
    """The scorer's pipeline, in memory (no output files)."""
    times = StageTimes()
    scores = score_clips(
        records, backend, config, batch_size=batch, decode_workers=workers, times=times
    )
    assert all(s.error is None for s in scores.values()), "a bench clip failed to decode"
    return times.decode_s, times.inference_s


def make_clips(package: ModelPackage, count: int, size: int, folder: Path) -> list[ClipRecord]:
    """`count` synthetic clips with the package's views (synth names its views like the demos)."""
    names = package.manifest.view_names
    if tuple(v.name for v in VIEWS[: len(names)]) != names:
        raise SystemExit(f"the package's views {names} are not synth's first {len(names)} views")
    words = 5
    config = SynthConfig(
        task="lipreading",
        speakers=2,
        words=words,
        views=len(names),
        clips_per_pair=math.ceil(count / (2 * words)),
        size=(size, size),
        split="test",
    )
    return generate(config, folder, workers=2, progress=False)[:count]


def measure(methods: list[Method], rounds: int) -> None:
    """Each method once per round, the order rotating; round 0 only warms up."""
    for r in range(rounds + 1):
        for method in methods[r % len(methods) :] + methods[: r % len(methods)]:
            start = time.perf_counter()
            decode, inference = method.run()
            if r:
                method.wall_s.append(time.perf_counter() - start)
                method.decode_s.append(decode)
                method.inference_s.append(inference)


def plot(methods: list[Method], clips: int, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    naive = methods[0].clips_per_s(clips)
    rates = [m.clips_per_s(clips) for m in methods]
    fig, ax = plt.subplots(figsize=(8, 4))
    bars = ax.barh([m.name for m in methods][::-1], rates[::-1], color="#4c72b0")
    for bar, rate in zip(bars, rates[::-1], strict=True):
        ax.annotate(
            f" {rate:.1f} clips/s ({rate / naive:.2f}×)",
            (bar.get_width(), bar.get_y() + bar.get_height() / 2),
            va="center",
            fontsize=9,
        )
    ax.axvline(TARGET * naive, color="#c44e52", linestyle="--", label=f"target {TARGET:g}× naive")
    ax.set_xlim(0, max(rates) * 1.45)
    ax.set_xlabel("clips/s (median round)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(
    methods: list[Method], clips: int, rounds: int, package: ModelPackage, args: argparse.Namespace
) -> str:
    naive = methods[0].clips_per_s(clips)
    best = methods[-1].clips_per_s(clips) / naive
    pre = package.manifest.preprocess_config()
    verdict = "met" if best >= TARGET else "**not met**"
    lines = [
        "## Batch scoring: pipelined `mplstm score` vs a naive loop",
        "",
        f"{report.machine()}, {report.today()}. `{COMMAND} --clips {clips} --rounds {rounds} "
        f"--batch-size {args.batch_size}`.",
        "",
        f"Model {package.name}/{package.version} on ONNX Runtime (CPU), {len(pre.view_names or ())} "
        f"views of {args.size}x{args.size} synthetic H.264 clips → T = {pre.frames}, "
        f"{pre.height}x{pre.width}; {clips} clips, {rounds} rounds with the methods "
        "alternating; clips/s from the median round (decode workers started once, before "
        "the warm-up round). "
        f"Target ≥ {TARGET:g}× the naive loop with 2 decode workers: {verdict} ({best:.2f}×).",
        "",
        "| method | clips/s | × naive | decode share of decode + inference time |",
        "| --- | ---: | ---: | ---: |",
    ]
    for m in methods:
        rate = m.clips_per_s(clips)
        lines.append(f"| {m.name} | {rate:.1f} | {rate / naive:.2f}× | {m.decode_share():.0%} |")
    lines += [
        "",
        "Decode share: the naive loop's own split of its time; for the pipeline, decode "
        "seconds summed over its worker processes against the main process's inference "
        "seconds (they overlap, which is the point).",
        "",
        "![batch scoring throughput](plots/score.png)",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=report.ROOT / "models" / "demo-lipreading")
    parser.add_argument("--clips", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=64, help="source frame size (default 64)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads")
    parser.add_argument(
        "--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone"
    )
    args = parser.parse_args()
    package = load_package(resolve_package(args.model))
    config = package.manifest.preprocess_config()
    backend = open_backend(
        package, Settings(backend="onnxruntime", device="cpu", intra_op_threads=args.threads)
    )
    # Worker processes live as long as a scoring run: started once, like the run's own.
    with (
        tempfile.TemporaryDirectory() as tmp,
        DecodeWorkers(1).start() as one,
        DecodeWorkers(2).start() as two,
    ):
        records = make_clips(package, args.clips, args.size, Path(tmp))
        methods = [
            Method(NAIVE, lambda: naive_loop(records, backend, config)),
            *(
                Method(
                    f"pipeline, {w.workers} decode worker{'s' * (w.workers > 1)}, "
                    f"batch {args.batch_size}",
                    lambda w=w: pipelined(records, backend, config, args.batch_size, w),
                )
                for w in (one, two)
            ),
        ]
        measure(methods, args.rounds)
    text = markdown(methods, len(records), args.rounds, package, args)
    print(text)
    if not args.no_write:
        title = f"{package.name}: {len(records)} clips, {report.machine().split(',')[1].strip()}"
        plot(methods, len(records), report.plot_path("score"), title)
        print(f"wrote {report.write_section('score', text)}")


if __name__ == "__main__":
    main()
