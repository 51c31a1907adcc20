"""Failed cameras as real video files: what the camera checks (`mplstm.core.camera_checks`) catch.

A failed view replaces one camera of a rendered synthetic clip, keeping that camera's
frame rate, frame count and start offset, so the clip still syncs and only the pictures
say that something is wrong. The kinds are what fails in a multi-camera rig:

- ``black``: unplugged, or a lens cap: near-black frames with a little sensor noise;
- ``blank``: a uniform frame at some grey level (a capture card's "no input" screen);
- ``frozen``: the camera stopped on one frame, repeated to the end;
- ``snow``: an analogue receiver without signal: independent noise in every frame;
- ``test_pattern``: a signal generator's colour bars;
- ``duplicate``: the input wired twice: the stream of another camera of the same clip.

`write_failed_clip` renders a clip with some of its cameras failed (alone, or several
at once) and writes it as `synth.write_clip` writes a good one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from mplstm.core.manifest import ClipRecord
from mplstm.core.synth.generate import ClipPlan, RenderedView, SynthConfig, render_clip
from mplstm.core.synth.speakers import speaker_name
from mplstm.core.video_writer import write_video

FAILURE_KINDS: tuple[str, ...] = ("black", "blank", "frozen", "snow", "test_pattern", "duplicate")
# The camera-check reason each generated kind must be reported with.
EXPECTED_REASON: dict[str, str] = {
    "black": "black",
    "blank": "blank",
    "frozen": "frozen",
    "snow": "no_signal",
    "test_pattern": "no_signal",
    "duplicate": "duplicate",
}
# Good clips the camera-check thresholds are measured on and held to (bench/camera_checks.py,
# tests/core/test_camera_checks.py), besides models/examples: the synthetic sets the test
# suite trains, scores and serves on (tests/training, tests/scoring), with five views.
MEASURED_SETS: dict[str, SynthConfig] = {
    "train-cli": SynthConfig(
        task="lipreading", speakers=3, words=3, clips_per_pair=2, size=(32, 32), seed=2
    ),
    "distributed": SynthConfig(
        task="identity", speakers=2, words=4, clips_per_pair=2, size=(32, 32), seed=5
    ),
    "scoring": SynthConfig(
        task="lipreading", speakers=2, words=4, clips_per_pair=2, size=(32, 32), split="test"
    ),
}
# SMPTE colour bars (75%): white, yellow, cyan, green, magenta, red, blue.
_BARS = np.array(
    [
        [191, 191, 191],
        [191, 191, 0],
        [0, 191, 191],
        [0, 191, 0],
        [191, 0, 191],
        [191, 0, 0],
        [0, 0, 191],
    ],
    np.uint8,
)
# The bottom band: -I, 100% white, +Q, black.
_BOTTOM = np.array([[0, 33, 76], [255, 255, 255], [50, 0, 106], [16, 16, 16]], np.uint8)


def failed_view(
    kind: str,
    view: RenderedView,
    rng: np.random.Generator,
    others: Sequence[RenderedView] = (),
) -> RenderedView:
    """`view` as a camera failed in the way `kind` names (one of FAILURE_KINDS).

    A ``duplicate`` carries the stream (frames and timing) of the first of `others`;
    black's noise and blank's level are drawn from `rng`.
    """
    if kind == "duplicate":
        if not others:
            raise ValueError("a duplicate view needs another view of the clip to copy")
        source = others[0]
        return RenderedView(view.name, source.frames.copy(), source.fps, source.start)
    shape = view.frames.shape  # [T, H, W, 3]
    if kind == "black":
        noise = rng.normal(0, 1.5, shape[:3])[..., None] + rng.uniform(0, 8)
        frames = np.clip(noise, 0, 255).repeat(3, axis=-1).astype(np.uint8)
    elif kind == "blank":
        frames = np.full(shape, rng.integers(60, 230), np.uint8)
    elif kind == "frozen":
        still = int(rng.integers(len(view.frames)))
        frames = np.repeat(view.frames[still : still + 1], shape[0], axis=0)
    elif kind == "snow":
        frames = rng.integers(0, 256, shape[:3], dtype=np.uint8)[..., None].repeat(3, axis=-1)
    elif kind == "test_pattern":
        frames = test_pattern(shape[0], shape[1], shape[2])
    else:
        raise ValueError(f"unknown camera failure {kind!r}; use one of {', '.join(FAILURE_KINDS)}")
    return RenderedView(view.name, frames, view.fps, view.start)


def test_pattern(frames: int, height: int, width: int) -> np.ndarray:
    """uint8 [frames, height, width, 3]: SMPTE-style colour bars, the same in every frame.

    Bars over two thirds of the height, reversed blue bars in a thin band, then flat
    blocks (-I, white, +Q, black), as a signal generator draws them.
    """
    columns = np.arange(width) * len(_BARS) // width
    out = np.empty((height, width, 3), np.uint8)
    top, middle = 2 * height // 3, 3 * height // 4
    out[:top] = _BARS[columns]
    out[top:middle] = _BARS[::-1][columns] * (columns % 2 == 0)[:, None]
    quarter = np.minimum(np.arange(width) * 4 // width, 3)
    out[middle:] = _BOTTOM[quarter]
    return np.repeat(out[None], frames, axis=0)


def fail_views(
    views: Sequence[RenderedView], failures: Mapping[str, str], rng: np.random.Generator
) -> list[RenderedView]:
    """`views` with those named in `failures` (view -> kind) failed that way.

    A duplicate copies a camera that is not itself failed: the nearest earlier one in
    `views`' order, else the first later one.
    """
    unknown = sorted(set(failures) - {v.name for v in views})
    if unknown:
        raise ValueError(f"no view {unknown} in a clip of views {[v.name for v in views]}")
    good = [v for v in views if v.name not in failures]
    out = []
    for i, view in enumerate(views):
        if view.name not in failures:
            out.append(view)
            continue
        earlier = [v for v in views[:i] if v.name not in failures]
        out.append(failed_view(failures[view.name], view, rng, earlier[-1:] or good))
    return out


def expected_failures(order: Sequence[str], failures: Mapping[str, str]) -> dict[str, str]:
    """View -> the camera-check reason `check_views` must report for these failures.

    Two views carrying one stream are told apart only by their order: the later one is
    the duplicate. So a duplicate written into a camera before every good one (it copies
    a later camera) is reported on the camera it copies.
    """
    good = [v for v in order if v not in failures]
    expected = {}
    for name, kind in failures.items():
        if kind == "duplicate" and all(order.index(v) > order.index(name) for v in good):
            name = good[0]
        expected[name] = EXPECTED_REASON[kind]
    return expected


def render_failed_clip(
    plan: ClipPlan, config: SynthConfig, failures: Mapping[str, str]
) -> list[RenderedView]:
    """Every view of a clip, those named in `failures` (view -> kind) failed that way."""
    rng = np.random.default_rng([config.seed, plan.speaker, plan.word, plan.rep, 0xFA11])
    return fail_views(render_clip(plan, config), failures, rng)


def write_failed_clip(
    plan: ClipPlan, config: SynthConfig, failures: Mapping[str, str], out_dir: str | Path
) -> ClipRecord:
    """Render a clip with the cameras in `failures` failed and write one .mp4 per view.

    Files go to out_dir/clips/<clip id>/; the record's id carries the failures
    (``s001_w00_0_000+front=black``), so one plan can be written with several.
    """
    tag = "+".join(f"{name}={kind}" for name, kind in sorted(failures.items()))
    clip_id = f"{plan.id}+{tag}" if tag else plan.id
    paths = {}
    for view in render_failed_clip(plan, config, failures):
        path = Path(out_dir) / "clips" / clip_id / f"{view.name}.mp4"
        paths[view.name] = write_video(path, view.frames, view.fps, start_time=view.start)
    return ClipRecord(clip_id, plan.label, speaker_name(plan.speaker), plan.split, paths)
