"""`mplstm export CHECKPOINT --out models/NAME/VERSION` and `mplstm export --check PACKAGE`."""

from __future__ import annotations

import argparse
from pathlib import Path

from mplstm.inference.parity import TOLERANCES

_DESCRIPTION = """\
Turn a checkpoint from `mplstm train` into a model package (models/NAME/VERSION/):
model.onnx (uint8 clips in, normalisation inside the graph, logits and probabilities
out; every MP-LSTM layer one mplstm::MPLSTM node with a portable function body),
manifest.json (labels, views, preprocessing, I/O, parity, sha256 of every file) and a
Triton config.pbtxt. The export is checked against PyTorch on other batch sizes and
lengths, with masked views; no package is written when they disagree. Identity models
with an embedding head also output `embedding` [B, E], parity-checked the same way;
--open-set-data sets their thresholds at FAR 1% and 0.1% on people never seen in
training. --tensorrt also builds a TensorRT engine (GPU host with TensorRT). With
--eval-data, the exported model is scored on held-out clips with all views and with every
subset of them (the table the service answers `expected_accuracy` from). With --check
PACKAGE: verify the hashes and compare the runtimes present (ONNX Runtime, fp16, TensorRT)
in a table. With --view-accuracy PACKAGE --eval-data MANIFEST: add the view-subset table
to a package exported without it (its model.onnx on ONNX Runtime, CPU)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `export` subcommand."""
    parser = subparsers.add_parser(
        "export",
        help="export a checkpoint to a model package (ONNX, TensorRT), or --check one",
        description=_DESCRIPTION,
    )
    parser.add_argument("checkpoint", type=Path, nargs="?", metavar="CHECKPOINT")
    parser.add_argument("--out", type=Path, metavar="DIR", help="package folder models/NAME/VER")
    parser.add_argument("--check", type=Path, metavar="PACKAGE", help="check a package instead")
    parser.add_argument(
        "--view-accuracy",
        type=Path,
        metavar="PACKAGE",
        help="measure a package's accuracy on every view subset of --eval-data into its manifest",
    )
    parser.add_argument("--name", help="model name (default: the parent folder of --out)")
    parser.add_argument("--version", dest="model_version", help="default: the --out folder name")
    parser.add_argument("--fp16", action="store_true", help="also write model.fp16.onnx")
    parser.add_argument("--tensorrt", action="store_true", help="also build a TensorRT engine")
    parser.add_argument("--max-batch", type=int, default=32, help="largest batch (default 32)")
    parser.add_argument(
        "--frames-range",
        type=int,
        nargs=2,
        metavar=("A", "B"),
        help="T the model accepts (default: half to twice the training T)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=TOLERANCES["fp32"],
        help=f"parity: max |logits diff| (default {TOLERANCES['fp32']:g})",
    )
    parser.add_argument(
        "--eval-data",
        type=Path,
        metavar="MANIFEST",
        help="score the exported model on this clip manifest and record the accuracy",
    )
    parser.add_argument("--eval-split", default="test", help="split of --eval-data (test)")
    parser.add_argument(
        "--open-set-data",
        type=Path,
        metavar="MANIFEST",
        help="identity models with an embedding: set the thresholds at FAR 1%% and 0.1%% on "
        "this manifest's people, never seen in training (mplstm synth --first-speaker)",
    )
    parser.add_argument("--open-set-split", default="test", help="split of --open-set-data (test)")
    parser.add_argument(
        "--enrol-clips", type=int, default=2, help="--open-set-data: clips enrolled per person (2)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export, or check; exit status 1 when a check row fails."""
    from mplstm.cli import CommandError

    if args.check:
        from mplstm.export.check import check_package, format_table

        rows = check_package(args.check)
        print(format_table(rows))
        return 1 if any(r.status == "FAILED" for r in rows) else 0
    if args.view_accuracy:
        return _add_view_accuracy(args)
    if args.checkpoint is None or args.out is None:
        raise CommandError("give CHECKPOINT and --out DIR (or --check PACKAGE)")
    if args.max_batch < 1:
        raise CommandError("--max-batch must be >= 1")

    from mplstm.core.manifest import ManifestError
    from mplstm.export.package import ExportError, OpenSetOptions, build_package
    from mplstm.training.checkpoint import CheckpointError

    if args.tensorrt:
        from mplstm.export import tensorrt_build
        from mplstm.inference.tensorrt import TensorRTError, current_gpu, tensorrt_version

        # Before the export, not after: a host without TensorRT or a GPU is known at once.
        try:
            tensorrt_version()
            current_gpu()
        except TensorRTError as exc:
            raise CommandError(
                f"--tensorrt needs a GPU host with TensorRT (e.g. the image of Dockerfile.gpu): {exc}"
            ) from exc

    try:
        package = build_package(
            args.checkpoint,
            args.out,
            name=args.name,
            version=args.model_version,
            max_batch=args.max_batch,
            frames_range=tuple(args.frames_range) if args.frames_range else None,
            fp16=args.fp16 or args.tensorrt,
            tolerance=args.tolerance,
            eval_data=args.eval_data,
            eval_split=args.eval_split,
            open_set=OpenSetOptions(args.open_set_data, args.open_set_split, args.enrol_clips)
            if args.open_set_data
            else None,
            log=print,
        )
        if args.tensorrt:
            try:
                tensorrt_build.add_engine(package, max_batch=args.max_batch, log=print)
            except tensorrt_build.EngineBuildError as exc:
                raise CommandError(
                    f"{package.path} was written, but the TensorRT engine build failed: {exc}"
                ) from exc
    except (
        ExportError,
        CheckpointError,
        FileNotFoundError,
        ManifestError,
    ) as exc:
        raise CommandError(str(exc)) from exc
    return 0


def _add_view_accuracy(args: argparse.Namespace) -> int:
    """`--view-accuracy PACKAGE --eval-data MANIFEST`: the table into an existing package."""
    from mplstm.cli import CommandError
    from mplstm.core.errors import ClipError
    from mplstm.core.manifest import ManifestError
    from mplstm.core.package import PackageError
    from mplstm.inference.view_accuracy import add_view_accuracy

    if args.eval_data is None:
        raise CommandError("--view-accuracy PACKAGE needs --eval-data MANIFEST (held-out clips)")
    try:
        package = add_view_accuracy(
            args.view_accuracy, args.eval_data, args.eval_split, progress=True
        )
    except (PackageError, ManifestError, ClipError) as exc:
        raise CommandError(str(exc)) from exc
    table = package.manifest.view_accuracy
    assert table is not None
    print(f"{package.path}: accuracy of {len(table.subsets)} view subsets on {table.clips} clips")
    print(f"  of {table.data} ({table.split}), with {table.runtime}")
    for count in range(1, len(package.manifest.view_names) + 1):
        rows = [s for s in table.subsets if len(s.views) == count]
        worst = min(rows, key=lambda s: s.accuracy)
        print(
            f"  {count} view(s): mean {sum(s.accuracy for s in rows) / len(rows):.1%}, "
            f"worst {worst.accuracy:.1%} ({', '.join(worst.views)})"
        )
    return 0
