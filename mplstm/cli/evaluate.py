"""`mplstm evaluate CHECKPOINT --data MANIFEST --split test`: accuracy, per class, every view subset."""

from __future__ import annotations

import argparse
from pathlib import Path

_DESCRIPTION = """\
Evaluate a checkpoint written by `mplstm train` on one split of a manifest, with the
checkpoint's own preprocessing, labels and views. Reports accuracy, top-5, per-class
accuracy, the confusion matrix (PNG), and accuracy for every subset of the views
(each single view, each pair, ..., all; the others masked as absent): the table that
tells how many cameras a deployment needs. Writes evaluation.json, evaluation.md and
confusion.png to --out (default: eval-SPLIT beside the checkpoint).

With --open-set the split holds people never seen in training (mplstm synth
--first-speaker): the first --gallery-people are enrolled from --enrol-clips clips each,
their other clips and every clip of the others are probes. Reports rank-1
identification, verification EER, TAR at FAR 1% and 0.1% with their thresholds, DIR and
FPIR, for every subset of the views, and a ROC plot: open_set.json, open_set.md and
roc.png in --out (default: open-set-SPLIT beside the checkpoint)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `evaluate` subcommand."""
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a checkpoint: accuracy, top-5, per class, confusion, every view subset",
        description=_DESCRIPTION,
    )
    parser.add_argument(
        "checkpoint", type=Path, metavar="CHECKPOINT", help="a .pt from mplstm train"
    )
    parser.add_argument("--data", type=Path, required=True, metavar="MANIFEST", help="manifest")
    parser.add_argument("--split", default="test", help="train, val or test (default test)")
    parser.add_argument("--out", type=Path, help="report folder (default: eval-SPLIT beside it)")
    parser.add_argument("--batch-size", type=int, default=16, help="clips per batch (default 16)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader processes (default 0)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="decoded-clip cache (default: <manifest folder>/.mplstm-cache, shared with training)",
    )
    parser.add_argument("--no-cache", action="store_true", help="decode every clip, cache nothing")
    parser.add_argument(
        "--all-views-only",
        action="store_true",
        help="skip the view-subset table (2^V - 1 passes over the split)",
    )
    parser.add_argument(
        "--open-set",
        action="store_true",
        help="open-set identity: enrol the split's people, identify and verify their other clips",
    )
    parser.add_argument(
        "--enrol-clips",
        type=int,
        default=2,
        metavar="K",
        help="--open-set: clips per person enrolled (2)",
    )
    parser.add_argument(
        "--gallery-people",
        type=int,
        metavar="N",
        help="--open-set: people enrolled (default: half); the rest are impostors",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the summary and the views-needed table."""
    import torch

    from mplstm.cli import CommandError
    from mplstm.core.manifest import ManifestError
    from mplstm.training.checkpoint import CheckpointError
    from mplstm.training.config import ConfigError
    from mplstm.training.data import DataError, default_cache_dir
    from mplstm.training.evaluate import evaluate_checkpoint
    from mplstm.training.train import pick_device

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch_size < 1:
        raise CommandError("--batch-size must be >= 1")
    cache_dir = None if args.no_cache else (args.cache_dir or default_cache_dir(args.data))
    if args.open_set:
        return _open_set(args, cache_dir)
    try:
        report, paths = evaluate_checkpoint(
            args.checkpoint,
            args.data,
            args.split,
            args.out,
            batch_size=args.batch_size,
            workers=args.workers,
            device=pick_device(args.device),
            cache_dir=cache_dir,
            all_subsets=not args.all_views_only,
            progress=not args.no_progress,
        )
    except (ConfigError, DataError, CheckpointError, ManifestError, FileNotFoundError) as exc:
        raise CommandError(str(exc)) from exc
    print(
        f"{args.split}: {report.clips} clips, accuracy {report.accuracy:.1%}, "
        f"top-{report.top_k} {report.top5:.1%}, cross-entropy {report.loss:.4f}"
    )
    for row in report.by_view_count:
        print(
            f"  {row.views} view(s): mean {row.mean_accuracy:.1%}, best {row.best_accuracy:.1%} "
            f"({', '.join(row.best_views)})"
        )
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def _open_set(args: argparse.Namespace, cache_dir: Path | None) -> int:
    """`evaluate --open-set`: print the all-views figures and the views-needed summary."""
    from mplstm.cli import CommandError
    from mplstm.core.manifest import ManifestError
    from mplstm.core.openset import OpenSetError
    from mplstm.training.checkpoint import CheckpointError
    from mplstm.training.config import ConfigError
    from mplstm.training.data import DataError
    from mplstm.training.openset import evaluate_open_set_checkpoint
    from mplstm.training.train import pick_device

    try:
        report, paths = evaluate_open_set_checkpoint(
            args.checkpoint,
            args.data,
            args.split,
            args.out,
            enrol_clips=args.enrol_clips,
            gallery_people=args.gallery_people,
            batch_size=args.batch_size,
            device=pick_device(args.device),
            cache_dir=cache_dir,
            all_subsets=not args.all_views_only,
            progress=not args.no_progress,
        )
    except (
        ConfigError,
        DataError,
        CheckpointError,
        ManifestError,
        OpenSetError,
        FileNotFoundError,
    ) as exc:
        raise CommandError(str(exc)) from exc
    r = report.all_views
    print(
        f"{args.split}: {r.gallery_people} people enrolled, {r.impostor_people} impostors; "
        f"all views: rank-1 {r.rank1:.1%}, EER {r.eer:.2%}, "
        + ", ".join(
            f"TAR {o.tar:.1%} at FAR {o.far:g} (threshold {o.threshold:.4f})" for o in r.operating
        )
    )
    for n in sorted({len(v) for v in report.subsets}):
        group = [res for v, res in report.subsets.items() if len(v) == n]
        print(
            f"  {n} view(s): mean rank-1 {sum(g.rank1 for g in group) / len(group):.1%}, "
            f"best {max(g.rank1 for g in group):.1%}"
        )
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0
