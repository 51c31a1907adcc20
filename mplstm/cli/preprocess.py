"""`mplstm preprocess`: show exactly what a model will see of one multi-view clip."""

from __future__ import annotations

import argparse
from pathlib import Path

_DESCRIPTION = """\
Decode the views of one clip with the same code as training and serving: sync
them, sample T frames at the same timestamps in every view, crop/resize to HxW.
Writes the clip as .npz (frames uint8 [V,T,C,H,W], view mask, sample timestamps,
view names, per-view info) and optionally a views x frames contact sheet PNG."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `preprocess` subcommand."""
    parser = subparsers.add_parser(
        "preprocess",
        help="decode and sync the views of one clip into model input (.npz, contact sheet PNG)",
        description=_DESCRIPTION,
    )
    parser.add_argument(
        "views",
        nargs="+",
        type=Path,
        metavar="VIEW_FILE",
        help="one video per view, in model order",
    )
    parser.add_argument(
        "--frames", type=int, default=20, metavar="T", help="frames sampled per view (default 20)"
    )
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=(88, 88),
        metavar=("H", "W"),
        help="frame size (default 88 88)",
    )
    parser.add_argument("--gray", action="store_true", help="one grayscale channel (default RGB)")
    parser.add_argument(
        "--mean",
        type=float,
        nargs="+",
        metavar="M",
        help="normalization mean on a 0-1 scale (one, or one per channel)",
    )
    parser.add_argument(
        "--std",
        type=float,
        nargs="+",
        metavar="S",
        help="normalization std (one, or one per channel)",
    )
    parser.add_argument(
        "--view-names",
        nargs="+",
        metavar="NAME",
        help="names of the views, in file order (default: the file names without suffix)",
    )
    parser.add_argument(
        "--sync-tolerance",
        type=float,
        default=0.2,
        metavar="SECONDS",
        help="largest allowed difference in view durations (default 0.2)",
    )
    parser.add_argument("--out", type=Path, required=True, help="output .npz")
    parser.add_argument("--png", type=Path, help="also write a views x frames contact sheet here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Preprocess the clip, print what each view held, write the outputs."""
    import numpy as np

    from mplstm.cli import CommandError
    from mplstm.core.contact_sheet import contact_sheet, write_png
    from mplstm.core.preprocess import PreprocessConfig, load_clip, normalize

    height, width = args.size
    try:
        config = PreprocessConfig(
            frames=args.frames,
            height=height,
            width=width,
            channels=1 if args.gray else 3,
            mean=tuple(args.mean or (0.0,)),
            std=tuple(args.std or (1.0,)),
            view_names=tuple(args.view_names or _default_names(args.views)),
            sync_tolerance_s=args.sync_tolerance,
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    clip = load_clip([str(path) for path in args.views], config)

    print(
        f"{'view':<10} {'fps seen':>8} {'frames':>6} {'offset s':>8} {'duration s':>10} {'source':>10}  file"
    )
    for name, info, path in zip(clip.view_names, clip.views, args.views, strict=True):
        note = "  (truncated: decoding stopped at a damaged packet)" if info.truncated else ""
        print(
            f"{name:<10} {info.fps_seen:>8.2f} {info.frames_decoded:>6d} {info.offset_s:>8.3f} "
            f"{info.duration_s:>10.3f} {f'{info.width}x{info.height}':>10}  {path}{note}"
        )
    extra = {}
    if args.mean is not None or args.std is not None:
        # The normalized input beside the raw frames, to compare with what a model receives.
        extra = {
            "normalized": normalize(clip.frames, config.mean, config.std),
            "mean": np.atleast_1d(config.mean),
            "std": np.atleast_1d(config.std),
        }
    clip.save_npz(args.out, **extra)
    print(
        f"wrote {args.out}: frames uint8 {list(clip.frames.shape)} [V,T,C,H,W]"
        + (", normalized float32" if extra else "")
        + f", sampled at {clip.timestamps[0]:.3f}..{clip.timestamps[-1]:.3f} s of each view"
    )
    if args.png:
        # Small model inputs are hard to see: scale cells up to about 96 px.
        scale = max(1, 96 // max(height, width))
        write_png(args.png, contact_sheet(clip, scale=scale))
        print(
            f"wrote {args.png}: contact sheet, {len(clip.view_names)} views x {config.frames} frames"
        )
    return 0


def _default_names(paths: list[Path]) -> list[str]:
    """File stems (front.mp4 -> front) when they tell the views apart, else view0, view1, ..."""
    stems = [path.stem for path in paths]
    return stems if len(set(stems)) == len(stems) else [f"view{i}" for i in range(len(paths))]
