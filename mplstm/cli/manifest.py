"""`mplstm manifest`: build a data-set manifest from a known layout, or check one."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `manifest` subcommand and its `oulu` and `check` actions."""
    parser = subparsers.add_parser(
        "manifest",
        help="build a data-set manifest (JSONL/CSV) from OuluVS2, or check one",
        description="Data-set manifests: one clip a record, one video path per view.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    oulu = actions.add_parser(
        "oulu",
        help="manifest of an OuluVS2 tree (ROOT/cropped_mouth_mp4_<corpus>/<spk>/<view>/*.mp4)",
        description=(
            "One clip per (speaker, utterance) with a path per view (0deg, 30deg, 45deg, "
            "60deg, 90deg for cameras 1..5), labelled with the phrase or digit string; "
            "speaker-disjoint splits."
        ),
    )
    oulu.add_argument("root", type=Path, metavar="ROOT", help="folder holding the OuluVS2 archives")
    oulu.add_argument("--out", type=Path, required=True, help="manifest to write (.jsonl or .csv)")
    oulu.add_argument(
        "--corpus", choices=("phrase", "digit"), default="phrase", help="default phrase"
    )
    oulu.add_argument(
        "--views",
        type=int,
        nargs="+",
        default=[1, 2, 3, 4, 5],
        metavar="V",
        help="camera numbers 1..5 to include (default all)",
    )
    oulu.add_argument(
        "--split-fractions",
        type=float,
        nargs=3,
        default=(0.7, 0.15, 0.15),
        metavar=("TRAIN", "VAL", "TEST"),
        help="speaker proportions (default 0.7 0.15 0.15)",
    )
    oulu.add_argument("--split-seed", type=int, default=0, help="speaker shuffle (default 0)")
    for split in ("val", "test"):
        oulu.add_argument(
            f"--{split}-speakers",
            nargs="+",
            default=[],
            metavar="SPK",
            help=f"speakers (s1 or 1) that go to {split}; the others are shuffled",
        )
    oulu.add_argument(
        "--strict", action="store_true", help="fail on a clip that lacks a view (default: skip)"
    )
    oulu.set_defaults(func=run)
    check = actions.add_parser(
        "check",
        help="read a manifest, check every view file exists, print a summary",
        description="Validate a manifest the way training and scoring will read it.",
    )
    check.add_argument("manifest", type=Path, metavar="MANIFEST", help=".jsonl or .csv")
    cameras = check.add_argument_group(
        "camera checks",
        "decode every clip as training will (camera checks on) and report each camera that "
        "fails one (black, blank, frozen, no_signal, duplicate); exit 1 if any does",
    )
    cameras.add_argument("--cameras", action="store_true", help="check every clip's cameras")
    cameras.add_argument("--frames", type=int, default=20, help="T sampled frames (default 20)")
    cameras.add_argument(
        "--size", type=int, nargs=2, default=(64, 64), metavar=("H", "W"), help="default 64 64"
    )
    cameras.add_argument("--rgb", action="store_true", help="3 channels (default gray)")
    cameras.add_argument("--workers", type=int, default=2, help="decode processes (default 2)")
    cameras.add_argument("--no-progress", action="store_true", help="no progress bar")
    check.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `manifest oulu` or `manifest check`."""
    from collections import Counter

    from mplstm.cli import CommandError
    from mplstm.core.manifest import ManifestError, read_manifest, write_manifest
    from mplstm.core.oulu import read_oulu

    try:
        if args.action == "check":
            records = read_manifest(args.manifest)
            verb = "read"
            if args.cameras:
                return _check_cameras(args, records)
        else:
            given = {
                f"s{s.lstrip('sS')}": split
                for split in ("val", "test")
                for s in getattr(args, f"{split}_speakers")
            }
            records = read_oulu(
                args.root,
                corpus=args.corpus,
                views=args.views,
                splits=given,
                fractions=args.split_fractions,
                split_seed=args.split_seed,
                skip_incomplete=not args.strict,
            )
            write_manifest(records, args.out)
            verb = f"wrote {args.out} with"
    except (ManifestError, ValueError) as exc:
        raise CommandError(str(exc)) from exc
    splits = Counter(r.split for r in records)
    print(
        f"{verb} {len(records)} clips, {len({r.label for r in records})} labels, "
        f"{len({r.speaker for r in records})} speakers, views {list(records[0].views)}; "
        f"splits {dict(sorted(splits.items()))}"
    )
    return 0


def _check_cameras(args: argparse.Namespace, records: list) -> int:
    """`manifest check --cameras`: every clip decoded with the camera checks, failures listed."""
    from tqdm import tqdm

    from mplstm.cli import CommandError
    from mplstm.core.camera_survey import collect, survey_cameras
    from mplstm.core.preprocess import PreprocessConfig

    if args.frames < 1 or min(args.size) < 1 or args.workers < 0:
        raise CommandError("--frames and --size must be >= 1, --workers >= 0")
    config = PreprocessConfig(
        frames=args.frames, height=args.size[0], width=args.size[1], channels=3 if args.rgb else 1
    )
    results = survey_cameras(records, config, args.workers)
    bar = tqdm(results, total=len(records), unit="clip", disable=args.no_progress)
    survey = collect(iter(bar))
    print(
        f"{survey.clips} clips checked: {len(survey.failed)} with a failed camera, "
        f"{len(survey.unreadable)} unreadable"
    )
    for view, reasons in survey.by_camera().items():
        print(f"  {view}: " + ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items())))
    shown = list(survey.failed.items())[:_SHOWN]
    for clip_id, failures in shown:
        print(f"  {clip_id}: " + "; ".join(f.describe() for f in failures))
    if len(survey.failed) > len(shown):
        print(f"  ... and {len(survey.failed) - len(shown)} more clips")
    for clip_id, error in list(survey.unreadable.items())[:_SHOWN]:
        print(f"  {clip_id}: {error}")
    return 1 if survey.failed or survey.unreadable else 0


_SHOWN = 10  # clips listed per kind of problem
