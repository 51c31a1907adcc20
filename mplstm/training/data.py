"""Training data: a manifest's clips as uint8 tensors, decoded once and cached on disk.

`ClipDataset` turns `ClipRecord`s into (frames uint8 [V, T, C, H, W], view mask [V],
label index) through the one `core` preprocessing path (`load_clip`). `ClipCache` keeps
each decoded clip as an .npz keyed on the preprocessing config and on every view file's
path, size and mtime, so epochs after the first only `np.load`, and a changed file or
config never reads a stale entry. Entries are written to a temporary file in the cache
folder and moved into place with `os.replace`, so several processes may fill one cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mplstm.core.clip import Clip
from mplstm.core.manifest import ClipRecord, read_manifest
from mplstm.core.preprocess import PreprocessConfig, load_clip

# Data-set metadata files looked for beside the manifest (labels in class order, view angles).
METADATA_FILES: tuple[str, ...] = ("synth.json", "dataset.json")


class DataError(ValueError):
    """A data set that does not fit the request (labels, views, splits); says what to fix."""


# (frames uint8 [V, T, C, H, W], view mask bool [V], rng) -> (frames, view mask)
Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def default_cache_dir(manifest: str | Path) -> Path:
    """Where decoded clips of a manifest's data set are cached unless told otherwise."""
    return Path(manifest).parent / ".mplstm-cache"


@dataclass(frozen=True)
class DataSpec:
    """A data set as training sees it: its clips, class names and cameras."""

    records: list[ClipRecord]
    labels: tuple[str, ...]  # class names in class-index order
    view_names: tuple[str, ...]  # model view order
    view_yaws: tuple[float, ...] | None  # degrees per view, when the data set states them
    task: str | None  # "lipreading", "identity", or None when not stated

    def split(self, name: str) -> list[ClipRecord]:
        """The records of one split ('train', 'val', 'test')."""
        return [r for r in self.records if r.split == name]


def read_data_spec(manifest: str | Path) -> DataSpec:
    """Read a manifest and, when present, the metadata beside it (synth.json)."""
    manifest = Path(manifest)
    records = read_manifest(manifest)
    meta: dict = {}
    for name in METADATA_FILES:
        path = manifest.parent / name
        if path.is_file():
            try:
                meta = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise DataError(f"{path}: unreadable data-set metadata ({exc})") from exc
            break
    view_names = tuple(records[0].views)
    found = sorted({r.label for r in records})
    labels = tuple(meta.get("labels") or found)
    unknown = sorted(set(found) - set(labels))
    if unknown:
        raise DataError(f"{manifest}: labels {unknown} are not in the data set's label list")
    yaws = None
    angles = {v["name"]: float(v["yaw_deg"]) for v in meta.get("views", []) if "yaw_deg" in v}
    if all(name in angles for name in view_names):
        yaws = tuple(angles[name] for name in view_names)
    return DataSpec(records, labels, view_names, yaws, meta.get("task"))


class ClipCache:
    """Decoded clips as .npz files in `folder`; `decodes` and `hits` count this process's work."""

    def __init__(self, folder: str | Path, config: PreprocessConfig) -> None:
        self.folder = Path(folder)
        self.config = config
        decoding = config.to_dict()
        # Normalisation is applied after the cache (by the model), so it is not in the key:
        # measuring mean/std on the training clips then reuses the clips it decoded.
        del decoding["mean"], decoding["std"]
        self._config_key = json.dumps(decoding, sort_keys=True)
        self.decodes = 0
        self.hits = 0

    def path(self, record: ClipRecord) -> Path:
        """Where the record's clip is cached under the current config and file states."""
        views = []
        for name in self._view_names(record):
            stat = record.views[name].stat()
            views.append([name, str(record.views[name]), stat.st_size, stat.st_mtime_ns])
        key = hashlib.sha256(json.dumps([self._config_key, views]).encode()).hexdigest()[:24]
        safe_id = re.sub(r"[^A-Za-z0-9_.-]", "_", record.id)[:80]
        return self.folder / f"{safe_id}.{key}.npz"

    def load(self, record: ClipRecord) -> Clip:
        """The record's clip: from the cache when there, else decoded and stored."""
        path = self.path(record)
        if path.is_file():
            try:
                clip = Clip.load_npz(path)
                self.hits += 1
                return clip
            except (OSError, ValueError, KeyError, zipfile.BadZipFile):
                pass  # unreadable entry (disk trouble, foreign file): decode and overwrite
        clip = decode_record(record, self.config)
        self.decodes += 1
        # Same folder, so os.replace is an atomic rename: a reader never sees half a file.
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            clip.save_npz(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return clip

    def _view_names(self, record: ClipRecord) -> list[str]:
        return list(self.config.view_names or record.views)


def decode_record(record: ClipRecord, config: PreprocessConfig) -> Clip:
    """Decode one record's views (only those the config names, in its order)."""
    names = config.view_names or tuple(record.views)
    missing = [name for name in names if name not in record.views]
    if missing:
        raise DataError(f"clip {record.id!r} has no view(s) {missing}; it has {list(record.views)}")
    return load_clip({name: record.views[name] for name in names}, config)


class ClipDataset(Dataset):
    """Records -> (frames uint8 tensor [V, T, C, H, W], view mask bool [V], label index).

    `transform` (augmentation) gets a generator seeded by (seed, epoch, index), so a
    sample is the same whatever the worker count, order, or resumption; call `set_epoch`.
    """

    def __init__(
        self,
        records: Sequence[ClipRecord],
        labels: Sequence[str],
        config: PreprocessConfig,
        cache_dir: str | Path | None,
        transform: Transform | None = None,
        seed: int = 0,
    ) -> None:
        self.records = list(records)
        self.labels = tuple(labels)
        self.index = {label: i for i, label in enumerate(self.labels)}
        unknown = sorted({r.label for r in self.records} - set(self.index))
        if unknown:
            raise DataError(f"labels {unknown} are not among the model's labels {self.labels}")
        self.config = config
        self.cache = ClipCache(cache_dir, config) if cache_dir is not None else None
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's augmentation."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def clip(self, i: int) -> Clip:
        """The decoded (or cached) clip of record i, not augmented."""
        record = self.records[i]
        return self.cache.load(record) if self.cache else decode_record(record, self.config)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        clip = self.clip(i)
        frames, mask = clip.frames, clip.view_mask
        if self.transform is not None:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            frames, mask = self.transform(frames, mask, rng)
        label = self.index[self.records[i].label]
        return torch.from_numpy(np.ascontiguousarray(frames)), torch.from_numpy(mask), label


@dataclass
class Batch:
    """A collated batch: frames uint8 [B, V, T, C, H, W], view mask bool [B, V], labels [B].

    lengths [B] where clips differ in length (fixed-rate sampling: live models), else None.
    """

    frames: torch.Tensor
    view_mask: torch.Tensor
    labels: torch.Tensor
    lengths: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        """The batch on `device` (non-blocking from pinned memory)."""
        return Batch(
            self.frames.to(device, non_blocking=True),
            self.view_mask.to(device, non_blocking=True),
            self.labels.to(device, non_blocking=True),
            None if self.lengths is None else self.lengths.to(device, non_blocking=True),
        )

    def __len__(self) -> int:
        return len(self.labels)


def collate(samples: Sequence[tuple[torch.Tensor, torch.Tensor, int]]) -> Batch:
    """Stack `ClipDataset` samples into a `Batch`.

    Clips of different lengths (fixed-rate sampling) are padded at the end with their
    own last frame, which keeps batch-norm statistics close to real frames; `lengths`
    keeps the padding out of the recurrence and the pooling.
    """
    frames, masks, labels = zip(*samples, strict=True)
    steps = [f.shape[1] for f in frames]
    lengths = None
    if len(set(steps)) > 1:
        longest = max(steps)
        frames = tuple(
            torch.cat([f, f[:, -1:].expand(-1, longest - f.shape[1], -1, -1, -1)], dim=1)
            for f in frames
        )
        lengths = torch.tensor(steps, dtype=torch.long)
    return Batch(
        torch.stack(frames),
        torch.stack(masks),
        torch.tensor(labels, dtype=torch.long),
        lengths,
    )


def pixel_stats(
    dataset: ClipDataset, max_clips: int = 64
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of present views' pixels on a 0-1 scale.

    Over up to `max_clips` clips spread evenly over the dataset (manifests are often
    sorted by speaker).
    """
    sums = np.zeros(dataset.config.channels)
    squares = np.zeros(dataset.config.channels)
    count = 0
    picks = np.unique(np.linspace(0, len(dataset) - 1, min(len(dataset), max_clips)).round())
    for i in picks.astype(int).tolist():
        clip = dataset.clip(i)
        pixels = clip.frames[clip.view_mask].astype(np.float64) / 255  # [v, T, C, H, W]
        sums += pixels.sum(axis=(0, 1, 3, 4))
        squares += np.square(pixels).sum(axis=(0, 1, 3, 4))
        count += pixels.size // dataset.config.channels
    if count == 0:
        raise ValueError("no clip to measure pixel statistics on")
    mean = sums / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 1e-12))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def make_loader(
    dataset: ClipDataset,
    batch_size: int,
    workers: int = 0,
    order: Sequence[int] | None = None,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader of `Batch`es over `order` (indices; default: the dataset's order)."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=list(order) if order is not None else None,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        # spawn, not fork: forking a process that runs torch threads can hang the workers.
        multiprocessing_context="spawn" if workers > 0 else None,
        persistent_workers=False,
        # A loader of its own: by default each new iterator draws a seed from the global torch
        # RNG, so validating (or resuming) would shift the dropout draws of training.
        generator=torch.Generator().manual_seed(0),
    )
