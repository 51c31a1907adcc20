"""Fixtures shared by every test folder: small checkpoints to export and serve."""

from __future__ import annotations

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
