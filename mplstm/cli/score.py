"""`mplstm score`: a manifest of clips in, one result row per clip out (JSONL, CSV, Parquet).

`mplstm score merge OUT` joins the outputs of a sharded run.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from mplstm.inference.options import BackendChoice, Placement

if TYPE_CHECKING:
    from mplstm.scoring.hooks import ScoringHooks

_DESCRIPTION = """\
Score every clip of a manifest with a model package, offline: the service's decoding,
limits and backends, without HTTP. Decoding runs in worker processes while the model
infers. Writes one row per clip (id, label, prediction, score, top_k, views_used,
status, error_code, error) into chunk files under --out, each committed all-or-nothing,
then OUT/scores.FORMAT. A clip that cannot be decoded gets an error row; the run goes
on. Killed at any point, rerun with --resume: every clip ends up exactly once.

Sharding: --shard-index I --num-shards N (or JOB_COMPLETION_INDEX, set by a Kubernetes
Indexed Job, with --num-shards N) scores the clips whose id hashes to shard I; then
`mplstm score merge OUT` writes OUT/scores.FORMAT.

Exit status: 0 every clip scored; 1 some clips have error rows (0 with
--allow-clip-errors); 2 usage, manifest, package or output-folder errors."""

_MERGE_DESCRIPTION = """\
Join the shard outputs under OUT into OUT/scores.FORMAT, each id once. Reports missing
or unfinished shards, ids with more than one row and manifest ids with no row.
Exit status: 0 complete (the file is written); 1 something is missing or duplicated
(nothing written unless --partial); 2 OUT is not a scoring output."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `score` subcommand and its `merge` form."""
    parser = subparsers.add_parser(
        "score",
        help="batch-score a manifest of clips offline (resumable, sharded); `score merge` joins shards",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Required for scoring, not for `merge`: checked in `run`.
    parser.add_argument(
        "--model", type=Path, help="models/NAME (latest version) or models/NAME/VERSION"
    )
    parser.add_argument("--manifest", type=Path, help="clip manifest, .jsonl or .csv")
    parser.add_argument("--out", type=Path, help="output folder (shared by every shard)")
    parser.add_argument(
        "--format", default="jsonl", choices=("jsonl", "csv", "parquet"), help="default jsonl"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="clips per inference (default 8)")
    parser.add_argument(
        "--decode-workers",
        type=int,
        default=2,
        help="decoding processes (default 2; 0 decodes in the main process)",
    )
    parser.add_argument(
        "--shard-index",
        type=int,
        help="this shard, 0-based (default: $JOB_COMPLETION_INDEX, else 0)",
    )
    parser.add_argument("--num-shards", type=int, default=1, help="shards in all (default 1)")
    parser.add_argument("--resume", action="store_true", help="keep committed rows, score the rest")
    parser.add_argument("--top-k", type=int, default=5, help="labels per row in top_k (default 5)")
    parser.add_argument(
        "--backend",
        default="auto",
        choices=[c.value for c in BackendChoice],
        help="as MPLSTM_BACKEND of the service (default auto)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="ONNX Runtime intra-op threads, per worker under --inference workers "
        "(default: ONNX Runtime's own; the cores shared out among the workers)",
    )
    parser.add_argument(
        "--inference",
        default="auto",
        choices=[p.value for p in Placement],
        help="where the model runs: main (one process fed by the decode workers; for GPUs), "
        "workers (each decode worker infers its own batches on the CPU), auto (workers when "
        "the backend is on the CPU; default)",
    )
    parser.add_argument(
        "--camera-checks",
        choices=("on", "off"),
        help="check every camera (black, blank, frozen, no signal, duplicate), mask a failed "
        "one and record it in views_dropped (default: MPLSTM_CAMERA_CHECKS, on)",
    )
    parser.add_argument(
        "--allow-clip-errors",
        action="store_true",
        help="exit 0 even when some clips have error rows (for Job runners that retry on 1)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run, score_action=None)
    forms = parser.add_subparsers(dest="score_action", metavar="merge")
    merge = forms.add_parser("merge", help="join shard outputs", description=_MERGE_DESCRIPTION)
    merge.add_argument("merge_out", type=Path, metavar="OUT", help="the --out folder of the shards")
    merge.add_argument(
        "--manifest",
        dest="merge_manifest",
        metavar="MANIFEST",
        type=Path,
        help="manifest listing the expected ids (default: the one in OUT/run.json)",
    )
    merge.add_argument(
        "--partial", action="store_true", help="write OUT/scores.FORMAT even when incomplete"
    )


def run(args: argparse.Namespace, hooks: ScoringHooks | None = None) -> int:
    """Score (or merge) and print the summary; the exit status says whether clips failed.

    `hooks`: callables that watch the run (`mplstm.scoring.hooks`); none by default.
    """
    from mplstm.cli import CommandError
    from mplstm.scoring.output import OutputError
    from mplstm.scoring.shards import ShardError

    try:
        if args.score_action == "merge":
            return _merge(args)
        return _score(args, hooks)
    except (OutputError, ShardError) as exc:
        raise CommandError(str(exc)) from exc


def _score(args: argparse.Namespace, hooks: ScoringHooks | None) -> int:
    from mplstm.cli import CommandError
    from mplstm.inference.backend import BackendUnavailableError
    from mplstm.inference.options import PlacementError
    from mplstm.inference.settings import SettingsError
    from mplstm.scoring.hooks import NO_HOOKS
    from mplstm.scoring.runner import ScoreOptions, run_scoring
    from mplstm.scoring.shards import resolve_shard
    from mplstm.scoring.summary import format_summary

    missing = [f"--{name}" for name in ("model", "manifest", "out") if getattr(args, name) is None]
    if missing:
        raise CommandError(f"{', '.join(missing)} required (or use `mplstm score merge OUT`)")
    for name in ("batch_size", "top_k"):
        if getattr(args, name) < 1:
            raise CommandError(f"--{name.replace('_', '-')} must be >= 1")
    if args.decode_workers < 0 or args.threads < 0:
        raise CommandError("--decode-workers and --threads must be >= 0")
    options = ScoreOptions(
        model=args.model,
        manifest=args.manifest,
        out=args.out,
        fmt=args.format,
        batch_size=args.batch_size,
        decode_workers=args.decode_workers,
        shard=resolve_shard(args.shard_index, args.num_shards),
        resume=args.resume,
        top_k=args.top_k,
        backend=BackendChoice(args.backend),
        device=args.device,
        threads=args.threads,
        inference=Placement(args.inference),
        progress=not args.no_progress,
        camera_checks=None if args.camera_checks is None else args.camera_checks == "on",
    )
    try:
        result = run_scoring(options, hooks or NO_HOOKS)
    except (BackendUnavailableError, SettingsError, PlacementError) as exc:
        raise CommandError(str(exc)) from exc
    print(format_summary(result.summary))
    if result.merged is not None and result.merged.path is not None:
        print(f"wrote {result.merged.path}")
    elif result.merged is None:
        print(f"shard done; when every shard is: mplstm score merge {args.out}")
    return 0 if args.allow_clip_errors else result.summary.exit_code


def _merge(args: argparse.Namespace) -> int:
    from mplstm.scoring.merge import merge_outputs

    report = merge_outputs(args.merge_out, manifest=args.merge_manifest, write_partial=args.partial)
    print(
        f"{report.num_shards} shard(s), {report.rows} clips with a row "
        f"({report.ok} ok, {report.errors} error)"
    )
    for line in report.problems():
        print(f"  {line}")
    print(f"wrote {report.path}" if report.path else "nothing written: the run is incomplete")
    return 0 if report.complete else 1
