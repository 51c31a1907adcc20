"""Decode benchmark: 5-view clips/s through the full core pipeline vs a bare PyAV decode loop.

Both run over the same H.264 .mp4 files, side by side in one process, in alternating
rounds, so the ratio is fair even on a busy machine. The bare loop opens each file and
decodes every frame with PyAV; it does not convert frames to arrays (that is part of
the pipeline's cost). It runs twice: with the pipeline's decoder settings (one thread)
and with PyAV's defaults. The pipeline is `load_clip`: decode each view, resize/crop
every frame to the model size, sync, sample T frames, one uint8 [V, T, C, H, W] array.

Run: .venv/bin/python bench/decode.py [--rounds 9] [--clips 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import report
from mplstm.core.decode import DECODER_THREADS
from mplstm.core.preprocess import PreprocessConfig, load_clip
from mplstm.core.video_writer import write_video

VIEWS = 5
SECONDS = 1.5
FPS = 30
COMMAND = ".venv/bin/python bench/decode.py"
TARGET = 1.3


@dataclass(frozen=True)
class Setting:
    """One row of the table: source clips and the model input they become."""

    label: str
    source_hw: tuple[int, int]
    config: PreprocessConfig


SETTINGS = (
    Setting("96x96 → 88x88 gray", (96, 96), PreprocessConfig(frames=20, height=88, width=88)),
    Setting(
        "96x96 → 88x88 RGB", (96, 96), PreprocessConfig(frames=20, height=88, width=88, channels=3)
    ),
    Setting("320x240 → 88x88 gray", (240, 320), PreprocessConfig(frames=20, height=88, width=88)),
)


def write_clips(folder: Path, count: int, height: int, width: int) -> list[list[Path]]:
    """`count` clips of VIEWS views: moving texture plus noise, so H.264 has real work to do."""
    rng = np.random.default_rng(0)
    frames_n = round(SECONDS * FPS)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    t = np.arange(frames_n, dtype=np.float32)[:, None, None]
    clips = []
    for c in range(count):
        paths = []
        for v in range(VIEWS):
            phase = rng.uniform(0, 2 * np.pi)
            texture = np.sin((xx + 3 * t + 10 * v) / 9 + phase) * np.cos((yy - 2 * t) / 7)
            frames = 128 + 60 * texture + rng.normal(0, 8, (frames_n, height, width))
            path = folder / f"{height}x{width}_clip{c}_view{v}.mp4"
            paths.append(write_video(path, frames.clip(0, 255).astype(np.uint8), FPS))
        clips.append(paths)
    return clips


def bare_decode(paths: Sequence[Path], threads: int | None) -> int:
    """Open each file and decode every frame with PyAV, nothing else; returns frames decoded."""
    decoded = 0
    for path in paths:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if threads is not None:
                stream.codec_context.thread_count = threads
            for _ in container.decode(stream):
                decoded += 1
    return decoded


@dataclass
class Timing:
    wall_s: list[float]
    cpu_s: list[float]

    def best_wall(self) -> float:
        return min(self.wall_s)

    def median_cpu(self) -> float:
        return float(np.median(self.cpu_s))


def measure(methods: dict[str, Callable[[], object]], rounds: int) -> dict[str, Timing]:
    """Run every method once per round, rotating the order; wall and process-CPU seconds."""
    timings = {name: Timing([], []) for name in methods}
    names = list(methods)
    for r in range(rounds + 1):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            wall, cpu = time.perf_counter(), time.process_time()
            methods[name]()
            if r:  # round 0 warms caches and code paths
                timings[name].wall_s.append(time.perf_counter() - wall)
                timings[name].cpu_s.append(time.process_time() - cpu)
    return timings


def run_setting(setting: Setting, clips: list[list[Path]], rounds: int) -> dict[str, Timing]:
    config = setting.config
    methods: dict[str, Callable[[], object]] = {
        "bare decode, PyAV default threads": lambda: [bare_decode(c, None) for c in clips],
        f"bare decode, {DECODER_THREADS} thread": lambda: [
            bare_decode(c, DECODER_THREADS) for c in clips
        ],
        "pipeline (load_clip)": lambda: [load_clip(c, config) for c in clips],
    }
    if setting is SETTINGS[0]:
        pool = ThreadPoolExecutor(2)
        methods["pipeline, 2 threads across clips"] = lambda: list(
            pool.map(lambda c: load_clip(c, config), clips)
        )
        methods["bare decode 1 thread, 2 threads across clips"] = lambda: list(
            pool.map(lambda c: bare_decode(c, DECODER_THREADS), clips)
        )
    return measure(methods, rounds)


def plot(results: dict[str, dict[str, Timing]], clips: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = ["bare decode, PyAV default threads", f"bare decode, {DECODER_THREADS} thread"]
    methods.append("pipeline (load_clip)")
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(methods)
    x = np.arange(len(results))
    for i, method in enumerate(methods):
        rates = [clips / timings[method].best_wall() for timings in results.values()]
        ax.bar(x + (i - 1) * width, rates, width, label=method)
    for xi, timings in zip(x, results.values(), strict=True):
        ratio = _ratio(timings)
        top = clips / timings["pipeline (load_clip)"].best_wall()
        ax.annotate(f"{ratio:.2f}×", (xi + width, top), ha="center", va="bottom", fontsize=9)
    ax.set_xticks(x, list(results))
    ax.set_ylabel(f"{VIEWS}-view clips/s (best of rounds)")
    ax.set_title("core pipeline vs bare PyAV decode (label: pipeline / bare 1-thread time)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _ratio(timings: dict[str, Timing]) -> float:
    return (
        timings["pipeline (load_clip)"].best_wall()
        / timings[f"bare decode, {DECODER_THREADS} thread"].best_wall()
    )


def markdown(
    results: dict[str, dict[str, Timing]], costs: tuple[float, float], clips: int, rounds: int
) -> str:
    bare = f"bare decode, {DECODER_THREADS} thread"
    lines = [
        "## Decode: core pipeline vs bare PyAV decode",
        "",
        f"{clips} clips × {VIEWS} views × {SECONDS:g} s at {FPS} fps, H.264 .mp4 (libx264, "
        f"written by `write_video`), T = 20 sampled frames. {rounds} rounds, methods "
        "alternating within each round; clips/s from the best round's wall time, CPU "
        "from the median round's process time. The bare loop opens each file and decodes "
        "every frame with PyAV, without converting frames to arrays; the pipeline is "
        "`load_clip` (limits, timestamps, every frame scaled in swscale as it is decoded, "
        "sync, then crop and colour conversion of the T sampled frames, one uint8 array). "
        "Both use one decoder thread (`DECODER_THREADS`); the bare loop with PyAV's "
        "default threading is shown for reference.",
        "",
        f"Target: pipeline ≤ {TARGET:g}× the bare decode with the same decoder settings. "
        + verdict(results, costs),
        "",
        "| source → model input | method | clips/s | ms CPU / clip | × bare (wall) | × bare (CPU) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for label, timings in results.items():
        for method, timing in timings.items():
            lines.append(
                f"| {label} | {method} | {clips / timing.best_wall():.1f} "
                f"| {1000 * timing.median_cpu() / clips:.1f} "
                f"| {timing.best_wall() / timings[bare].best_wall():.2f} "
                f"| {timing.median_cpu() / timings[bare].median_cpu():.2f} |"
            )
    lines += [
        "",
        "![decode](plots/decode.png)",
        "",
        f"Rerun: `{COMMAND}`. Machine: {report.machine()}. Date: {report.today()}.",
    ]
    return "\n".join(lines)


def per_frame_costs(clips: list[list[Path]], config: PreprocessConfig) -> tuple[float, float]:
    """µs per frame (best of 5) of one-thread decoding, and of the one swscale call per frame."""
    with av.open(str(clips[0][0])) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = DECODER_THREADS
        frames = list(container.decode(stream))
    reformatter = VideoReformatter()

    def scale_all() -> None:
        for frame in frames:
            reformatter.reformat(
                frame,
                width=config.width,
                height=config.height,
                format="gray",
                interpolation=Interpolation.AREA,
                threads=1,
            )

    decode = min(_seconds(lambda: bare_decode(clips[0][:1], DECODER_THREADS)) for _ in range(5))
    scale = min(_seconds(scale_all) for _ in range(5))
    return 1e6 * decode / len(frames), 1e6 * scale / len(frames)


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def verdict(results: dict[str, dict[str, Timing]], costs: tuple[float, float]) -> str:
    """Which settings meet the target, and where the rest of the time goes when one misses."""
    missed = [label for label, timings in results.items() if _ratio(timings) > TARGET]
    if not missed:
        return "Met in every setting."
    decode_us, scale_us = costs
    return (
        f"Missed (wall) for {', '.join(missed)}. The pipeline adds, per frame, one swscale "
        f"call through PyAV ({scale_us:.0f} µs here) plus timestamp and limit checks, and "
        "per view the "
        f"probing options and size checks at open: a fixed cost next to decoding a tiny "
        f"96x96 H.264 frame ({decode_us:.0f} µs here, including the open), which shrinks "
        "once frames cost what camera frames cost (the 320x240 row). Keeping frames "
        "unscaled until the T picks are known was tried while writing this (not measured "
        "here): holding decoded frames cost about as much in buffer allocation, and it "
        "breaks the bounded-memory rule for large frames."
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs alone")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, Timing]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        written: dict[tuple[int, int], list[list[Path]]] = {}
        for setting in SETTINGS:
            if setting.source_hw not in written:
                written[setting.source_hw] = write_clips(Path(tmp), args.clips, *setting.source_hw)
            results[setting.label] = run_setting(setting, written[setting.source_hw], args.rounds)
            if setting is SETTINGS[0]:
                costs = per_frame_costs(written[setting.source_hw], setting.config)
            print(f"{setting.label}: pipeline / bare = {_ratio(results[setting.label]):.2f}")
    text = markdown(results, costs, args.clips, args.rounds)
    print(text)
    if not args.no_write:
        plot(results, args.clips, report.plot_path("decode"))
        print(f"wrote {report.write_section('decode', text)} and {report.plot_path('decode')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
