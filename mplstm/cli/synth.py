"""`mplstm synth`: write a synthetic multi-view data set (videos + manifest)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `synth` subcommand (no heavy imports here: `mplstm --help` stays fast)."""
    parser = subparsers.add_parser(
        "synth",
        help="generate a synthetic multi-view lip-reading or identity data set",
        description=(
            "Render synthetic mouths from several yaw angles into real video files "
            "(OUT/clips/<clip>/<view>.mp4) and write OUT/manifest.jsonl and OUT/synth.json. "
            "Speakers and words look the same in every run; --seed varies everything per "
            "clip. Word labels are w00.., speaker labels s001.."
        ),
    )
    parser.add_argument("out", type=Path, metavar="OUT", help="output folder (new or empty)")
    _add_content_arguments(parser)
    _add_video_arguments(parser)
    parser.add_argument(
        "--split",
        choices=("auto", "train", "val", "test"),
        default="auto",
        help="auto: speaker-disjoint (lipreading) or clip-disjoint (identity) 70/15/15; "
        "or put every clip in one split",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="worker processes (default: one per usable CPU)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _add_content_arguments(parser: argparse.ArgumentParser) -> None:
    """What the data set holds: task, speakers, words, views, clips and seed."""
    parser.add_argument(
        "--task",
        choices=("lipreading", "identity"),
        required=True,
        help="labels are words or speakers",
    )
    parser.add_argument(
        "--speakers", type=int, required=True, metavar="N", help="how many speakers"
    )
    parser.add_argument(
        "--first-speaker",
        type=int,
        default=1,
        metavar="K",
        help="speaker ids K..K+N-1 (new K: unseen speakers) (default 1)",
    )
    parser.add_argument(
        "--words", type=int, default=10, metavar="W", help="vocabulary size, 1..25 (default 10)"
    )
    parser.add_argument(
        "--views",
        type=int,
        default=5,
        metavar="V",
        help="cameras, the first V of front (0°), left90 (-90°), right30 (+30°), right90 (+90°), "
        "left30 (-30°) (default 5)",
    )
    parser.add_argument(
        "--clips-per-pair",
        type=int,
        default=10,
        metavar="R",
        help="clips per (speaker, word) pair (default 10)",
    )
    parser.add_argument("--seed", type=int, default=0, help="varies every clip (default 0)")
    parser.add_argument(
        "--generator",
        type=int,
        choices=(2, 3),
        default=3,
        help="how speakers look: 3 = continuous identity traits, every id a new person "
        "(default); 2 = 20 discrete trait pairs, the data of the closed-set results",
    )


def _add_video_arguments(parser: argparse.ArgumentParser) -> None:
    """How each view's video file looks: frame size, frame rates and start offsets."""
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=(64, 64),
        metavar=("H", "W"),
        help="frame size (default 64 64)",
    )
    parser.add_argument(
        "--fps",
        type=float,
        nargs="+",
        default=(25.0, 30.0, 29.97),
        help="frame rates each view draws from per clip (default 25 30 29.97)",
    )
    parser.add_argument(
        "--max-offset",
        type=float,
        default=0.08,
        metavar="S",
        help="views start up to S seconds late (default 0.08)",
    )


def run(args: argparse.Namespace) -> int:
    """Generate the data set."""
    from mplstm.cli import CommandError
    from mplstm.core.synth import SynthConfig, generate

    try:
        config = SynthConfig(
            task=args.task,
            speakers=args.speakers,
            first_speaker=args.first_speaker,
            words=args.words,
            views=args.views,
            clips_per_pair=args.clips_per_pair,
            seed=args.seed,
            size=tuple(args.size),
            fps=tuple(args.fps),
            max_offset=args.max_offset,
            split=args.split,
            generator=args.generator,
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    if args.workers < 0:
        raise CommandError("--workers must be >= 0 (0: one per usable CPU)")
    out: Path = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CommandError(f"{out} exists and is not an empty folder: choose a new OUT")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    records = generate(config, out, workers=args.workers, progress=not args.no_progress)
    seconds = time.perf_counter() - started
    splits = {s: sum(r.split == s for r in records) for s in ("train", "val", "test")}
    print(
        f"wrote {len(records)} clips x {config.views} views to {out} in {seconds:.1f} s "
        f"({len(records) / seconds:.1f} clips/s); splits {splits}; manifest {out / 'manifest.jsonl'}"
    )
    return 0
