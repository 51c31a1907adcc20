"""Fixtures shared by every test folder: small checkpoints to export and serve."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

TINY_VIEWS = ("front", "left90", "right30")
TINY_LABELS = ("w00", "w01", "w02", "w03")
# Families built on a recurrent layer take a hidden size; the ConvLSTM ones do not.
RECURRENT_FAMILIES = ("mplstm", "early_fusion", "late_fusion", "single_view")


def save_tiny_checkpoint(path: Path, family: str = "mplstm", **config: Any) -> Path:
    """An untrained small model of `family` saved as a checkpoint (3 views, 8x32x32 gray)."""
    import torch

    from mplstm.core.preprocess import PreprocessConfig
    from mplstm.training.checkpoint import CheckpointMeta, model_config_dict, save_checkpoint
    from mplstm.training.models import get_model

    torch.manual_seed(0)
    fields: dict[str, Any] = {"num_classes": len(TINY_LABELS), "num_views": len(TINY_VIEWS)}
    fields["widths"] = (8, 8, 16)
    if family in RECURRENT_FAMILIES:
        fields["hidden_size"] = 16
    model = get_model(family, **{**fields, **config})
    meta = CheckpointMeta(
        model_name=family,
        model_config=model_config_dict(model),
        labels=TINY_LABELS,
        view_names=TINY_VIEWS,
        view_yaws=(0.0, -90.0, 30.0),
        preprocess=PreprocessConfig(frames=8, height=32, width=32, channels=1),
        task="lipreading",
    )
    return save_checkpoint(path, model, meta)


@pytest.fixture(scope="session")
def tiny_checkpoint(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., Path]:
    """Factory: tiny_checkpoint(family="mplstm", **config) -> a checkpoint path."""

    def make(family: str = "mplstm", **config: Any) -> Path:
        folder = tmp_path_factory.mktemp(f"ckpt-{family}")
        return save_tiny_checkpoint(folder / "model.pt", family, **config)

    return make
