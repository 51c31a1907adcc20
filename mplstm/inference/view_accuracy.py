"""The view-subset accuracy table of an exported model, measured as it is served.

Each clip of a held-out split is decoded once through `core` (camera checks off: the
table is about cameras the model does not get, not about the clips), then run with
every subset of its views present and the others masked as absent and zeroed, exactly
as a failed camera reaches a served model. Export stores the table in the package
manifest (`mplstm export --eval-data`); `add_view_accuracy` adds it to a package that
was exported without it (`mplstm export --view-accuracy PACKAGE --eval-data MANIFEST`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mplstm.core.manifest import ClipRecord, read_manifest
from mplstm.core.package import (
    ModelPackage,
    PackageError,
    load_package,
    resolve_package,
    write_package_manifest,
)
from mplstm.core.preprocess import PreprocessConfig, load_clip
from mplstm.core.view_subsets import SubsetAccuracy, ViewSubsetTable, view_subsets
from mplstm.inference.backend import shape_groups
from mplstm.inference.options import BackendChoice, BackendOptions

# (uint8 clips [B, V, T, C, H, W], bool view masks [B, V]) -> scores [B, classes]
Infer = Callable[[np.ndarray, np.ndarray], np.ndarray]


def held_out_records(data: str | Path, split: str, labels: Sequence[str]) -> list[ClipRecord]:
    """The records of `split` in a clip manifest; PackageError when none or unknown labels."""
    records = [r for r in read_manifest(data) if r.split == split]
    if not records:
        raise PackageError(f"{data} has no clip in split {split!r}")
    unknown = sorted({r.label for r in records} - set(labels))
    if unknown:
        raise PackageError(f"{data}: labels {unknown} are not among the model's labels")
    return records


def measure_view_accuracy(
    infer: Infer,
    config: PreprocessConfig,
    labels: Sequence[str],
    data: str | Path,
    split: str,
    *,
    runtime: str,
    batch_size: int = 16,
    progress: bool = False,
) -> ViewSubsetTable:
    """Top-1 accuracy of `infer` on every subset of the config's views, over `split` of `data`."""
    from tqdm import tqdm

    names = tuple(config.view_names or ())
    if not names:
        raise ValueError("the preprocessing config must name the model's views")
    records = held_out_records(data, split, labels)
    index = {label: i for i, label in enumerate(labels)}
    subsets = view_subsets(len(names))
    correct = np.zeros(len(subsets), np.int64)
    # Every view decoded, none masked for a camera check: the subsets do the masking.
    config = dataclasses.replace(config, camera_checks=False)
    chunks = range(0, len(records), batch_size)
    for start in tqdm(chunks, desc="view subsets", unit="batch", disable=not progress):
        chunk = records[start : start + batch_size]
        clips = [load_clip({n: r.views[n] for n in names}, config) for r in chunk]
        # A live model samples at a fixed rate, so its clips differ in length: one batch per length.
        for members in shape_groups([c.frames for c in clips]):
            frames = np.stack([clips[i].frames for i in members])
            truth = np.array([index[chunk[i].label] for i in members])
            correct += _correct_per_subset(infer, frames, truth, subsets)
    return ViewSubsetTable(
        data=Path(data).as_posix(),
        split=split,
        clips=len(records),
        runtime=runtime,
        subsets=tuple(
            SubsetAccuracy(tuple(names[v] for v in subset), float(n / len(records)))
            for subset, n in zip(subsets, correct, strict=True)
        ),
    )


def _correct_per_subset(
    infer: Infer, frames: np.ndarray, truth: np.ndarray, subsets: Sequence[tuple[int, ...]]
) -> np.ndarray:
    """How many of a batch's clips each view subset gets right (the other views masked)."""
    correct = np.zeros(len(subsets), np.int64)
    for k, subset in enumerate(subsets):
        mask = np.zeros(frames.shape[:2], bool)
        mask[:, list(subset)] = True
        scores = infer(np.where(mask[:, :, None, None, None, None], frames, 0), mask)
        correct[k] = int((scores.argmax(axis=1) == truth).sum())
    return correct


def add_view_accuracy(
    package_path: str | Path,
    data: str | Path,
    split: str,
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> ModelPackage:
    """Measure a package's view-subset table with its model.onnx (ONNX Runtime, CPU) and
    write it into its manifest; the package's other files are left as they are."""
    from mplstm.inference.select import open_backend

    package = load_package(resolve_package(package_path))
    manifest = package.manifest
    backend = open_backend(package, BackendOptions(BackendChoice.ONNXRUNTIME, "cpu"))
    try:
        table = measure_view_accuracy(
            lambda clip, mask: backend.infer(clip, mask).logits,
            manifest.preprocess_config(),
            manifest.labels,
            data,
            split,
            runtime=backend.description,
            batch_size=min(batch_size, manifest.max_batch),
            progress=progress,
        )
    finally:
        backend.close()
    manifest.view_accuracy = table
    write_package_manifest(package.path, manifest)
    return load_package(package.path)
