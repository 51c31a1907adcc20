"""Evaluate a checkpoint on a split: accuracy, top-5, per class, confusion, every view subset.

The view-subset table answers "how many cameras do I need": the model runs on each
single view, each pair, ..., all views, with the others masked out as absent (the way a
failed camera reaches the model), on the same clips. `evaluate_checkpoint` writes
evaluation.json, evaluation.md and confusion.png.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mplstm.core.manifest import ClipRecord
from mplstm.core.view_subsets import view_subsets
from mplstm.training.checkpoint import CheckpointMeta, load_model
from mplstm.training.data import ClipDataset, DataError, make_loader, read_data_spec
from mplstm.training.plots import plot_confusion


@dataclass(frozen=True)
class SubsetResult:
    """Accuracy with only some views present."""

    views: tuple[str, ...]
    accuracy: float
    top5: float


@dataclass(frozen=True)
class ViewCountSummary:
    """Over every subset of `views` cameras: mean, best and worst accuracy."""

    views: int
    subsets: int
    mean_accuracy: float
    best_accuracy: float
    best_views: tuple[str, ...]
    worst_accuracy: float
    worst_views: tuple[str, ...]


@dataclass(frozen=True)
class EvalReport:
    """Everything `mplstm evaluate` reports (written as JSON and Markdown)."""

    checkpoint: str
    manifest: str
    split: str
    clips: int
    labels: tuple[str, ...]
    view_names: tuple[str, ...]
    accuracy: float  # all views
    top5: float  # top-k with k = min(5, classes)
    top_k: int
    loss: float  # mean cross-entropy, all views
    per_class: dict[str, dict[str, float | None]]  # label -> {"accuracy" (None: no clip), "clips"}
    confusion: list[list[int]]  # rows true, columns predicted, all views
    subsets: list[SubsetResult]
    by_view_count: list[ViewCountSummary]


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    subsets: Sequence[tuple[int, ...]] | None = None,
    progress: bool = False,
) -> tuple[dict[tuple[int, ...], np.ndarray], np.ndarray]:
    """Logits [N, classes] per view subset (default: all views) and labels [N].

    Views outside a subset are masked as absent; a clip left with no view gets -inf logits
    (counted wrong).
    """
    return per_subset(
        model,
        loader,
        device,
        lambda frames, mask, lengths: model(frames, mask, lengths),
        subsets,
        progress,
        -math.inf,
    )


@torch.no_grad()
def per_subset(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    run: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor],
    subsets: Sequence[tuple[int, ...]] | None = None,
    progress: bool = False,
    fill: float = math.nan,
) -> tuple[dict[tuple[int, ...], np.ndarray], np.ndarray]:
    """`run(frames, view_mask, lengths)` rows [N, ...] per view subset (default: all views), and labels.

    Views outside a subset are masked as absent; a clip left with no view gets `fill`.
    """
    model.eval()
    num_views = model.config.num_views
    subsets = list(subsets) if subsets is not None else [tuple(range(num_views))]
    keep = {s: torch.zeros(num_views, dtype=torch.bool, device=device) for s in subsets}
    for s in subsets:
        keep[s][list(s)] = True
    # Per subset, each batch's rows; None for a batch where no clip has a view of the subset.
    outputs: dict[tuple[int, ...], list[tuple[int, torch.Tensor | None]]] = {s: [] for s in subsets}
    labels = []
    for batch in tqdm(loader, desc="evaluate", unit="batch", disable=not progress, leave=False):
        batch = batch.to(device)
        labels.append(batch.labels.cpu())
        for s in subsets:
            mask = batch.view_mask & keep[s]
            usable = mask.any(dim=1)
            out = None
            if usable.any():
                lengths = None if batch.lengths is None else batch.lengths[usable]
                rows = run(batch.frames[usable], mask[usable], lengths).float()
                out = torch.full((len(batch), *rows.shape[1:]), fill, device=device)
                out[usable] = rows
            outputs[s].append((len(batch), None if out is None else out.cpu()))
    return (
        {s: _stacked(chunks, fill, model.config.num_classes) for s, chunks in outputs.items()},
        torch.cat(labels).numpy(),
    )


def _stacked(chunks: list[tuple[int, torch.Tensor | None]], fill: float, width: int) -> np.ndarray:
    """The batches' rows as one array, `fill` rows for batches that had none."""
    found = [c for _, c in chunks if c is not None]
    shape = found[0].shape[1:] if found else (width,)
    return torch.cat(
        [c if c is not None else torch.full((n, *shape), fill) for n, c in chunks]
    ).numpy()


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy (a clip with no prediction, all logits -inf, counts wrong)."""
    return top_k_accuracy(logits, labels, 1)


def top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of clips whose label is among the k highest logits (-inf rows count wrong)."""
    if not len(labels):
        return 0.0
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    hit = (top == labels[:, None]).any(axis=1) & np.isfinite(logits).any(axis=1)
    return float(np.mean(hit))


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of logits against labels."""
    if not len(labels):
        return 0.0
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """[classes, classes] counts, rows true class, columns predicted class."""
    matrix = np.zeros((classes, classes), np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def build_report(
    subset_logits: dict[tuple[int, ...], np.ndarray],
    labels: np.ndarray,
    class_names: Sequence[str],
    view_names: Sequence[str],
    *,
    checkpoint: str = "",
    manifest: str = "",
    split: str = "",
) -> EvalReport:
    """Metrics from `predict`'s output (the all-views subset must be among the subsets)."""
    everything = tuple(range(len(view_names)))
    logits = subset_logits[everything]
    k = min(5, len(class_names))
    matrix = confusion_matrix(logits.argmax(axis=1), labels, len(class_names))
    counts = matrix.sum(axis=1)
    per_class = {
        name: {
            "accuracy": float(matrix[i, i] / counts[i]) if counts[i] else None,
            "clips": int(counts[i]),
        }
        for i, name in enumerate(class_names)
    }
    subsets = [
        SubsetResult(
            tuple(view_names[v] for v in s),
            accuracy(out, labels),
            top_k_accuracy(out, labels, k),
        )
        for s, out in subset_logits.items()
    ]
    by_count = []
    for n in sorted({len(s.views) for s in subsets}):
        group = [s for s in subsets if len(s.views) == n]
        best = max(group, key=lambda s: s.accuracy)
        worst = min(group, key=lambda s: s.accuracy)
        by_count.append(
            ViewCountSummary(
                n,
                len(group),
                float(np.mean([s.accuracy for s in group])),
                best.accuracy,
                best.views,
                worst.accuracy,
                worst.views,
            )
        )
    return EvalReport(
        checkpoint=checkpoint,
        manifest=manifest,
        split=split,
        clips=len(labels),
        labels=tuple(class_names),
        view_names=tuple(view_names),
        accuracy=accuracy(logits, labels),
        top5=top_k_accuracy(logits, labels, k),
        top_k=k,
        loss=cross_entropy(logits, labels),
        per_class=per_class,
        confusion=matrix.tolist(),
        subsets=subsets,
        by_view_count=by_count,
    )


def report_markdown(report: EvalReport) -> str:
    """The report as Markdown: summary, views-needed table, every subset, per class."""
    pct = "{:.1%}".format
    lines = [
        f"# Evaluation: {Path(report.checkpoint).name or 'model'} on {report.split}",
        "",
        f"- clips: {report.clips} ({report.manifest})",
        f"- accuracy (all {len(report.view_names)} views): {pct(report.accuracy)}",
        f"- top-{report.top_k}: {pct(report.top5)}",
        f"- cross-entropy: {report.loss:.4f}",
        "",
        "## How many cameras",
        "",
        "| views | subsets | mean accuracy | best | best views | worst | worst views |",
        "| ---: | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    for c in report.by_view_count:
        lines.append(
            f"| {c.views} | {c.subsets} | {pct(c.mean_accuracy)} | {pct(c.best_accuracy)} | "
            f"{', '.join(c.best_views)} | {pct(c.worst_accuracy)} | {', '.join(c.worst_views)} |"
        )
    lines += [
        "",
        "## Every view subset",
        "",
        f"| views | accuracy | top-{report.top_k} |",
        "| --- | ---: | ---: |",
    ]
    for s in report.subsets:
        lines.append(f"| {', '.join(s.views)} | {pct(s.accuracy)} | {pct(s.top5)} |")
    lines += [
        "",
        "## Per class (all views)",
        "",
        "| class | clips | accuracy |",
        "| --- | ---: | ---: |",
    ]
    for name, row in report.per_class.items():
        acc = "n/a" if row["clips"] == 0 else pct(row["accuracy"])
        lines.append(f"| {name} | {row['clips']} | {acc} |")
    return "\n".join(lines) + "\n"


def write_report(report: EvalReport, out_dir: str | Path) -> dict[str, Path]:
    """Write evaluation.json, evaluation.md and confusion.png into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "evaluation.json",
        "markdown": out_dir / "evaluation.md",
        "confusion": out_dir / "confusion.png",
    }
    paths["json"].write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
    paths["markdown"].write_text(report_markdown(report), encoding="utf-8")
    plot_confusion(
        np.array(report.confusion),
        report.labels,
        paths["confusion"],
        title=f"{report.split}: accuracy {report.accuracy:.1%} ({report.clips} clips, all views)",
    )
    return paths


def load_for_evaluation(
    checkpoint: str | Path, manifest: str | Path, split: str, device: torch.device
) -> tuple[nn.Module, CheckpointMeta, list[ClipRecord]]:
    """The checkpoint's model and metadata, and the split's clips; DataError when the split
    is empty or lacks a view the model reads."""
    model, meta = load_model(checkpoint, device)
    spec = read_data_spec(manifest)
    records = spec.split(split)
    if not records:
        raise DataError(f"{manifest} has no clip in split {split!r}")
    missing = [name for name in meta.view_names if name not in spec.view_names]
    if missing:
        raise DataError(
            f"the model reads views {list(meta.view_names)}, but {manifest} has no {missing}"
        )
    return model, meta, records


def evaluate_checkpoint(
    checkpoint: str | Path,
    manifest: str | Path,
    split: str = "test",
    out_dir: str | Path | None = None,
    *,
    batch_size: int = 16,
    workers: int = 0,
    device: str | torch.device = "cpu",
    cache_dir: str | Path | None = None,
    all_subsets: bool = True,
    progress: bool = False,
) -> tuple[EvalReport, dict[str, Path]]:
    """Evaluate a checkpoint on one split of a manifest and write the report files."""
    device = torch.device(device)
    model, meta, records = load_for_evaluation(checkpoint, manifest, split, device)
    unknown = sorted({r.label for r in records} - set(meta.labels))
    if unknown:
        raise DataError(f"labels {unknown} in {manifest} were not trained: {list(meta.labels)}")
    dataset = ClipDataset(records, meta.labels, meta.preprocess, cache_dir)
    loader = make_loader(dataset, batch_size, workers, pin_memory=device.type == "cuda")
    subsets = view_subsets(len(meta.view_names)) if all_subsets else None
    subset_logits, labels = predict(model, loader, device, subsets, progress)
    report = build_report(
        subset_logits,
        labels,
        meta.labels,
        meta.view_names,
        checkpoint=str(checkpoint),
        manifest=str(manifest),
        split=split,
    )
    out_dir = Path(out_dir) if out_dir is not None else Path(checkpoint).parent / f"eval-{split}"
    return report, write_report(report, out_dir)
