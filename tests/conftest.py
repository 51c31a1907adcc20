"""Fixtures shared by every test folder: small checkpoints to export and serve."""

from __future__ import annotations

import os

# Before anything imports grpc. The tests hold gRPC clients and start servers with
# subprocess; with grpcio 1.81's fork support on, a fork()ed child restarts gRPC's poller,
# whose epoll fd close_fds then closes: the child aborts before exec (grpc/grpc#43055).
# Nothing here forks to go on using gRPC, so fork support is not wanted.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tiny_models import save_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., Path]:
    """Factory: tiny_checkpoint(family="mplstm", **config) -> a checkpoint path."""

    def make(family: str = "mplstm", **config: Any) -> Path:
        folder = tmp_path_factory.mktemp(f"ckpt-{family}")
        return save_tiny_checkpoint(folder / "model.pt", family, **config)

    return make
