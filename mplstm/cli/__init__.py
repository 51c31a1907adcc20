"""The `mplstm` console entry point: one parser, one module per subcommand."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from mplstm import __version__
from mplstm.core.errors import ClipError
from mplstm.core.manifest import ManifestError
from mplstm.core.package import PackageError

# Each module defines `register(subparsers)`, which adds its parser and sets `func`.
# Modules import their heavy dependencies (torch, onnxruntime) inside `func`, so
# `mplstm --help` stays fast and torch-free parts never load torch.
COMMAND_MODULES: tuple[str, ...] = (
    "synth",
    "preprocess",
    "manifest",
    "train",
    "evaluate",
    "export",
    "serve",
    "predict",
    "stream",
    "score",
)


class CommandError(Exception):
    """A user-facing failure: printed without a traceback, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    """The full `mplstm` parser (also used by tests and deployment checks)."""
    parser = argparse.ArgumentParser(
        prog="mplstm",
        description="Multi-view video recognition with Multi-Perspective LSTMs.",
    )
    parser.add_argument("--version", action="version", version=f"mplstm {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"mplstm.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CommandError, ClipError, ManifestError, PackageError) as exc:
        print(f"mplstm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
