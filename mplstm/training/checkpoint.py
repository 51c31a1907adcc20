"""Self-describing checkpoints: everything needed to rebuild, resume, evaluate or export a model.

A checkpoint is one `torch.save`d dict of plain values and tensors (loadable with
``weights_only=True``):

- ``model``: registry name, config fields, state dict;
- ``labels``, ``task``, ``view_names``, ``view_yaws``, ``preprocess`` (the `core`
  PreprocessConfig as a dict): what serving needs to turn video into this model's input;
- ``train``: the resolved training config, epoch/step counters, optimizer, scheduler
  and grad-scaler states, the torch RNG state, best validation result and history,
  so `--resume` continues exactly where the run stopped.

`load_model(path)` rebuilds the model from the checkpoint alone.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mplstm import __version__
from mplstm.core.preprocess import PreprocessConfig
from mplstm.training.models import get_model

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a readable mplstm checkpoint (or lacks what is asked of it)."""


@dataclass
class CheckpointMeta:
    """What a checkpoint says about its model (everything but the tensors of training state)."""

    model_name: str
    model_config: dict[str, Any]
    labels: tuple[str, ...]
    view_names: tuple[str, ...]
    preprocess: PreprocessConfig
    view_yaws: tuple[float, ...] | None = None
    task: str | None = None
    epoch: float = 0.0  # epochs completed, fractional when stopped mid-epoch
    step: int = 0  # optimizer steps taken
    metrics: dict[str, float] = field(default_factory=dict)  # e.g. val accuracy at this point


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    meta: CheckpointMeta,
    train_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (temp file in the same folder, then os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format_version": FORMAT_VERSION,
        "mplstm_version": __version__,
        "model": {
            "name": meta.model_name,
            "config": meta.model_config,
            "state_dict": model.state_dict(),
        },
        "labels": list(meta.labels),
        "task": meta.task,
        "view_names": list(meta.view_names),
        "view_yaws": None if meta.view_yaws is None else list(meta.view_yaws),
        "preprocess": meta.preprocess.to_dict(),
        "epoch": meta.epoch,
        "step": meta.step,
        "metrics": dict(meta.metrics),
        "train": train_state,
    }
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw checkpoint dict; ValueError naming the file when it is not one of ours."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a foreign or damaged file
        raise CheckpointError(f"{path} is not a readable mplstm checkpoint ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} is not an mplstm checkpoint of format {FORMAT_VERSION} "
            "(was it written by `mplstm train`?)"
        )
    return payload


def meta_from_checkpoint(payload: dict[str, Any]) -> CheckpointMeta:
    """The `CheckpointMeta` of a loaded checkpoint dict."""
    yaws = payload.get("view_yaws")
    return CheckpointMeta(
        model_name=payload["model"]["name"],
        model_config=dict(payload["model"]["config"]),
        labels=tuple(payload["labels"]),
        view_names=tuple(payload["view_names"]),
        preprocess=PreprocessConfig.from_dict(payload["preprocess"]),
        view_yaws=None if yaws is None else tuple(yaws),
        task=payload.get("task"),
        epoch=payload.get("epoch", 0.0),
        step=payload.get("step", 0),
        metrics=dict(payload.get("metrics") or {}),
    )


def build_model(meta: CheckpointMeta) -> nn.Module:
    """A fresh (untrained) model of the checkpoint's family and config."""
    return get_model(meta.model_name, **meta.model_config)


def load_model(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild a checkpoint's model (in eval mode) and return it with its metadata."""
    payload = load_checkpoint(path, map_location)
    meta = meta_from_checkpoint(payload)
    model = build_model(meta)
    model.load_state_dict(payload["model"]["state_dict"])
    model.to(map_location).eval()
    return model, meta


def model_config_dict(model: nn.Module) -> dict[str, Any]:
    """A model's config as plain values (tuples become lists), as a checkpoint stores it."""
    return {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in dataclasses.asdict(model.config).items()
    }
