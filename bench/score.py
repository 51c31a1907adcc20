"""Batch scoring benchmark: `mplstm score`'s pipeline vs a naive decode-one-infer-one loop.

Clips/s of `mplstm score`'s two placements of inference and of a naive sequential loop
(`load_clip` one clip, infer it alone, next), over the same synthetic clips with the
same model package, side by side in one run: every round runs each method once, in
rotating order, so a busy machine slows them alike. The placements: inference in the
main process fed by 1 or 2 decode worker processes (`mplstm.scoring.pipeline`, what a
GPU backend uses), and 2 workers each decoding and inferring their own batches on the
CPU (`score_in_workers`, the default on a CPU backend). Clips/s come from the median round's wall
time; the decode workers start once, before the first (warm-up) round, as they start
once per `mplstm score` run (about a second each to import PyAV and numpy). The naive loop also measures
the share of time in decode vs inference; the pipeline's decode time is summed over
its workers. Target: >= 1.8x the naive loop with 2 decode workers on 2 cores, with
`mplstm score`'s default placement.

The same clips are written at several source sizes (the model input stays the
package's): how much a pipeline can gain depends on decode's share of the work, so
each size also reports its bound, the clips/s of every core busy with decode and
batched inference and nothing else (CPU times measured here, one process, inference on
one ONNX Runtime thread, which spends the least CPU per clip; the least of 3 passes).

Run: .venv/bin/python bench/score.py [--model models/demo-lipreading] [--clips 96]
     [--rounds 3] [--batch-size 8] [--sizes 64 192 320] [--no-write]
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
from mplstm.core.worker_pool import PoolThread
from mplstm.inference.backend import Backend
from mplstm.inference.options import BackendOptions
from mplstm.inference.select import open_backend
from mplstm.scoring.pipeline import StageTimes, score_clips, score_in_workers

COMMAND = ".venv/bin/python bench/score.py"
TARGET = 1.8
NAIVE = "naive loop (decode one, infer one)"


@dataclass
class Method:
    """One way to score the clips, and what each of its rounds measured."""

    name: str
    run: Callable[[], tuple[float, float]]  # -> (decode s, inference s)
    legend: str = ""  # the plot's name for it (default: name)
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
    workers: PoolThread,
) -> tuple[float, float]:
    """The scorer's pipeline, in memory (no output files)."""
    times = StageTimes()
    scores = score_clips(
        records, backend, config, batch_size=batch, decode_workers=workers, times=times
    )
    assert all(s.error is None for s in scores.values()), "a bench clip failed to decode"
    return times.decode_s, times.inference_s


def in_workers(
    records: list[ClipRecord],
    package: ModelPackage,
    config: PreprocessConfig,
    batch: int,
    workers: PoolThread,
    threads: int,
) -> tuple[float, float]:
    """Each worker decodes and infers its own batches (`mplstm score` on a CPU backend)."""
    times = StageTimes()
    groups = score_in_workers(
        records, package, config, workers, batch_size=batch, threads=threads, times=times
    )
    scores = [score for group in groups for score in group]
    assert len(scores) == len(records) and all(s.error is None for s in scores)
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


def bound(
    records: list[ClipRecord],
    backend: Backend,
    config: PreprocessConfig,
    batch: int,
    passes: int = 3,
) -> tuple[float, float, float]:
    """(decode CPU s per clip, inference CPU s per clip at `batch`, bound clips/s on every core).

    The least CPU time of `passes` passes: a neighbour on a shared host can only add to it.
    """
    decode = inference = math.inf
    for _ in range(passes):
        start = time.process_time()
        clips = [load_clip(dict(record.views), config) for record in records]
        decode = min(decode, (time.process_time() - start) / len(clips))
        frames = np.stack([clip.frames for clip in clips])
        masks = np.stack([clip.view_mask for clip in clips])
        backend.infer(frames[:batch], masks[:batch])  # warm-up
        start = time.process_time()
        for i in range(0, len(clips), batch):
            backend.infer(frames[i : i + batch], masks[i : i + batch])
        inference = min(inference, (time.process_time() - start) / len(clips))
    return decode, inference, report.cores() / (decode + inference)


@dataclass
class SizeResult:
    """Every method's rounds, and the bound, for clips of one source size."""

    size: int
    clips: int
    methods: list[Method]
    decode_cpu_s: float
    inference_cpu_s: float
    bound: float

    def naive(self) -> float:
        return self.methods[0].clips_per_s(self.clips)

    def best(self) -> float:
        return self.methods[-1].clips_per_s(self.clips) / self.naive()


def plot(results: list[SizeResult], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m.legend or m.name for m in results[0].methods[1:]] + ["bound (every core busy)"]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        ratios = [
            (r.methods[k + 1].clips_per_s(r.clips) if k + 1 < len(r.methods) else r.bound)
            / r.naive()
            for r in results
        ]
        xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(results))]
        bars = ax.bar(xs, ratios, width, label=name, hatch="//" if "bound" in name else None)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.axhline(TARGET, color="#c44e52", linestyle="--", label=f"target {TARGET:g}×")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(results)), [f"{r.size}x{r.size} source" for r in results])
    ax.set_ylabel("clips/s ÷ naive loop's")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_ylim(0, 2.6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(
    results: list[SizeResult], rounds: int, package: ModelPackage, args: argparse.Namespace
) -> str:
    pre = package.manifest.preprocess_config()
    sizes = " ".join(str(r.size) for r in results)
    met = [r for r in results if r.best() >= TARGET]
    verdict = (
        "met at " + ", ".join(f"{r.size}x{r.size} ({r.best():.2f}×)" for r in met)
        if met
        else "**not met**"
    )
    missed = [r for r in results if r.best() < TARGET]
    if met and missed:
        verdict += "; **not met** at " + ", ".join(
            f"{r.size}x{r.size} ({r.best():.2f}×, bound {r.bound / r.naive():.2f}×"
            + (
                ": the target is above what 2 busy cores can give there)"
                if r.bound / r.naive() < TARGET
                else ")"
            )
            for r in missed
        )
    lines = [
        "## Batch scoring: pipelined `mplstm score` vs a naive loop",
        "",
        f"{report.machine()}, {report.today()}. `{COMMAND} --clips {results[0].clips} "
        f"--rounds {rounds} --batch-size {args.batch_size} --sizes {sizes}`.",
        "",
        f"Model {package.name}/{package.version} on ONNX Runtime on the CPU (naive loop and "
        "main-process inference: its default threads, one per core; in the workers: one "
        "thread each), "
        f"{len(pre.view_names or ())} views of synthetic H.264 clips at each source size, "
        f"decoded to the model's T = {pre.frames}, {pre.height}x{pre.width}; "
        f"{results[0].clips} clips per size, {rounds} rounds with the methods alternating; "
        "clips/s from the median round (decode workers started once, before the warm-up "
        f"round). Target ≥ {TARGET:g}× the naive loop with 2 decode workers and "
        f"`mplstm score`'s default placement on a CPU (the last row of each size): {verdict}.",
        "",
        "| source | method | clips/s | × naive | decode share of decode + inference time |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for r in results:
        for m in r.methods:
            rate = m.clips_per_s(r.clips)
            lines.append(
                f"| {r.size}x{r.size} | {m.name} | {rate:.1f} | {rate / r.naive():.2f}× "
                f"| {m.decode_share():.0%} |"
            )
        lines.append(
            f"| {r.size}x{r.size} | bound: {report.cores()} cores / ({r.decode_cpu_s * 1e3:.1f} ms "
            f"decode + {r.inference_cpu_s * 1e3:.1f} ms inference CPU per clip) "
            f"| {r.bound:.1f} | {r.bound / r.naive():.2f}× | |"
        )
    lines += [
        "",
        "Decode share: the naive loop's own split of its time; for the other methods, "
        "decode seconds summed over the worker processes against inference seconds (they "
        "overlap, which is the point).",
        "",
        "The bound is below 2× because the naive loop already runs inference on both "
        "cores (ONNX Runtime's threads) and batching saves no CPU on this convolutional "
        "model: overlapping wins back only the time the naive loop decodes on one core. "
        "Share of the bound reached with inference in the main process / in the workers: "
        + ", ".join(
            f"{r.size}x{r.size} {r.methods[-2].clips_per_s(r.clips) / r.bound:.0%} / "
            f"{r.methods[-1].clips_per_s(r.clips) / r.bound:.0%}"
            for r in results
        )
        + ". Inference in the main process pays a fixed cost per clip (frames pickled back "
        "from the worker processes; ONNX Runtime's two threads and two decoders, four "
        "runnable threads on two cores, evicting each other's caches), which weighs most "
        "where a clip is cheapest to decode. With inference in the workers no frame "
        "crosses a process and two threads run on two cores; a GPU backend still infers "
        "in the main process, where the GPU gets every clip in its batches.",
        "",
        "![batch scoring throughput](plots/score.png)",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=report.ROOT / "models" / "demo-lipreading")
    # Enough clips that a round measures the steady state: filling the pipeline and
    # draining its last batch are a fixed cost per round, which a scoring job pays once.
    parser.add_argument("--clips", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[64, 192, 320], help="source frame sizes"
    )
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads")
    parser.add_argument(
        "--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone"
    )
    args = parser.parse_args()
    package = load_package(resolve_package(args.model))
    config = package.manifest.preprocess_config()
    backend = open_backend(package, BackendOptions("onnxruntime", "cpu", args.threads))
    single = open_backend(package, BackendOptions("onnxruntime", "cpu", 1))
    results: list[SizeResult] = []
    # Worker processes live as long as a scoring run: started once, like the run's own.
    with (
        tempfile.TemporaryDirectory() as tmp,
        PoolThread(1).start() as one,
        PoolThread(2).start() as two,
    ):
        for size in args.sizes:
            records = make_clips(package, args.clips, size, Path(tmp) / str(size))
            methods = [
                Method(NAIVE, lambda records=records: naive_loop(records, backend, config)),
                *(
                    Method(
                        f"inference in the main process, {w.workers} decode "
                        f"worker{'s' * (w.workers > 1)}, batch {args.batch_size}",
                        lambda w=w, records=records: pipelined(
                            records, backend, config, args.batch_size, w
                        ),
                        legend=f"inference in the main process, {w.workers} decode "
                        f"worker{'s' * (w.workers > 1)}",
                    )
                    for w in (one, two)
                ),
                Method(
                    f"inference in the workers: 2 workers, each decoding and inferring "
                    f"batches of {args.batch_size} (the default on a CPU)",
                    lambda records=records: in_workers(
                        records, package, config, args.batch_size, two, args.threads
                    ),
                    legend="inference in the 2 workers (default on a CPU)",
                ),
            ]
            measure(methods, args.rounds)
            decode, inference, most = bound(records, single, config, args.batch_size)
            results.append(SizeResult(size, len(records), methods, decode, inference, most))
            print(f"{size}x{size}: {results[-1].best():.2f}x naive", flush=True)
    text = markdown(results, args.rounds, package, args)
    print(text)
    if not args.no_write:
        title = f"{package.name}: {report.machine().split(',')[1].strip()}"
        plot(results, report.plot_path("score"), title)
        print(f"wrote {report.write_section('score', text)}")


if __name__ == "__main__":
    main()
