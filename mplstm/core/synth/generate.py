"""Plan, render and write a synthetic multi-view data set (`mplstm synth`).

A clip is (speaker, word, repetition). Its random stream comes from
``(seed, speaker id, word id, repetition)`` only, so a clip is the same whatever else is
generated with it, and a new seed gives new clips of the same speakers and words.
"""

from __future__ import annotations

import json
import multiprocessing
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from mplstm import __version__
from mplstm.core.cpus import usable_cpus
from mplstm.core.manifest import SPLITS, ClipRecord, assign_splits, write_manifest
from mplstm.core.synth.mouth import Lighting, MouthTrack, render
from mplstm.core.synth.speakers import (
    GENERATOR_VERSION,
    GENERATOR_VERSIONS,
    speaker,
    speaker_name,
)
from mplstm.core.synth.words import (
    MAX_WORDS,
    protrusion_trajectory,
    teeth_trajectory,
    tongue_trajectory,
    word,
    word_name,
)
from mplstm.core.video_writer import write_video

TASKS: tuple[str, ...] = ("lipreading", "identity")
CLIP_STREAM = 0xC11F
SPLIT_STREAM = 0x5B117
# Lip protrusion of a word's full pattern, in crop half-heights. At 0.3 it moved a few
# low-contrast silhouette pixels, a third of the change the interior makes frontally, and the
# 5-view model learned only the interior (docs/results.md); at 0.6 the two are on a par.
PROTRUSION = 0.6


@dataclass(frozen=True)
class ViewSpec:
    """A camera: its name in the manifest and its yaw in degrees (0 = frontal)."""

    name: str
    yaw: float


# Interior patterns show in front/left30/right30, protrusion patterns in left90/right90.
# The order keeps both kinds among the first three, so --views 3 still needs fusion.
VIEWS: tuple[ViewSpec, ...] = (
    ViewSpec("front", 0.0),
    ViewSpec("left90", -90.0),
    ViewSpec("right30", 30.0),
    ViewSpec("right90", 90.0),
    ViewSpec("left30", -30.0),
)


@dataclass(frozen=True)
class SynthConfig:
    """What to generate; everything `mplstm synth` takes."""

    task: str  # "lipreading" (labels are words) or "identity" (labels are speakers)
    speakers: int
    first_speaker: int = 1
    words: int = 10
    views: int = 5
    clips_per_pair: int = 10
    seed: int = 0
    size: tuple[int, int] = (64, 64)  # H, W
    fps: tuple[float, ...] = (25.0, 30.0, 29.97)  # each view draws its own rate per clip
    max_offset: float = 0.08  # seconds; a view's stream starts up to this late
    duration_jitter: float = 0.03  # seconds; views' durations differ by up to twice this (+1 frame)
    split: str = "auto"  # or put every clip in "train", "val" or "test"
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    noise: bool = True
    # How speakers look (mplstm.core.synth.speakers): 3 = continuous identity traits, every
    # id a new person; 2 = the discrete traits behind the closed-set tables of docs/results.md.
    generator: int = GENERATOR_VERSION

    def __post_init__(self) -> None:
        problems = []
        if self.generator not in GENERATOR_VERSIONS:
            problems.append(
                f"--generator must be one of {GENERATOR_VERSIONS}, got {self.generator}"
            )
        if self.task not in TASKS:
            problems.append(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.speakers < 1 or self.first_speaker < 0:
            problems.append("need --speakers >= 1 and --first-speaker >= 0")
        if not 1 <= self.words <= MAX_WORDS:
            problems.append(f"--words must be 1..{MAX_WORDS}, got {self.words}")
        if not 1 <= self.views <= len(VIEWS):
            problems.append(f"--views must be 1..{len(VIEWS)}, got {self.views}")
        if self.clips_per_pair < 1:
            problems.append("--clips-per-pair must be >= 1")
        if min(self.size) < 16 or max(self.size) > 1024:
            problems.append(f"--size must be 16..1024 pixels, got {self.size}")
        if not self.fps or min(self.fps) <= 0 or max(self.fps) > 240:
            problems.append(f"--fps must be rates in (0, 240], got {self.fps}")
        if not 0 <= self.max_offset <= 1 or not 0 <= self.duration_jitter <= 0.2:
            problems.append("--max-offset must be 0..1 s and --duration-jitter 0..0.2 s")
        if self.split not in ("auto", *SPLITS):
            problems.append(f"--split must be auto or one of {', '.join(SPLITS)}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def view_specs(self) -> tuple[ViewSpec, ...]:
        """The cameras used, in manifest order."""
        return VIEWS[: self.views]

    @property
    def speaker_ids(self) -> list[int]:
        """Speaker ids first_speaker .. first_speaker + speakers - 1."""
        return list(range(self.first_speaker, self.first_speaker + self.speakers))

    @property
    def labels(self) -> list[str]:
        """Class names in class-index order (words or speakers)."""
        if self.task == "identity":
            return [speaker_name(s) for s in self.speaker_ids]
        return [word_name(w) for w in range(self.words)]


@dataclass(frozen=True)
class ClipPlan:
    """One clip to generate."""

    id: str
    speaker: int
    word: int
    rep: int
    label: str
    split: str


@dataclass(frozen=True)
class RenderedView:
    """One view of a clip: frames and the timing the file gets."""

    name: str
    frames: np.ndarray  # [T, H, W, 3] uint8
    fps: float
    start: float  # presentation time of the first frame (s)


@dataclass(frozen=True)
class ViewScene:
    """Everything `render` needs for one view of one clip."""

    spec: ViewSpec
    fps: float
    start: float
    track: MouthTrack
    lighting: Lighting
    word_time: np.ndarray  # the word's normalised time (0 onset, 1 offset) at each frame
    noise_seed: np.random.SeedSequence = field(repr=False)


def plan_clips(config: SynthConfig) -> list[ClipPlan]:
    """Every clip of the data set, in a fixed order, with its label and split."""
    pairs = [(s, w) for s in config.speaker_ids for w in range(config.words)]
    keys = [(s, w, r) for s, w in pairs for r in range(config.clips_per_pair)]
    ids = {k: f"{speaker_name(k[0])}_{word_name(k[1])}_{config.seed}_{k[2]:03d}" for k in keys}
    split_of: dict[tuple[int, int, int], str] = {}
    if config.split != "auto":
        split_of = dict.fromkeys(keys, config.split)
    elif config.task == "lipreading":
        # Speaker-disjoint, and the same speakers -> splits whatever the seed, so that clips
        # generated later with another seed never move a test speaker into training.
        rng = np.random.default_rng([SPLIT_STREAM, config.first_speaker, config.speakers])
        by_speaker = assign_splits(config.speaker_ids, config.split_fractions, rng)
        split_of = {k: by_speaker[k[0]] for k in keys}
    else:
        for s in config.speaker_ids:
            own = [k for k in keys if k[0] == s]
            rng = np.random.default_rng([SPLIT_STREAM, config.seed, s])
            split_of.update(assign_splits(own, config.split_fractions, rng))
    return [
        ClipPlan(
            id=ids[k],
            speaker=k[0],
            word=k[1],
            rep=k[2],
            label=speaker_name(k[0]) if config.task == "identity" else word_name(k[1]),
            split=split_of[k],
        )
        for k in keys
    ]


def plan_scenes(plan: ClipPlan, config: SynthConfig) -> list[ViewScene]:
    """Draw a clip's timing, babble, head motion, lighting and per-view cameras."""
    rng = np.random.default_rng([CLIP_STREAM, config.seed, plan.speaker, plan.word, plan.rep])
    w = word(plan.word)
    duration = rng.uniform(1.0, 1.6)
    onset = duration * rng.uniform(0.08, 0.2)
    offset = duration * (1 - rng.uniform(0.08, 0.2))
    warp = rng.uniform(-0.15, 0.15)  # |warp| < 1/pi keeps time monotonic
    opening_waves = _waves(rng, 3, (1.5, 5.0))
    width_waves = _waves(rng, 2, (0.8, 3.0))
    protrusion_waves = _waves(rng, 2, (1.0, 4.0))
    yaw_waves = _waves(rng, 2, (0.3, 1.2))
    shift_waves = _waves(rng, 2, (0.2, 1.0))
    head_yaw = rng.uniform(-3, 3)
    head_roll = rng.uniform(-0.06, 0.06)
    head_shift = rng.uniform(-0.06, 0.06, size=2)
    head_scale = rng.uniform(0.93, 1.07)
    azimuth, elevation = np.radians(rng.uniform(-50, 50)), np.radians(rng.uniform(-10, 40))
    direction = (
        float(np.sin(azimuth) * np.cos(elevation)),
        float(np.sin(elevation)),
        float(np.cos(azimuth) * np.cos(elevation)),
    )
    ambient, gain = rng.uniform(0.35, 0.5), rng.uniform(0.8, 1.15)
    tint = 1 + rng.uniform(-0.04, 0.04, size=3)
    # Dark enough that the lips' silhouette stands out in profile under any light.
    background = rng.uniform(0.02, 0.1) * (1 + rng.uniform(-0.15, 0.15, size=3))
    noise_seeds = np.random.SeedSequence(int(rng.integers(2**63))).spawn(len(config.view_specs))

    scenes = []
    for spec, noise_seed in zip(config.view_specs, noise_seeds, strict=True):
        fps = float(rng.choice(config.fps))
        start = rng.uniform(0, config.max_offset)
        frames = max(2, round((duration + rng.uniform(-1, 1) * config.duration_jitter) * fps))
        t = np.arange(frames) / fps  # world time of each frame (the stream adds `start`)
        s = (t - onset) / (offset - onset)
        tau = np.where((s > 0) & (s < 1), s + warp * np.sin(np.pi * s), s)
        track = MouthTrack(
            opening=0.2 + 0.3 * opening_waves(t),
            width=1 + 0.12 * (width_waves(t) - 0.5),
            protrusion=PROTRUSION * protrusion_trajectory(w, tau)
            + 0.04 * (protrusion_waves(t) - 0.5),
            tongue=tongue_trajectory(w, tau),
            teeth=teeth_trajectory(w, tau),
            yaw=head_yaw + 4 * (yaw_waves(t) - 0.5),
            roll=np.full(frames, head_roll),
            shift=head_shift + 0.08 * (shift_waves(t)[:, None] - 0.5) * [1.0, 0.5],
            scale=np.full(frames, head_scale * rng.uniform(0.97, 1.03)),
        )
        camera = Lighting(
            direction=direction,
            ambient=float(ambient),
            gain=float(gain * rng.uniform(0.94, 1.06)),
            tint=tuple(float(c) for c in tint),
            background=tuple(float(c) for c in background),
        )
        scenes.append(ViewScene(spec, fps, float(start), track, camera, tau, noise_seed))
    return scenes


def render_clip(plan: ClipPlan, config: SynthConfig) -> list[RenderedView]:
    """Render every view of a clip (noise as `config.noise` says)."""
    spk = speaker(plan.speaker, config.generator)
    views = []
    for scene in plan_scenes(plan, config):
        rng = np.random.default_rng(scene.noise_seed) if config.noise else None
        frames = render(spk, scene.track, scene.spec.yaw, scene.lighting, config.size, rng=rng)
        views.append(RenderedView(scene.spec.name, frames, scene.fps, scene.start))
    return views


def write_clip(plan: ClipPlan, config: SynthConfig, out_dir: Path) -> ClipRecord:
    """Render a clip and write one .mp4 per view under out_dir/clips/<clip id>/."""
    paths = {}
    for view in render_clip(plan, config):
        path = out_dir / "clips" / plan.id / f"{view.name}.mp4"
        paths[view.name] = write_video(path, view.frames, view.fps, start_time=view.start)
    return ClipRecord(plan.id, plan.label, speaker_name(plan.speaker), plan.split, paths)


def generate(
    config: SynthConfig,
    out_dir: str | Path,
    *,
    workers: int | None = None,
    progress: bool = True,
) -> list[ClipRecord]:
    """Write every clip, out_dir/manifest.jsonl and out_dir/synth.json; return the records."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    plans = plan_clips(config)
    workers = max(1, min(workers or usable_cpus(), len(plans)))
    job = partial(write_clip, config=config, out_dir=out_dir)
    bar = tqdm(total=len(plans), unit="clip", disable=not progress, smoothing=0.1)
    records: dict[str, ClipRecord] = {}
    with bar:
        for record in _run(job, plans, workers):
            records[record.id] = record
            bar.update()
    ordered = [records[p.id] for p in plans]
    write_manifest(ordered, out_dir / "manifest.jsonl")
    (out_dir / "synth.json").write_text(json.dumps(describe(config, ordered), indent=2) + "\n")
    return ordered


def describe(config: SynthConfig, records: list[ClipRecord]) -> dict:
    """The data set's metadata (synth.json): parameters, labels, views and their angles."""
    params = asdict(config)
    return {
        "generator": "mplstm.core.synth",
        "version": __version__,
        # Which speakers the ids mean: the same command with another generator version
        # gives other people (mplstm.core.synth.speakers).
        "generator_version": config.generator,
        "task": config.task,
        "labels": config.labels,
        "views": [{"name": v.name, "yaw_deg": v.yaw} for v in config.view_specs],
        "speakers": [speaker_name(s) for s in config.speaker_ids],
        "clips": len(records),
        "splits": dict(Counter(r.split for r in records)),
        "manifest": "manifest.jsonl",
        "parameters": params,
    }


def _run(job: partial, plans: list[ClipPlan], workers: int) -> Iterator[ClipRecord]:
    if workers == 1:
        yield from map(job, plans)
        return
    # spawn, not fork: a parent that has loaded torch (training) must not be forked.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap_unordered(job, plans, chunksize=4)


def _waves(rng: np.random.Generator, count: int, freq_range: tuple[float, float]):
    """A random smooth signal of time in [0, 1]: a few sinusoids of random frequency/phase."""
    freqs = rng.uniform(*freq_range, size=count)
    phases = rng.uniform(0, 2 * np.pi, size=count)
    amps = rng.uniform(0.5, 1.0, size=count)

    def signal(t: np.ndarray) -> np.ndarray:
        waves = np.sin(2 * np.pi * freqs * np.asarray(t)[..., None] + phases) @ amps
        return 0.5 + 0.5 * waves / amps.sum()

    return signal
