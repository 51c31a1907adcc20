"""Training data: the decoded-clip cache, the dataset's samples, and augmentation."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mplstm.core.preprocess import PreprocessConfig
from mplstm.core.synth import SynthConfig, generate
from mplstm.core.synth.generate import VIEWS
from mplstm.training.augment import (
    Augment,
    AugmentConfig,
    flip_permutation,
    mask_time,
    mirror_views,
    random_crop,
)
from mplstm.training.data import (
    ClipCache,
    ClipDataset,
    DataSpec,
    collate,
    decode_record,
    pixel_stats,
    read_data_spec,
)

TINY = SynthConfig(
    task="lipreading", speakers=3, words=3, views=3, clips_per_pair=2, size=(32, 32), seed=1
)


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> DataSpec:
    out = tmp_path_factory.mktemp("tiny")
    generate(TINY, out, workers=1, progress=False)
    return read_data_spec(out / "manifest.jsonl")


def _config(spec: DataSpec, **changes) -> PreprocessConfig:
    values = {"frames": 6, "height": 24, "width": 24, "channels": 1, **changes}
    return PreprocessConfig(view_names=spec.view_names, **values)


def test_data_spec_takes_labels_and_view_angles_from_the_data_sets_metadata(
    spec: DataSpec,
) -> None:
    assert spec.labels == ("w00", "w01", "w02")
    assert spec.view_names == ("front", "left90", "right30")
    assert spec.view_yaws == (0.0, -90.0, 30.0)
    assert spec.task == "lipreading"
    assert {r.split for r in spec.records} == {"train", "val", "test"}


def test_second_epoch_reads_every_clip_from_the_cache_without_decoding(
    spec: DataSpec, tmp_path: Path
) -> None:
    dataset = ClipDataset(spec.split("train"), spec.labels, _config(spec), tmp_path / "cache")
    first = [dataset[i][0] for i in range(len(dataset))]
    assert (dataset.cache.decodes, dataset.cache.hits) == (len(dataset), 0)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == len(dataset)
    second = [dataset[i][0] for i in range(len(dataset))]
    assert (dataset.cache.decodes, dataset.cache.hits) == (len(dataset), len(dataset))
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_dataset_returns_what_the_cache_file_holds(spec: DataSpec, tmp_path: Path) -> None:
    config = _config(spec)
    cache = ClipCache(tmp_path, config)
    record = spec.split("train")[0]
    clip = decode_record(record, config)
    # Plant a different clip under the record's key: a cache hit must return it, not decode.
    planted = dataclasses.replace(clip, frames=255 - clip.frames)
    planted.save_npz(cache.path(record))
    dataset = ClipDataset([record], spec.labels, config, tmp_path)
    frames = dataset[0][0]
    assert np.array_equal(frames.numpy(), planted.frames)
    assert dataset.cache.decodes == 0


def test_cached_clip_equals_a_fresh_decode(spec: DataSpec, tmp_path: Path) -> None:
    config = _config(spec)
    record = spec.split("val")[0]
    ClipCache(tmp_path, config).load(record)
    cached = ClipCache(tmp_path, config).load(record)
    fresh = decode_record(record, config)
    assert np.array_equal(cached.frames, fresh.frames)
    assert np.array_equal(cached.view_mask, fresh.view_mask)
    assert np.allclose(cached.timestamps, fresh.timestamps)
    assert cached.view_names == fresh.view_names


def test_changed_preprocessing_misses_the_cache_but_normalisation_does_not(
    spec: DataSpec, tmp_path: Path
) -> None:
    record = spec.split("train")[0]
    base = ClipCache(tmp_path, _config(spec))
    base.load(record)
    for changes in ({"frames": 5}, {"height": 20, "width": 20}, {"sync_tolerance_s": 0.3}):
        other = ClipCache(tmp_path, _config(spec, **changes))
        clip = other.load(record)
        assert other.decodes == 1, changes
        assert clip.frames.shape[1:] == (
            other.config.frames,
            1,
            other.config.height,
            other.config.width,
        )
    # mean/std are applied by the model after the cache: the decoded frames are the same.
    renormalised = ClipCache(tmp_path, _config(spec, mean=0.5, std=0.25))
    renormalised.load(record)
    assert (renormalised.decodes, renormalised.hits) == (0, 1)


def test_a_changed_source_file_misses_the_cache(spec: DataSpec, tmp_path: Path) -> None:
    config = _config(spec)
    records = spec.split("test")[:2]
    warm = ClipCache(tmp_path, config)
    for record in records:
        warm.load(record)
    view = records[0].views["left90"]
    stat = view.stat()
    os.utime(view, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a rewritten file
    cache = ClipCache(tmp_path, config)
    for record in records:
        cache.load(record)
    assert (cache.decodes, cache.hits) == (1, 1)


def _fill_cache(cache: ClipCache, records: list) -> list[np.ndarray]:
    return [cache.load(record).frames for record in records]


def test_several_processes_fill_one_cache_safely(spec: DataSpec, tmp_path: Path) -> None:
    config = _config(spec)
    records = spec.split("train")
    # Every process loads every clip in the same order, so they race for the same entries.
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        results = pool.starmap(_fill_cache, [(ClipCache(tmp_path, config), records)] * 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ClipCache(tmp_path, config).path(r).name for r in records
    )  # one entry per clip, no temporary file left behind
    check = ClipCache(tmp_path, config)
    for i, record in enumerate(records):
        frames = check.load(record).frames
        for result in results:
            assert np.array_equal(result[i], frames)
        assert np.array_equal(frames, decode_record(record, config).frames)
    assert check.decodes == 0


def test_samples_are_uint8_frames_view_mask_and_label_index(spec: DataSpec) -> None:
    records = spec.split("train")
    dataset = ClipDataset(records, spec.labels, _config(spec), cache_dir=None)
    batch = collate([dataset[i] for i in range(3)])
    assert batch.frames.dtype == torch.uint8
    assert batch.frames.shape == (3, 3, 6, 1, 24, 24)
    assert batch.view_mask.dtype == torch.bool and batch.view_mask.all()
    assert batch.labels.tolist() == [spec.labels.index(r.label) for r in records[:3]]


def test_pixel_stats_match_the_decoded_frames(spec: DataSpec, tmp_path: Path) -> None:
    dataset = ClipDataset(spec.split("train"), spec.labels, _config(spec), tmp_path)
    (mean,), (std,) = pixel_stats(dataset, max_clips=len(dataset))
    pixels = np.stack([dataset.clip(i).frames for i in range(len(dataset))]) / 255
    assert mean == pytest.approx(pixels.mean(), rel=1e-6)
    assert std == pytest.approx(pixels.std(), rel=1e-6)


def test_augmentation_depends_only_on_seed_epoch_and_index(spec: DataSpec, tmp_path: Path) -> None:
    augment = Augment(AugmentConfig(crop_pad=3, time_mask=2))

    def dataset(seed: int) -> ClipDataset:
        return ClipDataset(spec.split("train"), spec.labels, _config(spec), tmp_path, augment, seed)

    a, b = dataset(0), dataset(0)
    assert torch.equal(a[2][0], b[2][0])
    b.set_epoch(1)
    assert not torch.equal(a[2][0], b[2][0])
    assert not torch.equal(a[2][0], dataset(1)[2][0])


def test_flip_needs_a_mirrored_camera_for_every_view() -> None:
    yaws = [v.yaw for v in VIEWS]  # front, left90, right30, right90, left30
    assert flip_permutation(yaws).tolist() == [0, 3, 4, 1, 2]
    assert flip_permutation(yaws[:3]) is None  # left90 and right30 have no partner
    assert flip_permutation(None) is None
    assert not Augment(AugmentConfig(flip="auto"), yaws[:3], "lipreading").flips
    assert Augment(AugmentConfig(flip="auto"), yaws, "lipreading").flips
    # A mirrored face may be another speaker (teeth gaps left or right of centre).
    assert not Augment(AugmentConfig(flip="auto"), yaws, "identity").flips
    assert Augment(AugmentConfig(flip="on"), yaws, "identity").flips
    with pytest.raises(ValueError, match="mirrored camera"):
        Augment(AugmentConfig(flip="on"), yaws[:3])


def test_flip_mirrors_every_view_into_its_mirrored_cameras_slot() -> None:
    # View v: value 10 * (v + 1) on its left half, 0 on its right half.
    frames = np.zeros((3, 2, 1, 4, 4), np.uint8)
    for v in range(3):
        frames[v, ..., :2] = 10 * (v + 1)
    mask = np.array([True, True, False])
    perm = flip_permutation([0.0, -90.0, 90.0])
    flipped, flipped_mask = mirror_views(frames, mask, perm)
    assert flipped_mask.tolist() == [True, False, True]
    for slot, source in enumerate([0, 2, 1]):
        assert (flipped[slot, ..., 2:] == 10 * (source + 1)).all()  # now on the right half
        assert (flipped[slot, ..., :2] == 0).all()


def test_random_crop_shifts_each_view_within_the_padding() -> None:
    rng = np.random.default_rng(0)
    frames = np.arange(2 * 3 * 1 * 8 * 8, dtype=np.uint8).reshape(2, 3, 1, 8, 8)
    out = random_crop(frames, 2, rng)
    assert out.shape == frames.shape
    assert not np.array_equal(out, frames)
    for v in range(2):
        # Some shift (dy, dx) in [-2, 2]^2 maps the original's interior onto the output.
        inner = out[v, :, :, 2:6, 2:6]
        assert any(
            np.array_equal(inner, frames[v, :, :, 2 + dy : 6 + dy, 2 + dx : 6 + dx])
            for dy in range(-2, 3)
            for dx in range(-2, 3)
        )


def test_time_mask_replaces_one_run_of_frames_in_every_view_by_the_mean_frame() -> None:
    rng = np.random.default_rng(3)
    frames = np.random.default_rng(0).integers(0, 255, (2, 10, 1, 4, 4), dtype=np.uint8)
    out = mask_time(frames, 3, rng)
    changed = np.flatnonzero((out != frames).any(axis=(0, 2, 3, 4)))
    assert len(changed) == 3 and np.all(np.diff(changed) == 1)
    mean = frames.mean(axis=1).round().astype(np.uint8)
    for t in changed:
        assert np.array_equal(out[:, t], mean)


def test_clips_of_different_lengths_are_padded_with_their_last_frame_and_given_lengths() -> None:
    from mplstm.training.data import collate

    short = torch.arange(2 * 3 * 4, dtype=torch.uint8).reshape(2, 3, 1, 2, 2)
    long = torch.ones(2, 5, 1, 2, 2, dtype=torch.uint8)
    mask = torch.ones(2, dtype=torch.bool)
    batch = collate([(short, mask, 0), (long, mask, 1)])
    assert batch.frames.shape == (2, 2, 5, 1, 2, 2)
    assert batch.lengths.tolist() == [3, 5]
    assert torch.equal(batch.frames[0, :, :3], short)
    assert torch.equal(batch.frames[0, :, 3:], short[:, 2:].expand(-1, 2, -1, -1, -1))
    same = collate([(long, mask, 0), (long, mask, 1)])
    assert same.lengths is None
