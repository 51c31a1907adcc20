"""The synthetic generator: determinism, splits, decodable files, and what each view can see."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import av
import numpy as np
import pytest

from mplstm.core.manifest import read_manifest
from mplstm.core.synth import SynthConfig, generate, plan_clips, plan_scenes, render_clip
from mplstm.core.synth.generate import PROTRUSION
from mplstm.core.synth.mouth import render
from mplstm.core.synth.speakers import speaker
from mplstm.core.synth.words import (
    protrusion_trajectory,
    teeth_trajectory,
    tongue_trajectory,
    word,
)

TINY = SynthConfig(task="lipreading", speakers=3, words=2, clips_per_pair=1, size=(32, 32))
FRONTAL, PROFILE = {"front", "left30", "right30"}, {"left90", "right90"}


def _decode(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Frames [T, H, W, 3] and presentation times (s) of a video file, decoded with PyAV."""
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    times = np.array([float(f.pts * f.time_base) for f in frames])
    return np.stack([f.to_ndarray(format="rgb24") for f in frames]), times


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(TINY, out, workers=1, progress=False)
    return out


def _frames_of(out: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(out)): _decode(p)[0] for p in sorted(out.glob("clips/*/*.mp4"))}


def test_same_seed_gives_the_same_frames_with_any_number_of_workers(
    tiny_set: Path, tmp_path: Path
) -> None:
    generate(TINY, tmp_path / "again", workers=2, progress=False)
    first, again = _frames_of(tiny_set), _frames_of(tmp_path / "again")
    assert first.keys() == again.keys() and len(first) == 6 * 5
    for name, frames in first.items():
        np.testing.assert_array_equal(frames, again[name], err_msg=name)
    assert (tiny_set / "manifest.jsonl").read_text().replace(str(tiny_set), "") == (
        tmp_path / "again" / "manifest.jsonl"
    ).read_text().replace(str(tmp_path / "again"), "")


def test_another_seed_gives_other_clips_of_the_same_speakers_and_words() -> None:
    other = dataclasses.replace(TINY, seed=1, noise=False)
    plan_a, plan_b = plan_clips(dataclasses.replace(TINY, noise=False))[0], plan_clips(other)[0]
    assert (plan_a.speaker, plan_a.word, plan_a.label) == (plan_b.speaker, plan_b.word, "w00")
    assert plan_a.id != plan_b.id
    a, b = render_clip(plan_a, TINY)[0].frames, render_clip(plan_b, other)[0].frames
    n = min(len(a), len(b))
    assert np.abs(a[:n].astype(int) - b[:n]).mean() > 2


def test_a_clip_does_not_depend_on_what_else_is_generated() -> None:
    small = dataclasses.replace(TINY, speakers=2, words=2)
    large = dataclasses.replace(TINY, speakers=5, words=7, clips_per_pair=2)
    [plan_small] = [p for p in plan_clips(small) if p.id == "s002_w01_0_000"]
    [plan_large] = [p for p in plan_clips(large) if p.id == "s002_w01_0_000"]
    for a, b in zip(render_clip(plan_small, small), render_clip(plan_large, large), strict=True):
        np.testing.assert_array_equal(a.frames, b.frames)


def test_speakers_and_words_depend_only_on_their_ids() -> None:
    assert speaker(7) == speaker(7) != speaker(8)
    assert speaker(7).name == "s007"
    tau = np.linspace(0, 1, 50)
    np.testing.assert_array_equal(tongue_trajectory(word(3), tau), tongue_trajectory(word(8), tau))
    unseen = SynthConfig(task="identity", speakers=2, first_speaker=40, clips_per_pair=1)
    assert unseen.labels == ["s040", "s041"]
    assert {p.label for p in plan_clips(unseen)} == {"s040", "s041"}


def test_lipreading_splits_are_speaker_disjoint_and_do_not_move_with_the_seed() -> None:
    config = SynthConfig(task="lipreading", speakers=10, words=3, clips_per_pair=2)
    plans = plan_clips(config)
    split_of = {}
    for p in plans:
        assert split_of.setdefault(p.speaker, p.split) == p.split, "speaker in two splits"
    assert sorted(split_of.values()).count("train") >= 6
    assert set(split_of.values()) == {"train", "val", "test"}
    reseeded = {p.speaker: p.split for p in plan_clips(dataclasses.replace(config, seed=9))}
    assert reseeded == split_of


def test_identity_splits_are_clip_disjoint_with_every_speaker_in_every_split() -> None:
    plans = plan_clips(SynthConfig(task="identity", speakers=4, words=5, clips_per_pair=2))
    assert len({p.id for p in plans}) == len(plans) == 40
    for s in {p.speaker for p in plans}:
        assert {p.split for p in plans if p.speaker == s} == {"train", "val", "test"}
    assert {p.label for p in plans} == {"s001", "s002", "s003", "s004"}


def test_one_split_can_be_forced_for_extra_test_data() -> None:
    plans = plan_clips(SynthConfig(task="lipreading", speakers=3, first_speaker=50, split="test"))
    assert {p.split for p in plans} == {"test"}


def test_written_views_decode_with_their_own_rates_offsets_and_close_durations(
    tiny_set: Path,
) -> None:
    rates, starts = set(), []
    for record in read_manifest(tiny_set / "manifest.jsonl"):
        durations = []
        for name, path in record.views.items():
            frames, times = _decode(path)
            assert frames.shape[1:] == (32, 32, 3), name
            assert 0 <= times[0] <= TINY.max_offset + 1e-3
            step = np.diff(times).mean()
            assert min(abs(step - 1 / r) for r in TINY.fps) < 1e-3
            rates.add(round(1 / step, 2))
            starts.append(times[0])
            durations.append(len(times) * step)
        assert max(durations) - min(durations) <= 2 * TINY.duration_jitter + 0.05
        assert min(durations) >= 1.0 - 0.1 and max(durations) <= 1.6 + 0.1
    assert len(rates) >= 2 and len(set(starts)) > 1


def test_manifest_and_metadata_describe_the_set(tiny_set: Path) -> None:
    records = read_manifest(tiny_set / "manifest.jsonl")
    assert len(records) == 6
    assert list(records[0].views) == ["front", "left90", "right30", "right90", "left30"]
    assert '"clips/' in (tiny_set / "manifest.jsonl").read_text()
    meta = json.loads((tiny_set / "synth.json").read_text())
    assert meta["labels"] == ["w00", "w01"]
    assert {v["name"]: v["yaw_deg"] for v in meta["views"]}["left90"] == -90.0
    assert sum(meta["splits"].values()) == 6


def test_views_of_one_clip_differ_clearly() -> None:
    config = dataclasses.replace(TINY, noise=False)
    views = render_clip(plan_clips(config)[0], config)
    n = min(len(v.frames) for v in views)
    for a, b in itertools.combinations(views, 2):
        assert np.abs(a.frames[:n].astype(int) - b.frames[:n]).mean() > 5, (a.name, b.name)


def _change_per_view(change_speaker=None, change_track=None, generator=3) -> dict[str, float]:
    """Mean absolute pixel change in each view of a noiseless clip when one factor changes."""
    config = dataclasses.replace(TINY, noise=False)
    plan = plan_clips(config)[1]
    spk = speaker(plan.speaker, generator)
    changes = {}
    for scene in plan_scenes(plan, config):
        base = render(spk, scene.track, scene.spec.yaw, scene.lighting, config.size)
        other = render(
            change_speaker(spk) if change_speaker else spk,
            change_track(scene.track) if change_track else scene.track,
            scene.spec.yaw,
            scene.lighting,
            config.size,
        )
        changes[scene.spec.name] = float(np.abs(base.astype(int) - other).mean())
    return changes


def _assert_seen_only_by(changes: dict[str, float], views: set[str]) -> None:
    for name, change in changes.items():
        if name in views:
            assert change > 0.3, f"{name} should see the change ({changes})"
        else:
            assert change == 0, f"{name} should not see the change ({changes})"


def test_tongue_and_teeth_are_seen_only_by_near_frontal_views() -> None:
    _assert_seen_only_by(
        _change_per_view(change_track=lambda t: dataclasses.replace(t, tongue=1 - t.tongue)),
        FRONTAL,
    )
    _assert_seen_only_by(
        _change_per_view(change_track=lambda t: dataclasses.replace(t, teeth=1 - t.teeth)),
        FRONTAL,
    )


def test_lip_protrusion_is_seen_only_by_profile_views() -> None:
    _assert_seen_only_by(
        _change_per_view(
            change_track=lambda t: dataclasses.replace(t, protrusion=t.protrusion + 0.3)
        ),
        PROFILE,
    )


@pytest.mark.parametrize("generator", [2, 3])
def test_speaker_traits_are_split_between_frontal_and_profile_views(generator: int) -> None:
    def other_frontal(s):
        return dataclasses.replace(
            s,
            teeth_gaps=tuple((g - 0.12 * np.sign(g + 0.01), w) for g, w in s.teeth_gaps)
            or ((0.0, 0.05),),
        )

    def other_profile(s):
        return dataclasses.replace(s, profile=tuple(v + 0.1 for v in s.profile))

    def other_shade(s):
        return dataclasses.replace(s, teeth_shade=s.teeth_shade - 0.2)

    for change, views in (
        (other_frontal, FRONTAL),
        (other_shade, FRONTAL),
        (other_profile, PROFILE),
    ):
        _assert_seen_only_by(_change_per_view(change_speaker=change, generator=generator), views)


def test_generator_2_keeps_its_20_discrete_trait_pairs() -> None:
    a, b = speaker(3, generator=2), speaker(23, generator=2)
    assert (a.frontal_trait, a.profile_trait) == (3, 0)
    assert (a.teeth_gaps, a.profile) == (b.teeth_gaps, b.profile)  # ids 20 apart: a repeat


def test_generator_3_makes_every_id_a_new_person() -> None:
    people = [speaker(i) for i in range(200)]
    frontal = np.array([[*(x for gap in s.teeth_gaps for x in gap), s.teeth_shade] for s in people])
    profile = np.array([s.profile for s in people])
    assert len({tuple(row) for row in frontal}) == len({tuple(row) for row in profile}) == 200
    # Traits spread over their whole ranges, independently of the id's residues.
    assert frontal[:, -1].std() > 0.1 and profile.std(axis=0).min() > 0.04
    assert speaker(5) == speaker(5) and speaker(5).generator == 3
    with pytest.raises(ValueError, match="generator version"):
        speaker(5, generator=1)


def test_synth_json_records_the_generator_version(tiny_set: Path, tmp_path: Path) -> None:
    assert json.loads((tiny_set / "synth.json").read_text())["generator_version"] == 3
    old = dataclasses.replace(TINY, speakers=1, words=1, generator=2)
    generate(old, tmp_path, workers=1, progress=False)
    assert json.loads((tmp_path / "synth.json").read_text())["generator_version"] == 2


def test_word_factors_are_split_between_view_groups() -> None:
    # Words 0..4 share the protrusion pattern and differ inside the mouth; 0 and 5 the reverse.
    assert [word(w).protrusion for w in range(5)] == [0] * 5
    assert len({word(w).interior for w in range(5)}) == 5
    assert word(0).interior == word(5).interior and word(0).protrusion != word(5).protrusion


def _grey_change_between_words(new_word: int) -> dict[str, list[float]]:
    """Per view, the mean |grey change| when clips of word 0 are rendered as `new_word`.

    Same scenes (timing, babble, head motion, light), so only the word's trajectories differ.
    """
    config = SynthConfig(task="lipreading", speakers=3, words=1, clips_per_pair=2, noise=False)
    new, old = word(new_word), word(0)
    changes: dict[str, list[float]] = {}
    for plan in plan_clips(config):
        spk = speaker(plan.speaker)
        for scene in plan_scenes(plan, config):
            tau, track = scene.word_time, scene.track
            swapped = dataclasses.replace(
                track,
                protrusion=track.protrusion
                + PROTRUSION * (protrusion_trajectory(new, tau) - protrusion_trajectory(old, tau)),
                tongue=tongue_trajectory(new, tau),
                teeth=teeth_trajectory(new, tau),
            )
            a, b = (
                render(spk, t, scene.spec.yaw, scene.lighting, config.size).mean(axis=-1)
                for t in (track, swapped)
            )
            changes.setdefault(scene.spec.name, []).append(float(np.abs(a - b).mean()))
    return changes


def test_profile_views_see_the_protrusion_pattern_as_clearly_as_frontal_views_see_the_interior():
    # The first run learned only the frontal factor: the protrusion was a few pixels of
    # low-contrast silhouette. Words 0 and 5 differ only in protrusion, 0..4 only inside.
    by_protrusion = _grey_change_between_words(5)
    by_interior = {w: _grey_change_between_words(w) for w in range(1, 5)}
    profile = np.mean([by_protrusion[v] for v in PROFILE])
    frontal = np.mean([by_interior[w][v] for w in by_interior for v in FRONTAL])
    assert profile >= 0.7 * frontal, (profile, frontal)
    assert max(max(by_protrusion[v]) for v in FRONTAL) == 0
    assert max(max(by_interior[w][v]) for w in by_interior for v in PROFILE) == 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"task": "speech"}, "task must be one of"),
        ({"words": 26}, "--words must be 1..25"),
        ({"views": 6}, "--views must be 1..5"),
        ({"split": "dev"}, "--split must be"),
    ],
)
def test_bad_settings_are_refused_with_the_option_to_fix(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TINY, **changes)
