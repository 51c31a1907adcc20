"""Checkpoint in, model package out (DESIGN.md §5): model.onnx, manifest.json, config.pbtxt.

`build_package` exports the whole model with raw uint8 clips in (normalisation inside
the graph) and logits + probabilities out, every MP-LSTM layer as one `mplstm::MPLSTM`
node with its function body; runs the parity check (PyTorch vs ONNX Runtime on batch
sizes and lengths other than the traced ones, with masked views) and refuses to write a
package that fails it; with held-out clips, scores the exported model on them, all
views and every view subset; then writes the Triton `config.pbtxt` and the manifest
with the sha256 of every file. A live (causal) model's package also gets
`model.step.onnx`, the step model of streaming sessions, parity-checked against
model.onnx (`step_model`).
"""

from __future__ import annotations

import dataclasses
import datetime
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor, nn

from mplstm import __version__
from mplstm.core.manifest import ClipRecord, read_manifest
from mplstm.core.openset import OpenSetError
from mplstm.core.package import (
    EMBEDDING_OUTPUT,
    MANIFEST_NAME,
    ONNX_FP16_NAME,
    ONNX_NAME,
    TRITON_CONFIG_NAME,
    ModelPackage,
    PackageManifest,
    StepSpec,
    TensorSpec,
    load_package,
    write_package_manifest,
)
from mplstm.core.preprocess import PreprocessConfig, load_clip
from mplstm.core.view_subsets import ViewSubsetTable
from mplstm.export.embedding import (
    EmbeddingPackagedModel,
    embedding_parity,
    embedding_size,
    embedding_spec,
    open_set_section,
)
from mplstm.export.step_model import add_step_model, is_live
from mplstm.export.torch_op import export_onnx
from mplstm.inference.backend import shape_groups
from mplstm.inference.parity import TOLERANCES, compare
from mplstm.inference.view_accuracy import measure_view_accuracy
from mplstm.training.checkpoint import CheckpointMeta, load_model

INPUT_NAMES = ("clip", "view_mask")
OUTPUT_NAMES = ("logits", "probabilities")
DEFAULT_TOLERANCE = TOLERANCES["fp32"]
TRACE_BATCH = 2


class ExportError(RuntimeError):
    """An export that must not produce a package (e.g. the parity check failed)."""


class PackagedModel(nn.Module):
    """The served signature: (clip uint8 [B,V,T,C,H,W], view_mask bool [B,V]) → logits, probs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, clip: Tensor, view_mask: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.model(clip, view_mask)
        return logits, logits.softmax(dim=-1)


@dataclass(frozen=True)
class ParityCase:
    """One parity input: batch size, length, whether some views are masked."""

    batch: int
    frames: int
    masked: bool


# Live models sample a clip at a fixed rate: T follows its length, so any T up to this.
LIVE_FRAMES_RANGE = (1, 1024)


def default_frames_range(frames: int, dynamic_time: bool) -> tuple[int, int]:
    """The T an export supports by default: half to twice the training T, or exactly it."""
    return (max(2, frames // 2), frames * 2) if dynamic_time else (frames, frames)


def parity_cases(frames: int, frames_range: tuple[int, int]) -> list[ParityCase]:
    """Batch 1, 3 and 8 at lengths other than the traced one where the range allows."""
    low, high = frames_range
    longer, shorter = min(high, frames + 3), max(low, frames - 3)
    return [
        ParityCase(1, frames, masked=False),
        ParityCase(3, longer, masked=True),
        ParityCase(8, shorter, masked=True),
    ]


def random_inputs(
    case: ParityCase, views: int, channels: int, height: int, width: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 clips and a view mask; masked cases drop views but keep one per row."""
    rng = np.random.default_rng(seed)
    clip = rng.integers(0, 256, (case.batch, views, case.frames, channels, height, width), np.uint8)
    mask = np.ones((case.batch, views), bool)
    if case.masked and views > 1:
        mask = rng.random((case.batch, views)) < 0.6
        mask[np.arange(case.batch), rng.integers(0, views, case.batch)] = True
    return clip, mask


def onnx_session(path: Path) -> ort.InferenceSession:
    """A CPU ONNX Runtime session on `path`, quiet about graph-optimisation warnings."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_parity(
    model: nn.Module,
    onnx_path: Path,
    cases: list[ParityCase],
    shape: tuple[int, int, int, int],
    tolerance: float,
) -> dict[str, Any]:
    """PyTorch vs ONNX Runtime on every case (`mplstm.inference.parity.compare`), for the manifest."""
    session = onnx_session(onnx_path)
    views, channels, height, width = shape
    results = []
    pairs = []
    for i, case in enumerate(cases):
        clip, mask = random_inputs(case, views, channels, height, width, seed=i)
        with torch.no_grad():
            expected = model(torch.from_numpy(clip), torch.from_numpy(mask)).numpy()
        got = session.run(["logits"], {"clip": clip, "view_mask": mask})[0]
        one = compare([(expected, got)], tolerance)
        results.append(
            {
                **dataclasses.asdict(case),
                "max_abs_diff": one.max_abs_diff,
                "argmax_equal": one.argmax_equal,
            }
        )
        pairs.append((expected, got))
    parity = compare(pairs, tolerance)
    return {
        "reference": f"torch {torch.__version__} (eager)",
        "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider",
        "tolerance": tolerance,
        "max_abs_diff": parity.max_abs_diff,
        "argmax_equal": parity.argmax_equal,
        "flips_beyond_tolerance": parity.flips_beyond_tolerance,
        "passed": parity.passed,
        "cases": results,
    }


def triton_config(manifest: PackageManifest, num_classes: int) -> str:
    """A Triton `config.pbtxt` (onnxruntime platform, dynamic batching) for the package."""
    outputs = tuple(spec.name for spec in manifest.outputs)
    pre = manifest.preprocess
    time_dim = -1 if manifest.frames_range[0] != manifest.frames_range[1] else pre.frames
    dims = {
        "clip": (
            "TYPE_UINT8",
            [len(manifest.view_names), time_dim, pre.channels, pre.height, pre.width],
        ),
        "view_mask": ("TYPE_BOOL", [len(manifest.view_names)]),
        "logits": ("TYPE_FP32", [num_classes]),
        "probabilities": ("TYPE_FP32", [num_classes]),
        EMBEDDING_OUTPUT: ("TYPE_FP32", [manifest.embedding_size]),
    }

    def block(names: tuple[str, ...]) -> str:
        return ",\n".join(
            f'  {{\n    name: "{n}"\n    data_type: {dims[n][0]}\n    dims: {dims[n][1]}\n  }}'
            for n in names
        )

    return (
        f'name: "{manifest.name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {manifest.max_batch}\n"
        f"input [\n{block(INPUT_NAMES)}\n]\n"
        f"output [\n{block(outputs)}\n]\n"
        "dynamic_batching {\n  max_queue_delay_microseconds: 2000\n}\n"
        "version_policy: { latest: { num_versions: 1 } }\n"
    )


def _io_specs(
    meta: CheckpointMeta, num_classes: int, dynamic_time: bool, embedding: int = 0
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    pre = meta.preprocess
    time: int | str = "time" if dynamic_time else pre.frames
    views = len(meta.view_names)
    inputs = (
        TensorSpec("clip", "uint8", ("batch", views, time, pre.channels, pre.height, pre.width)),
        TensorSpec("view_mask", "bool", ("batch", views)),
    )
    outputs = tuple(TensorSpec(n, "float32", ("batch", num_classes)) for n in OUTPUT_NAMES)
    return inputs, outputs + ((embedding_spec(embedding),) if embedding else ())


def export_model_onnx(
    model: nn.Module,
    meta: CheckpointMeta,
    path: Path,
    *,
    max_batch: int,
    frames_range: tuple[int, int],
) -> onnx.ModelProto:
    """Export the served signature to `path` with dynamic batch (and time, where supported)."""
    pre = meta.preprocess
    views = len(meta.view_names)
    clip, mask = random_inputs(
        ParityCase(TRACE_BATCH, pre.frames, masked=False),
        views,
        pre.channels,
        pre.height,
        pre.width,
        seed=0,
    )
    batch = torch.export.Dim("batch", min=1, max=max(max_batch, 64))
    clip_dims: dict[int, Any] = {0: batch}
    if getattr(model, "dynamic_time", True):
        clip_dims[2] = torch.export.Dim("time", min=frames_range[0], max=frames_range[1])
    embeds = embedding_size(model) > 0
    proto = export_onnx(
        (EmbeddingPackagedModel if embeds else PackagedModel)(model).eval(),
        (torch.from_numpy(clip), torch.from_numpy(mask)),
        input_names=INPUT_NAMES,
        output_names=(*OUTPUT_NAMES, EMBEDDING_OUTPUT) if embeds else OUTPUT_NAMES,
        dynamic_shapes={"clip": clip_dims, "view_mask": {0: batch}},
    )
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, path)
    return proto


def onnx_batches(
    session: ort.InferenceSession,
    records: list[ClipRecord],
    config: PreprocessConfig,
    names: list[str],
    batch_size: int = 16,
) -> Iterator[tuple[list[ClipRecord], list[np.ndarray]]]:
    """(records, outputs `names`) batch by batch, each clip decoded by `core` as served.

    A batch holds clips of one length (a live model's clips differ in T), so the records
    come in an order of their own: use the records yielded beside each output.
    """
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        clips = [load_clip(dict(r.views), config) for r in chunk]
        for group in shape_groups([c.frames for c in clips]):
            feeds = {
                "clip": np.stack([clips[i].frames for i in group]),
                "view_mask": np.stack([clips[i].view_mask for i in group]),
            }
            yield [chunk[i] for i in group], session.run(names, feeds)


def split_records(data: str | Path, split: str) -> list[ClipRecord]:
    """The clips of one split of a manifest; ExportError when there are none."""
    records = [r for r in read_manifest(data) if r.split == split]
    if not records:
        raise ExportError(f"{data} has no clips in split {split!r}")
    return records


def evaluate_onnx(
    onnx_path: Path,
    config: PreprocessConfig,
    labels: tuple[str, ...],
    data: str | Path,
    split: str,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Accuracy of an exported model on a manifest split, clips decoded by `core` as served."""
    records = split_records(data, split)
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({r.label for r in records} - set(index))
    if unknown:
        raise ExportError(f"{data}: labels {unknown} are not among the model's labels")
    correct = 0
    batches = onnx_batches(onnx_session(onnx_path), records, config, ["logits"], batch_size)
    for chunk, (logits,) in batches:
        correct += sum(
            int(p == index[r.label]) for p, r in zip(logits.argmax(-1), chunk, strict=True)
        )
    return {
        "data": Path(data).as_posix(),
        "split": split,
        "clips": len(records),
        "correct": correct,
        "accuracy": correct / len(records),
    }


def _open_set(
    onnx_path: Path, meta: CheckpointMeta, size: int, options: OpenSetOptions | None,
    log: Callable[[str], None],
) -> dict[str, Any]:  # fmt: skip
    """The manifest's `open_set` of a model with an embedding ({} without one)."""
    if not size:
        return {}
    if options is None:
        log("no --open-set-data: the package has no open-set thresholds")
        return open_set_section(size, None)
    log(f"setting open-set thresholds on the people of {options.data} ({options.split})")
    records = split_records(options.data, options.split)
    seen = sorted({r.label for r in records} & set(meta.labels))
    if seen:
        raise ExportError(
            f"{options.data}: {seen[:5]} were trained on; thresholds need people never seen "
            "in training"
        )
    batches = list(
        onnx_batches(onnx_session(onnx_path), records, meta.preprocess, [EMBEDDING_OUTPUT])
    )
    records = [r for chunk, _ in batches for r in chunk]
    embeddings = np.concatenate([out for _, (out,) in batches])
    try:
        section = open_set_section(
            size, (records, embeddings), data=options.data, split=options.split,
            enrol_clips=options.enrol_clips,
        )  # fmt: skip
    except OpenSetError as exc:
        raise ExportError(str(exc)) from exc
    ev = section["evaluation"]
    log(
        f"open set: rank-1 {ev['rank1']:.1%}, EER {ev['eer']:.2%}; thresholds {section['thresholds']}"
    )
    return section


@dataclass(frozen=True)
class OpenSetOptions:
    """Where export measures an identity model's open-set thresholds."""

    data: str | Path  # a manifest of people never seen in training
    split: str = "test"
    enrol_clips: int = 2


def build_package(
    checkpoint: str | Path,
    out: str | Path,
    *,
    name: str | None = None,
    version: str | None = None,
    max_batch: int = 32,
    frames_range: tuple[int, int] | None = None,
    fp16: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    eval_data: str | Path | None = None,
    eval_split: str = "test",
    open_set: OpenSetOptions | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> ModelPackage:
    """Export `checkpoint` into the package folder `out` (models/NAME/VERSION).

    NAME and VERSION default to the folder names. With `eval_data` (a clip manifest),
    the exported ONNX model is scored on that split through the `core` preprocessing
    path and the accuracy goes into the manifest. Raises ExportError, leaving no
    package behind, when parity does not hold.
    """
    out = Path(out)
    name = name or out.parent.name
    version = version or out.name
    if (out / MANIFEST_NAME).exists():
        raise ExportError(f"{out} already holds a package; export to a new version folder")
    model, meta = load_model(checkpoint)
    model.eval()
    dynamic_time = bool(getattr(model, "dynamic_time", True))
    frames_range = _checked_frames_range(meta, frames_range, dynamic_time)
    config = model.config
    num_classes = len(meta.labels)
    meta = _with_served_preprocess(meta, config)
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        parity = _export_with_parity(
            model, meta, tmp / ONNX_NAME, max_batch, frames_range, tolerance, log
        )
        step = _live_step_model(model, meta, tmp, max_batch, log) if is_live(model) else None
        if step is not None:
            parity["step_model"] = step[1]
        evaluation = _evaluation(tmp / ONNX_NAME, meta, eval_data, eval_split, log)
        view_accuracy = _view_accuracy(tmp / ONNX_NAME, meta, eval_data, eval_split, log)
        manifest = _package_manifest(
            meta,
            config,
            name=name,
            version=version,
            checkpoint=checkpoint,
            max_batch=max_batch,
            frames_range=frames_range,
            dynamic_time=dynamic_time,
            parity=parity,
            evaluation=evaluation,
        )
        manifest.view_accuracy = view_accuracy
        manifest.step = None if step is None else step[0]
        manifest.open_set = _open_set(tmp / ONNX_NAME, meta, embedding_size(model), open_set, log)
        _write_package_files(tmp, manifest, num_classes, fp16=fp16, log=log)
        if out.exists():
            out.rmdir()  # an empty folder only: a non-empty one raises, nothing is lost
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # Triton reads config.pbtxt from the model folder, beside the version folders.
    shutil.copyfile(out / TRITON_CONFIG_NAME, out.parent / TRITON_CONFIG_NAME)
    log(f"wrote {out} (parity max |diff| {parity['max_abs_diff']:.2g})")
    return load_package(out)


def _checked_frames_range(
    meta: CheckpointMeta, frames_range: tuple[int, int] | None, dynamic_time: bool
) -> tuple[int, int]:
    """The requested T range (or the default one), refused where the model cannot export it."""
    frames = meta.preprocess.frames
    if frames_range is None and meta.preprocess.fps is not None:
        frames_range = LIVE_FRAMES_RANGE
    frames_range = frames_range or default_frames_range(frames, dynamic_time)
    if not dynamic_time and tuple(frames_range) != (frames, frames):
        raise ExportError(
            f"{meta.model_name} exports for its training length only (T = {frames}); "
            f"--frames-range {frames_range[0]} {frames_range[1]} is not possible"
        )
    if not frames_range[0] <= frames <= frames_range[1]:
        raise ExportError(f"frames range {frames_range} must include the model's T = {frames}")
    return frames_range


def _with_served_preprocess(meta: CheckpointMeta, config: Any) -> CheckpointMeta:
    """`meta` with the preprocessing the package serves: the model's normalisation and views."""
    pre = dataclasses.replace(
        meta.preprocess,
        mean=tuple(config.mean),
        std=tuple(config.std),
        view_names=tuple(meta.view_names),
        allow_missing_views=getattr(config, "view_dropout", 0.0) > 0,
    )
    return dataclasses.replace(meta, preprocess=pre)


def _export_with_parity(
    model: nn.Module,
    meta: CheckpointMeta,
    onnx_path: Path,
    max_batch: int,
    frames_range: tuple[int, int],
    tolerance: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Export to `onnx_path` and run the parity check; ExportError when it fails."""
    pre = meta.preprocess
    frames = pre.frames
    log(f"exporting {meta.model_name} to ONNX (T in {frames_range[0]}..{frames_range[1]})")
    export_model_onnx(model, meta, onnx_path, max_batch=max_batch, frames_range=tuple(frames_range))
    log("checking parity: PyTorch vs ONNX Runtime")
    shape = (len(meta.view_names), pre.channels, pre.height, pre.width)
    parity = check_parity(
        model, onnx_path, parity_cases(frames, tuple(frames_range)), shape, tolerance
    )
    if not parity["passed"]:
        raise ExportError(
            f"parity check failed: max |logits diff| {parity['max_abs_diff']:.3g} "
            f"(tolerance {tolerance:g}), argmax equal: {parity['argmax_equal']}; "
            "no package written"
        )
    if embedding_size(model):
        cases = parity_cases(frames, tuple(frames_range))
        inputs = [random_inputs(c, *shape, seed=i) for i, c in enumerate(cases)]
        parity["embedding"] = embedding_parity(model, onnx_session(onnx_path), inputs)
        if not parity["embedding"]["passed"]:
            raise ExportError(
                f"parity check failed: max |embedding diff| "
                f"{parity['embedding']['max_abs_diff']:.3g}; no package written"
            )
    return parity


def _live_step_model(
    model: nn.Module,
    meta: CheckpointMeta,
    folder: Path,
    max_batch: int,
    log: Callable[[str], None],
) -> tuple[StepSpec, dict[str, Any]]:
    """model.step.onnx beside model.onnx, parity-checked; ExportError when parity fails."""
    pre = meta.preprocess
    shape = (len(meta.view_names), pre.channels, pre.height, pre.width)
    cases = [(1, pre.frames, False), (3, pre.frames + 5, True)]
    clips = [
        random_inputs(ParityCase(batch, steps, masked), *shape, seed=seed)
        for seed, (batch, steps, masked) in enumerate(cases)
    ]
    session = onnx_session(folder / ONNX_NAME)

    def whole(clip: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return session.run(["probabilities"], {"clip": clip, "view_mask": mask})[0]

    spec, parity = add_step_model(model, folder, shape, max_batch, clips, whole, log)
    if not parity["passed"]:
        raise ExportError(
            f"step model parity failed: max |probabilities diff| {parity['max_abs_diff']:.3g} "
            f"(tolerance {parity['tolerance']:g}), argmax equal: {parity['argmax_equal']}; "
            "no package written"
        )
    log(f"step model parity: max |probabilities diff| {parity['max_abs_diff']:.2g}")
    return spec, parity


def _evaluation(
    onnx_path: Path,
    meta: CheckpointMeta,
    eval_data: str | Path | None,
    eval_split: str,
    log: Callable[[str], None],
) -> dict[str, Any] | None:
    """`evaluate_onnx` on `eval_data`'s split for the manifest; None without `eval_data`."""
    if eval_data is None:
        return None
    log(f"scoring the ONNX model on {eval_data} ({eval_split})")
    evaluation = evaluate_onnx(onnx_path, meta.preprocess, meta.labels, eval_data, eval_split)
    log(f"{evaluation['clips']} clips, accuracy {evaluation['accuracy']:.1%}")
    return evaluation


def _view_accuracy(
    onnx_path: Path,
    meta: CheckpointMeta,
    eval_data: str | Path | None,
    eval_split: str,
    log: Callable[[str], None],
) -> ViewSubsetTable | None:
    """The exported model's accuracy on every view subset of `eval_data`'s split (None
    without `eval_data`), for the manifest: what a failed camera costs."""
    if eval_data is None:
        return None
    log(f"scoring every view subset on {eval_data} ({eval_split})")
    session = onnx_session(onnx_path)
    table = measure_view_accuracy(
        lambda clip, mask: session.run(["logits"], {"clip": clip, "view_mask": mask})[0],
        meta.preprocess,
        meta.labels,
        eval_data,
        eval_split,
        runtime=f"onnxruntime {ort.__version__} CPUExecutionProvider",
    )
    worst = min(table.subsets, key=lambda s: s.accuracy)
    log(f"{len(table.subsets)} view subsets, worst {worst.accuracy:.1%} ({', '.join(worst.views)})")
    return table


def _write_package_files(
    folder: Path,
    manifest: PackageManifest,
    num_classes: int,
    *,
    fp16: bool,
    log: Callable[[str], None],
) -> None:
    """Beside model.onnx: the fp16 model (when asked), config.pbtxt, and the manifest last."""
    if fp16:
        from mplstm.export.fp16 import to_fp16

        log("writing the fp16 model")
        onnx.save(to_fp16(onnx.load(folder / ONNX_NAME)), folder / ONNX_FP16_NAME)
    (folder / TRITON_CONFIG_NAME).write_text(triton_config(manifest, num_classes))
    write_package_manifest(folder, manifest)


def _package_manifest(
    meta: CheckpointMeta,
    config: Any,
    *,
    name: str,
    version: str,
    checkpoint: str | Path,
    max_batch: int,
    frames_range: tuple[int, int],
    dynamic_time: bool,
    parity: dict[str, Any],
    evaluation: dict[str, Any] | None,
) -> PackageManifest:
    """The package's manifest (file hashes are added when it is written)."""
    inputs, outputs = _io_specs(
        meta, len(meta.labels), dynamic_time, int(getattr(config, "embedding_size", 0) or 0)
    )
    return PackageManifest(
        name=name,
        version=version,
        task=meta.task or "classification",
        model_family=meta.model_name,
        labels=tuple(meta.labels),
        view_names=tuple(meta.view_names),
        view_yaws=meta.view_yaws,
        preprocess=meta.preprocess,
        view_dropout=float(getattr(config, "view_dropout", 0.0)),
        inputs=inputs,
        outputs=outputs,
        max_batch=max_batch,
        frames_range=tuple(frames_range),  # type: ignore[arg-type]
        training={
            "checkpoint": Path(checkpoint).name,
            "epoch": meta.epoch,
            "step": meta.step,
            "metrics": meta.metrics,
            "model_config": dataclasses.asdict(config),
            "evaluation": evaluation,
        },
        parity=parity,
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        mplstm_version=__version__,
    )
