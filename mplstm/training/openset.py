"""`mplstm evaluate --open-set`: enrol people never seen in training, identify and verify them.

The checkpoint embeds every clip of the split once per subset of its views (the others
masked as absent, as for the closed-set table); `mplstm.core.openset` scores each subset
with the same protocol: rank-1, EER, TAR at FAR 1% and 0.1% and the thresholds that give
them, DIR and FPIR. Writes open_set.json, open_set.md and roc.png. The thresholds of the
all-views row are what `mplstm export --open-set-data` records in a package (measured
there again on the exported model).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mplstm.core.openset import (
    DEFAULT_FARS,
    OpenSetError,
    OpenSetResult,
    evaluate_open_set,
    make_protocol,
)
from mplstm.training.data import ClipDataset, make_loader
from mplstm.training.evaluate import load_for_evaluation, per_subset, view_subsets
from mplstm.training.plots import plot_roc


@dataclass(frozen=True)
class OpenSetReport:
    """Open-set figures of a checkpoint on one split, for every subset of its views."""

    checkpoint: str
    manifest: str
    split: str
    view_names: tuple[str, ...]
    enrol_clips: int
    gallery: tuple[str, ...]
    impostors: tuple[str, ...]
    embedding: str  # "head (E = 128)" or "normalised features (D = 256)"
    subsets: dict[tuple[str, ...], OpenSetResult]

    @property
    def all_views(self) -> OpenSetResult:
        return self.subsets[self.view_names]

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint,
            "manifest": self.manifest,
            "split": self.split,
            "view_names": list(self.view_names),
            "enrol_clips": self.enrol_clips,
            "gallery": list(self.gallery),
            "impostors": list(self.impostors),
            "embedding": self.embedding,
            "all_views": self.all_views.to_dict(),
            "subsets": [
                {"views": list(views), **result.to_dict(), "roc": None}
                for views, result in self.subsets.items()
            ],
        }


def evaluate_open_set_checkpoint(
    checkpoint: str | Path,
    manifest: str | Path,
    split: str = "test",
    out_dir: str | Path | None = None,
    *,
    enrol_clips: int = 2,
    gallery_people: int | None = None,
    fars: Sequence[float] = DEFAULT_FARS,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    cache_dir: str | Path | None = None,
    all_subsets: bool = True,
    progress: bool = False,
) -> tuple[OpenSetReport, dict[str, Path]]:
    """Open-set evaluation of a checkpoint on the people of one split; writes the report."""
    device = torch.device(device)
    model, meta, records = load_for_evaluation(checkpoint, manifest, split, device)
    protocol = make_protocol(
        [r.id for r in records],
        [r.label for r in records],
        enrol_clips=enrol_clips,
        gallery_people=gallery_people,
    )
    seen = sorted(set(protocol.people + protocol.impostor_people) & set(meta.labels))
    if seen:
        raise OpenSetError(
            f"{seen[:5]} were trained on: open-set evaluation needs people never seen in "
            "training (mplstm synth --first-speaker K with a new K)"
        )
    people = sorted({r.label for r in records})
    dataset = ClipDataset(records, people, meta.preprocess, cache_dir)
    loader = make_loader(dataset, batch_size, 0, pin_memory=device.type == "cuda")
    subsets = view_subsets(len(meta.view_names)) if all_subsets else None
    embeddings, _ = per_subset(
        model,
        loader,
        device,
        lambda f, m, lengths: model.embed(f, m, lengths)[1],
        subsets,
        progress,
    )
    results = {
        tuple(meta.view_names[v] for v in s): evaluate_open_set(e, protocol, fars)
        for s, e in embeddings.items()
    }
    size = model.config.embedding_size
    width = next(iter(embeddings.values())).shape[1]
    report = OpenSetReport(
        checkpoint=str(checkpoint),
        manifest=str(manifest),
        split=split,
        view_names=tuple(meta.view_names),
        enrol_clips=enrol_clips,
        gallery=protocol.people,
        impostors=protocol.impostor_people,
        embedding=f"head (E = {size})" if size else f"normalised features (D = {width})",
        subsets=results,
    )
    out_dir = (
        Path(out_dir) if out_dir is not None else Path(checkpoint).parent / f"open-set-{split}"
    )
    return report, write_open_set_report(report, out_dir)


def _views_needed(report: OpenSetReport) -> list[str]:
    """Per number of cameras: mean, best and worst rank-1 and EER over the subsets."""
    lines = [
        "| views | subsets | mean rank-1 | best rank-1 (views) | worst rank-1 (views) | mean EER |",
        "| ---: | ---: | ---: | --- | --- | ---: |",
    ]
    for n in sorted({len(v) for v in report.subsets}):
        group = {v: r for v, r in report.subsets.items() if len(v) == n}
        best = max(group, key=lambda v: group[v].rank1)
        worst = min(group, key=lambda v: group[v].rank1)
        lines.append(
            f"| {n} | {len(group)} | {np.mean([r.rank1 for r in group.values()]):.1%} | "
            f"{group[best].rank1:.1%} ({', '.join(best)}) | {group[worst].rank1:.1%} "
            f"({', '.join(worst)}) | {np.mean([r.eer for r in group.values()]):.2%} |"
        )
    return lines


def open_set_markdown(report: OpenSetReport) -> str:
    """The report as Markdown: the all-views figures, views needed, every subset."""
    r = report.all_views
    lines = [
        f"# Open-set evaluation: {Path(report.checkpoint).name} on {report.split}",
        "",
        f"- {r.gallery_people} people enrolled from {report.enrol_clips} clips each, "
        f"{r.genuine_probes} genuine probes; {r.impostor_people} impostors "
        f"({r.impostor_probes} probes); {r.genuine_pairs} genuine and {r.impostor_pairs} "
        f"impostor pairs ({report.manifest})",
        f"- embedding: {report.embedding}; template = normalised mean of the enrolment embeddings",
        f"- all {len(report.view_names)} views: rank-1 {r.rank1:.1%}, EER {r.eer:.2%} "
        f"(threshold {r.eer_threshold:.4f})",
        "",
        "| FAR asked | threshold | FAR measured | TAR | DIR | FPIR |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for o in r.operating:
        lines.append(
            f"| {o.far:g} | {o.threshold:.4f} | {o.far_measured:.3%} | {o.tar:.1%} | "
            f"{o.dir:.1%} | {o.fpir:.1%} |"
        )
    lines += ["", "## How many cameras", "", *_views_needed(report), "", "## Every view subset", ""]
    fars = [o.far for o in r.operating]
    lines.append("| views | rank-1 | EER | " + " | ".join(f"TAR@FAR {f:g}" for f in fars) + " |")
    lines.append("| --- | ---: | ---: | " + " | ".join("---:" for _ in fars) + " |")
    for views, res in report.subsets.items():
        tars = " | ".join(f"{res.at(f).tar:.1%}" for f in fars)
        lines.append(f"| {', '.join(views)} | {res.rank1:.1%} | {res.eer:.2%} | {tars} |")
    return "\n".join(lines) + "\n"


def write_open_set_report(report: OpenSetReport, out_dir: str | Path) -> dict[str, Path]:
    """Write open_set.json, open_set.md and roc.png into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "open_set.json",
        "markdown": out_dir / "open_set.md",
        "roc": out_dir / "roc.png",
    }
    paths["json"].write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    paths["markdown"].write_text(open_set_markdown(report), encoding="utf-8")
    curves = {}
    for n in sorted({len(v) for v in report.subsets}):
        group = {v: r for v, r in report.subsets.items() if len(v) == n}
        best = max(group, key=lambda v: (group[v].rank1, -group[v].eer))
        curves[f"{n} view(s): {', '.join(best)}"] = group[best].roc
    plot_roc(
        curves, paths["roc"], title=f"{report.split}: verification ROC (best subset per count)"
    )
    return paths
