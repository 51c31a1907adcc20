"""`mplstm train`: train a model on a manifest from a TOML config plus flag overrides."""

from __future__ import annotations

import argparse

# The config module is torch-free: the parser (and `mplstm --help`) load no torch.
from mplstm.training.config import ConfigError, add_train_arguments

_DESCRIPTION = """\
Train a multi-view model. Settings come from a TOML config ([model], [data], [train],
[augment]; see configs/), then --set SECTION.KEY=VALUE, then the flags below. Clips are
decoded once through the core preprocessing path and cached as uint8 .npz. OUT gets
last.pt and best.pt (best validation accuracy; self-describing checkpoints), config.json,
history.json, curves.png, and eval-test/ (evaluation of best.pt on the test split).
Runs data-parallel unchanged under torchrun (train.batch_size is the global batch, split
over the processes; rank 0 writes everything): see docs/training.md."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train` subcommand."""
    parser = subparsers.add_parser(
        "train",
        help="train a model on a manifest (TOML config, checkpoints, curves, evaluation)",
        description=_DESCRIPTION,
    )
    add_train_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train; user errors (bad config, manifest, checkpoint) exit with status 2."""
    from mplstm.cli import CommandError
    from mplstm.core.manifest import ManifestError
    from mplstm.training.checkpoint import CheckpointError
    from mplstm.training.data import DataError
    from mplstm.training.distributed import DistributedError
    from mplstm.training.train import main

    user_errors = (
        ConfigError,
        DataError,
        CheckpointError,
        ManifestError,
        DistributedError,
        FileNotFoundError,
    )
    try:
        main(args)
    except user_errors as exc:
        raise CommandError(str(exc)) from exc
    return 0
