"""Camera checks: what they cost next to `load_clip`, and the margins behind their thresholds.

Cost. `load_clip` with the checks off and on, side by side in alternating rounds, on the
demo's example clips and on camera-size sources; and, on the same decoded views, the
checks alone on the T sampled frames (what `load_clip` runs) and on every decoded frame
(the alternative), each as a share of `load_clip`'s time. Target: <= 5%.

Margins. Every statistic of `mplstm.core.camera_checks.ViewStats` (and the duplicate
difference) on every view of: the example clips (models/examples, at each demo package's
preprocessing and at the test suite's 8 x 32 x 32), the synthetic sets the test suite
uses, and generated failures (`mplstm.core.synth.camera_failures`: each kind alone and
every two at once, 32 and 64 pixel sources). For each threshold: the worst good view, the
most borderline failure, and false alarms / misses (both must be 0).

Run: .venv/bin/python bench/camera_checks.py [--rounds 7] [--no-write]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import report
from bench.decode import write_clips
from mplstm.core.camera_checks import DEFAULT_THRESHOLDS, check_views, view_differences, view_stats
from mplstm.core.decode import decode_view
from mplstm.core.manifest import ClipRecord, read_manifest
from mplstm.core.package import read_package_manifest
from mplstm.core.preprocess import PreprocessConfig, load_clip
from mplstm.core.synth import SynthConfig, generate, plan_clips
from mplstm.core.synth.camera_failures import (
    FAILURE_KINDS,
    MEASURED_SETS,
    expected_failures,
    write_failed_clip,
)

ROOT = report.ROOT
COMMAND = ".venv/bin/python bench/camera_checks.py"
TARGET = 0.05
T = DEFAULT_THRESHOLDS
TINY = PreprocessConfig(frames=8, height=32, width=32)
DEMO = PreprocessConfig(frames=16, height=64, width=64)


# -- cost ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CostRow:
    """One setting's times, ms per clip."""

    label: str
    clips: int
    off_ms: float  # load_clip, checks off
    on_ms: float  # load_clip, checks on
    sampled_ms: float  # check_views alone on the T sampled frames
    every_ms: float  # every decoded frame taken out, then check_views on them


def _ms(fn: Callable[[], object], clips: int) -> float:
    start = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - start) / clips


def _every_frame(views: Sequence[Path | str], config: PreprocessConfig) -> Callable[[], object]:
    """Checks on every decoded frame of each view (as many as the shortest view has)."""
    decoded = [
        decode_view(v, height=config.height, width=config.width, channels=config.channels)
        for v in views
    ]
    count = min(len(d.timestamps) for d in decoded)
    names = [f"v{i}" for i in range(len(views))]
    mask = np.ones(len(views), bool)

    def run() -> object:
        frames = np.stack([d.take(range(count)) for d in decoded])
        return check_views(frames, mask, names)

    return run


def measure_cost(
    label: str, clips: list[list[Path | str]], config: PreprocessConfig, rounds: int
) -> CostRow:
    """Per clip, each method `rounds` times, alternating, its fastest run kept: on a busy
    host the fastest of a few runs of one clip is the least disturbed measure there is."""
    on = dataclasses.replace(config, camera_checks=True, allow_missing_views=True)
    fastest: dict[str, list[float]] = {"off": [], "on": [], "sampled": [], "every": []}
    for views in clips:
        clip = load_clip(views, config)
        methods: dict[str, Callable[[], object]] = {
            "off": lambda views=views: load_clip(views, config),
            "on": lambda views=views: load_clip(views, on),
            "sampled": lambda clip=clip: check_views(clip.frames, clip.view_mask, clip.view_names),
            "every": _every_frame(views, config),
        }
        best = dict.fromkeys(methods, math.inf)
        for r in range(rounds + 1):
            names = list(methods)
            for name in names[r % len(names) :] + names[: r % len(names)]:
                ms = _ms(methods[name], 1)
                if r:  # round 0 warms up
                    best[name] = min(best[name], ms)
        for name, ms in best.items():
            fastest[name].append(ms)
    mean = {name: float(np.mean(values)) for name, values in fastest.items()}
    return CostRow(label, len(clips), mean["off"], mean["on"], mean["sampled"], mean["every"])


def cost_rows(rounds: int, tmp: Path) -> list[CostRow]:
    rows = []
    for task in ("lipreading", "identity"):
        records = read_manifest(ROOT / "models" / "examples" / task / "manifest.jsonl")
        config = read_package_manifest(ROOT / "models" / f"demo-{task}" / "1").preprocess_config()
        clips = [[r.views[n] for n in config.view_names] for r in records]
        rows.append(
            measure_cost(f"demo-{task} examples, 64x64 → 64x64 gray, T=16", clips, config, rounds)
        )
    camera = write_clips(tmp, 8, 240, 320)
    for channels in (1, 3):
        config = PreprocessConfig(frames=20, height=88, width=88, channels=channels)
        kind = "gray" if channels == 1 else "RGB"
        rows.append(measure_cost(f"320x240 → 88x88 {kind}, T=20", camera, config, rounds))
    return rows


# -- margins ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One view's statistics and what it is: "good", or the failure kind written into it."""

    source: str  # the set and preprocessing
    clip: str
    view: str
    kind: str
    stats: dict[str, float]


def _sets(
    tmp: Path,
) -> list[tuple[str, list[ClipRecord], PreprocessConfig, dict[str, dict[str, str]]]]:
    """(name, records, preprocessing, clip id -> failures written) of every set measured."""
    out = []
    for task in ("lipreading", "identity"):
        records = read_manifest(ROOT / "models" / "examples" / task / "manifest.jsonl")
        package = read_package_manifest(ROOT / "models" / f"demo-{task}" / "1").preprocess_config()
        out.append((f"examples/{task} as served", records, package, {}))
        out.append((f"examples/{task} at 8x32x32", records, TINY, {}))
    for name, config in MEASURED_SETS.items():
        records = generate(config, tmp / name, workers=min(2, os.cpu_count() or 1), progress=False)
        out.append((f"test set {name}", records, TINY, {}))
    for size in (32, 64):
        config = SynthConfig(
            task="lipreading", speakers=1, words=5, clips_per_pair=5, size=(size, size)
        )
        views = [v.name for v in config.view_specs]
        plans = itertools.cycle(plan_clips(config))
        cases = [{views[k % 5]: kind} for k, kind in enumerate(FAILURE_KINDS)]
        cases += [
            {views[k % 5]: a, views[(k + 2) % 5]: b}
            for k, (a, b) in enumerate(itertools.combinations(FAILURE_KINDS, 2))
        ]
        written = {}
        for case in cases:
            record = write_failed_clip(next(plans), config, case, tmp / f"failed{size}")
            written[record.id] = (record, case)
        records = [r for r, _ in written.values()]
        failures = {i: c for i, (_, c) in written.items()}
        for label, pre in (("8x32x32", TINY), ("16x64x64", DEMO)):
            out.append((f"failures {size}px at {label}", records, pre, failures))
    return out


def measure_margins(tmp: Path) -> tuple[list[Seen], dict[str, list[float]], int, int]:
    """Every view's statistics; duplicate differences of good pairs and of copied pairs;
    false alarms and misses of `check_views` over everything."""
    seen: list[Seen] = []
    pairs: dict[str, list[float]] = {"good pairs": [], "duplicates": []}
    false_alarms = misses = 0
    for name, records, config, written in _sets(tmp):
        checked = dataclasses.replace(config, camera_checks=False)
        for record in records:
            case = written.get(record.id, {})
            clip = load_clip(dict(record.views), checked)
            names = list(clip.view_names)
            up = [max(config.height / i.height, config.width / i.width) for i in clip.views]
            for view, s in zip(
                names, view_stats(clip.frames, clip.view_mask, None, up), strict=True
            ):
                assert s is not None
                seen.append(Seen(name, record.id, view, case.get(view, "good"), vars(s)))
            differences = view_differences(clip.frames, clip.view_mask)
            good = [i for i, n in enumerate(names) if n not in case]
            pairs["good pairs"] += [differences[i, j] for i, j in itertools.combinations(good, 2)]
            for d in (names.index(n) for n, kind in case.items() if kind == "duplicate"):
                # The view it copies is the good view nearest to it in content.
                pairs["duplicates"].append(min(differences[d, i] for i in good))
            # The real path: load_clip with the checks on, as service, scorer and training run it.
            on = dataclasses.replace(config, camera_checks=True, allow_missing_views=True)
            got = {f.view: f.reason for f in load_clip(dict(record.views), on).views_dropped}
            want = expected_failures(names, case)
            false_alarms += len(set(got) - set(want))
            misses += sum(got.get(v) != r for v, r in want.items())
    return seen, pairs, false_alarms, misses


# Per threshold: its statistic, the side failures fall on, the failure kinds it is for.
CHECKS = (
    ("blank_contrast", "contrast", "below", ("black", "blank")),
    ("black_level", "level", "below", ("black",)),
    ("snow_structure", "structure", "below", ("snow",)),
    ("snow_coherence", "coherence", "below", ("snow",)),
    ("still_motion", "motion", "below", ("frozen", "test_pattern")),
    ("pattern_flatness", "flatness", "above", ("test_pattern",)),
)


def margin_rows(seen: list[Seen], pairs: dict[str, list[float]]) -> list[list[str]]:
    rows = []
    for threshold, stat, side, kinds in CHECKS:
        good = [s for s in seen if s.kind == "good"]
        if threshold == "black_level":  # it splits blank views, black from the rest
            good = [s for s in seen if s.kind == "blank"]
        failed = [s for s in seen if s.kind in kinds]
        sign = 1 if side == "below" else -1
        worst_good = min(good, key=lambda s, stat=stat, sign=sign: sign * s.stats[stat])
        edge = max(failed, key=lambda s, stat=stat, sign=sign: sign * s.stats[stat])
        rows.append(
            [
                f"`{threshold}`",
                f"{getattr(T, threshold):g}",
                f"{stat} {side}",
                f"{worst_good.stats[stat]:.3g} ({worst_good.kind}, {worst_good.source})",
                f"{edge.stats[stat]:.3g} ({edge.kind}, {edge.source})",
            ]
        )
    rows.append(
        [
            "`duplicate_difference`",
            f"{T.duplicate_difference:g}",
            "RMS difference of two views below",
            f"{min(pairs['good pairs']):.3g} (two good views)",
            f"{max(pairs['duplicates']):.3g} (a duplicated view and its source)",
        ]
    )
    return rows


# -- report ----------------------------------------------------------------------------------


def plot(rows: list[CostRow], seen: list[Seen], pairs: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = [(stat, threshold) for threshold, stat, _, _ in CHECKS if threshold != "black_level"]
    fig, axes = plt.subplots(1, len(stats) + 2, figsize=(17, 4))
    ax = axes[0]
    y = np.arange(len(rows))
    ax.barh(y - 0.2, [100 * r.sampled_ms / r.off_ms for r in rows], 0.4, label="T sampled frames")
    ax.barh(y + 0.2, [100 * r.every_ms / r.off_ms for r in rows], 0.4, label="every frame")
    ax.axvline(100 * TARGET, color="red", lw=1)
    ax.set_yticks(y, [r.label.split(",")[0].replace(" examples", "") for r in rows], fontsize=7)
    ax.set_xlabel("% of load_clip")
    ax.set_title("cost", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    kinds = ["good", *FAILURE_KINDS]
    for ax, (stat, threshold) in zip(axes[1:], stats, strict=False):
        for k, kind in enumerate(kinds):
            values = [s.stats[stat] for s in seen if s.kind == kind and np.isfinite(s.stats[stat])]
            jitter = np.random.default_rng(k).uniform(-0.3, 0.3, len(values))
            ax.scatter(
                k + jitter, values, s=3, alpha=0.5, color="tab:blue" if k == 0 else "tab:red"
            )
        ax.axhline(getattr(T, threshold), color="black", lw=1, ls="--")
        ax.set_xticks(range(len(kinds)), kinds, rotation=60, fontsize=7)
        ax.set_title(stat, fontsize=9)
        if stat in ("contrast", "motion"):
            ax.set_yscale("symlog", linthresh=0.1)
            ax.set_ylim(bottom=0)
    ax = axes[-1]
    for k, values in enumerate(pairs.values()):
        ax.scatter(
            k + np.random.default_rng(k).uniform(-0.3, 0.3, len(values)), values, s=3, alpha=0.5
        )
    ax.axhline(T.duplicate_difference, color="black", lw=1, ls="--")
    ax.set_yscale("symlog", linthresh=1)
    ax.set_ylim(bottom=0)
    ax.set_xticks([0, 1], list(pairs), fontsize=7)
    ax.set_title("difference of two views", fontsize=9)
    fig.suptitle("camera checks: cost, and every view measured against each threshold (dashed)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(
    rows: list[CostRow],
    margins: list[list[str]],
    counts: tuple[int, int, int],
    rounds: int,
    load: str,
) -> str:
    views, false_alarms, misses = counts
    worst = max(r.sampled_ms / r.off_ms for r in rows)
    lines = [
        "## Camera checks: cost next to load_clip, and threshold margins",
        "",
        "Cost, ms per clip: `load_clip` with `camera_checks` off and on; on the same "
        "decoded views, `check_views` alone on the T sampled frames (what `load_clip` "
        "runs) and on every decoded frame (each view's frames taken out, as many as the "
        "shortest view has: the alternative). Each clip runs each method "
        f"{rounds} times, the four alternating, and keeps its fastest run; the table "
        "averages those over the clips. The checks "
        f"run on the T sampled frames: the every-frame figures are why. Target: ≤ {TARGET:.0%} "
        f"of `load_clip`. Worst here: {worst:.1%} "
        + ("(met)." if worst <= TARGET else "(**missed**)."),
        "",
        "| clips | load_clip off, ms | on, ms | on / off | checks on T frames, ms | share | checks on every frame, ms | share |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.label} ({r.clips}) | {r.off_ms:.2f} | {r.on_ms:.2f} | {r.on_ms / r.off_ms:.3f} "
            f"| {r.sampled_ms:.3f} | {r.sampled_ms / r.off_ms:.1%} | {r.every_ms:.3f} "
            f"| {r.every_ms / r.off_ms:.1%} |"
        )
    lines += [
        "",
        f"Margins: {views} views measured (the example clips, the test suite's synthetic "
        "sets, and generated failures: each kind alone and every two at once, 32 and 64 "
        f"pixel sources, at 8x32x32 and 16x64x64). `check_views` over all of them: "
        f"**{false_alarms} false alarms, {misses} misses**. Each threshold sits between the "
        "worst good view and the most borderline failure of the kinds it catches:",
        "",
        "| threshold | value | failed when | worst good view | most borderline failure |",
        "| --- | ---: | --- | --- | --- |",
        *("| " + " | ".join(row) + " |" for row in margins),
        "",
        "![camera checks](plots/camera_checks.png)",
        "",
        f"Rerun: `{COMMAND}`. Machine: {report.machine()}. Date: {report.today()}. "
        f"Load average at the start: {load}.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs alone")
    args = parser.parse_args(argv)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory() as tmp:
        rows = cost_rows(args.rounds, Path(tmp))
        for r in rows:
            print(
                f"{r.label}: checks {r.sampled_ms:.3f} ms = {r.sampled_ms / r.off_ms:.1%} of load_clip"
            )
        seen, pairs, false_alarms, misses = measure_margins(Path(tmp))
    text = markdown(
        rows, margin_rows(seen, pairs), (len(seen), false_alarms, misses), args.rounds, load
    )
    print(text)
    if not args.no_write:
        plot(rows, seen, pairs, report.plot_path("camera_checks"))
        print(f"wrote {report.write_section('camera_checks', text)}")
    return 0 if false_alarms == misses == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
