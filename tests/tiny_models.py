"""Small untrained checkpoints for tests that export, serve or score a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TINY_VIEWS = ("front", "left90", "right30")
TINY_LABELS = ("w00", "w01", "w02", "w03")
# Families built on a recurrent layer take a hidden size; the ConvLSTM ones do not.
RECURRENT_FAMILIES = ("mplstm", "early_fusion", "late_fusion", "single_view")
YAWS = {TINY_VIEWS: (0.0, -90.0, 30.0)}


def save_tiny_checkpoint(
    path: Path,
    family: str = "mplstm",
    *,
    views: tuple[str, ...] = TINY_VIEWS,
    labels: tuple[str, ...] = TINY_LABELS,
    seed: int = 0,
    fps: float | None = None,
    task: str = "lipreading",
    **config: Any,
) -> Path:
    """An untrained small model of `family` saved as a checkpoint (8 frames of 32x32 gray).

    With `fps`, a live model: causal, forward only, frames sampled at that rate.
    """
    import torch

    from mplstm.core.preprocess import PreprocessConfig
    from mplstm.training.checkpoint import CheckpointMeta, model_config_dict, save_checkpoint
    from mplstm.training.models import get_model

    torch.manual_seed(seed)
    fields: dict[str, Any] = {"num_classes": len(labels), "num_views": len(views)}
    fields["widths"] = (8, 8, 16)
    if family in RECURRENT_FAMILIES:
        fields["hidden_size"] = 16
    if fps is not None:
        fields.update(causal=True, bidirectional=False)
    model = get_model(family, **{**fields, **config})
    meta = CheckpointMeta(
        model_name=family,
        model_config=model_config_dict(model),
        labels=labels,
        view_names=views,
        view_yaws=YAWS.get(views),
        preprocess=PreprocessConfig(frames=8, height=32, width=32, channels=1, fps=fps),
        task=task,
    )
    return save_checkpoint(path, model, meta)
