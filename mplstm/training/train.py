"""Training, torchvision-reference style: `get_args_parser`, `train_one_epoch`, `validate`, `main`.

Config: a TOML file with [model] (name + the family's config fields), [data]
(preprocessing: T, H, W, channels, mean/std or "auto"), [train] (AdamW, cosine schedule,
batch size, seed, ...) and [augment]; then ``--set section.key=value`` overrides, then
flags. No module-level state: everything a run needs is passed in, so sweeps and
launchers can call `main(args)`.

Determinism: weights from `torch.manual_seed(seed)`, the clip order of an epoch from
(seed, epoch), augmentation from (seed, epoch, clip index); a checkpoint stores the
torch RNG state and how far into the epoch it is, so a resumed run takes the same steps
as an uninterrupted one (bit-identical on the same machine and thread count).

Under `torchrun` the same code runs data-parallel (mplstm/training/distributed.py):
train.batch_size is the global batch, split over the ranks; metrics are summed over the
ranks; rank 0 alone writes checkpoints, logs and plots; every rank's RNG state is saved.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mplstm.core.preprocess import PreprocessConfig
from mplstm.training.augment import Augment, AugmentConfig
from mplstm.training.checkpoint import (
    CheckpointMeta,
    load_checkpoint,
    meta_from_checkpoint,
    model_config_dict,
    save_checkpoint,
)
from mplstm.training.data import (
    ClipDataset,
    DataSpec,
    default_cache_dir,
    make_loader,
    pixel_stats,
    read_data_spec,
)
from mplstm.training.distributed import (
    DEFAULT_TIMEOUT_S,
    GlobalBatchSampler,
    World,
    init_world,
    local_batch_size,
    shard,
    shutdown,
    wrap,
)
from mplstm.training.evaluate import accuracy, cross_entropy, evaluate_checkpoint, predict
from mplstm.training.models import get_model
from mplstm.training.plots import plot_curves


class ConfigError(ValueError):
    """A training config (file, --set, flags) that cannot be used; the message says which key."""


@dataclass(frozen=True)
class DataConfig:
    """[data]: how clips become model input (stored in checkpoints as the preprocessing)."""

    frames: int = 20  # T
    height: int = 64
    width: int = 64
    channels: int = 1  # 1 grayscale (lip-reading convention), 3 RGB
    # Normalisation on a 0-1 scale; "auto" measures it on up to `stats_clips` training clips.
    mean: float | list[float] | str = "auto"
    std: float | list[float] | str = "auto"
    stats_clips: int = 64
    sync_tolerance_s: float = 0.2
    # Decoded-clip cache; "" = <manifest folder>/.mplstm-cache, "none" = decode every time.
    cache_dir: str = ""


@dataclass(frozen=True)
class TrainConfig:
    """[train]: optimisation and the loop."""

    epochs: int = 30
    batch_size: int = 16
    lr: float = 2e-3  # peak, after warm-up
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0  # linear warm-up, then cosine decay to lr * min_lr_ratio
    min_lr_ratio: float = 0.01
    label_smoothing: float = 0.1
    grad_clip: float = 5.0  # max gradient norm; 0 turns clipping off
    amp: bool = True  # mixed precision on CUDA (bf16 where supported); ignored on CPU
    seed: int = 0
    workers: int = 0  # DataLoader processes; 0 is fastest on 2 cores once clips are cached
    # Epochs trained on every view before the model's view_dropout starts: dropped views
    # from the first step kept a 5-view model on the frontal cue alone (docs/results.md).
    view_dropout_start_epoch: int = 0


@dataclass(frozen=True)
class RunConfig:
    """The whole resolved config of a run (saved in every checkpoint and in config.json)."""

    # Families share ModelConfig's view_dropout; 0.2 keeps a model working with a camera down.
    model: dict[str, Any] = field(default_factory=lambda: {"name": "mplstm", "view_dropout": 0.2})
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """Build from nested dicts, refusing unknown sections and keys by name."""
        sections = {"data": DataConfig, "train": TrainConfig, "augment": AugmentConfig}
        unknown = sorted(set(values) - {"model", *sections})
        if unknown:
            raise ConfigError(
                f"unknown config section(s) {unknown}; use model, {', '.join(sections)}"
            )
        built: dict[str, Any] = {}
        for name, section_class in sections.items():
            given = dict(values.get(name, {}))
            known = {f.name for f in dataclasses.fields(section_class)}
            bad = sorted(set(given) - known)
            if bad:
                raise ConfigError(
                    f"unknown key(s) {bad} in [{name}]; known: {', '.join(sorted(known))}"
                )
            try:
                built[name] = section_class(**given)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"[{name}]: {exc}") from exc
        model = {**cls().model, **values.get("model", {})}
        return cls(model=model, **built)


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a TOML config (or start from defaults) and apply section.key=value overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config {path} is not valid TOML: {exc}") from exc
    for item in overrides:
        key, sep, raw = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        values.setdefault(section, {})[name] = _toml_value(raw.strip())
    return RunConfig.from_dict(values)


def _toml_value(raw: str) -> Any:
    """A TOML value (number, bool, array, quoted string); a bare word is taken as a string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """--set items, then the shortcut flags (which win)."""
    pairs = [
        ("model.name", args.model, json.dumps),
        ("train.epochs", args.epochs, str),
        ("train.batch_size", args.batch_size, str),
        ("train.lr", args.lr, repr),
        ("train.seed", args.seed, str),
        ("train.workers", args.workers, str),
    ]
    return [*args.overrides, *(f"{k}={fmt(v)}" for k, v, fmt in pairs if v is not None)]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The training options, as `mplstm train` takes them."""
    from mplstm.cli.train import add_train_arguments

    parser = argparse.ArgumentParser(description="mplstm training", add_help=add_help)
    return add_train_arguments(parser)


def lr_at(step: int, total_steps: int, warmup_steps: int, config: TrainConfig) -> float:
    """Linear warm-up to config.lr, then cosine decay to config.lr * min_lr_ratio."""
    if step < warmup_steps:
        return config.lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


@dataclass
class EpochState:
    """Running totals of the epoch in progress (saved mid-epoch so a resume continues them)."""

    batches: int = 0
    clips: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seconds: float = 0.0

    def reduced(self, world: World) -> EpochState:
        """Totals over every rank (batches and time are the same on each: the maximum)."""
        clips, loss_sum, correct = world.sum([self.clips, self.loss_sum, self.correct])
        batches, seconds = world.max([self.batches, self.seconds])
        return EpochState(int(batches), int(clips), loss_sum, int(correct), seconds)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(1, self.clips)

    @property
    def acc(self) -> float:
        return self.correct / max(1, self.clips)


@dataclass
class Precision:
    """Mixed-precision settings of a run: autocast dtype (None: fp32) and grad scaler."""

    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None

    @classmethod
    def for_device(cls, device: torch.device, amp: bool) -> Precision:
        if device.type != "cuda" or not amp:
            return cls(None, None)
        if torch.cuda.is_bf16_supported():
            return cls(torch.bfloat16, None)
        return cls(torch.float16, torch.amp.GradScaler("cuda"))

    def autocast(self, device: torch.device) -> torch.autocast:
        return torch.autocast(
            device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None
        )


def train_one_epoch(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    device: torch.device,
    state: EpochState,
    *,
    step: int,
    lr_fn: Callable[[int], float],
    config: TrainConfig,
    precision: Precision,
    sampler: GlobalBatchSampler,
    should_stop: Callable[[], bool] = lambda: False,
    desc: str = "train",
    progress: bool = True,
) -> tuple[int, bool]:
    """Train over `loader`, updating `state` (this rank's totals) in place; returns (global
    step, stopped early).

    `criterion` gives per-clip losses; `loader` yields this rank's share of `sampler`'s
    global batches, and a step's loss is the mean over the whole global batch (DDP averages
    the ranks' gradients, hence the factor W), padding clips weighing nothing.
    """
    model.train()
    started = time.perf_counter()
    seconds_before = state.seconds
    bar = tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False, file=sys.stderr)
    stopped = False
    for batch in bar:
        batch = batch.to(device)
        weights = sampler.weights(state.batches, len(batch)).to(device)
        lr = lr_fn(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with precision.autocast(device):
            logits = model(batch.frames, batch.view_mask)
            losses = criterion(logits.float(), batch.labels) * weights
            loss = losses.sum() * (sampler.num_replicas / sampler.clips_in(state.batches))
        optimizer.zero_grad(set_to_none=True)
        if precision.scaler is not None:
            precision.scaler.scale(loss).backward()
            precision.scaler.unscale_(optimizer)
        else:
            loss.backward()
        if config.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        if precision.scaler is not None:
            precision.scaler.step(optimizer)
            precision.scaler.update()
        else:
            optimizer.step()
        step += 1
        state.batches += 1
        state.clips += int(weights.sum())
        state.loss_sum += losses.sum().item()
        state.correct += int(((logits.argmax(dim=1) == batch.labels) & (weights > 0)).sum())
        state.seconds = seconds_before + time.perf_counter() - started
        bar.set_postfix(
            loss=f"{state.loss:.3f}",
            acc=f"{state.acc:.3f}",
            clips_s=f"{state.clips / max(state.seconds, 1e-9):.1f}",
            lr=f"{lr:.2e}",
        )
        if should_stop():
            stopped = True
            break
    bar.close()
    return step, stopped


def validate(
    model: nn.Module,
    loader: torch.utils.data.DataLoader | None,
    device: torch.device,
    world: World | None = None,
) -> dict[str, float]:
    """Validation loss and accuracy with every view present, over every rank's share
    (`loader` None: this rank has no validation clip)."""
    totals = [0.0, 0.0, 0.0]  # loss sum, correct, clips
    if loader is not None:
        subset_logits, labels = predict(model, loader, device)
        (logits,) = subset_logits.values()
        n = len(labels)
        totals = [cross_entropy(logits, labels) * n, accuracy(logits, labels) * n, n]
    loss_sum, correct, clips = (world or World()).sum(totals)
    return {"val_loss": loss_sum / max(clips, 1), "val_acc": correct / max(clips, 1)}


def pick_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; anything else as torch spells it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"--device {name!r}: use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine")
    return device


def _preprocess(config: DataConfig, spec: DataSpec) -> PreprocessConfig:
    """The preprocessing of a new run (mean/std 0/1 until measured when "auto")."""

    def values(name: str, default: float) -> tuple[float, ...]:
        value = getattr(config, name)
        if isinstance(value, str):
            if value != "auto":
                raise ConfigError(f'data.{name} must be a number, a list or "auto", got {value!r}')
            return (default,) * config.channels
        return _per_channel(tuple(float(v) for v in np.atleast_1d(value)), config.channels)

    try:
        return PreprocessConfig(
            frames=config.frames,
            height=config.height,
            width=config.width,
            channels=config.channels,
            mean=values("mean", 0.0),
            std=values("std", 1.0),
            view_names=spec.view_names,
            sync_tolerance_s=config.sync_tolerance_s,
        )
    except ValueError as exc:
        raise ConfigError(f"[data]: {exc}") from exc


def _per_channel(values: tuple[float, ...], channels: int) -> tuple[float, ...]:
    return values * channels if len(values) == 1 else values


def _cache_dir(config: DataConfig, manifest: Path) -> Path | None:
    if config.cache_dir == "none":
        return None
    return Path(config.cache_dir) if config.cache_dir else default_cache_dir(manifest)


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint so that --resume continues from it."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    current: EpochState = field(default_factory=EpochState)  # the epoch in progress
    history: list[dict[str, float]] = field(default_factory=list)  # one row per validation
    best: dict[str, float] = field(
        default_factory=lambda: {"val_acc": -1.0, "val_loss": math.inf, "epoch": 0.0}
    )

    def epochs_done(self, steps_per_epoch: int) -> float:
        """Completed epochs, with the fraction of the one in progress."""
        return round(self.epoch + self.current.batches / steps_per_epoch, 4)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Progress:
        return cls(
            epoch=values["epoch"],
            step=values["step"],
            current=EpochState(**values["current"]),
            history=list(values["history"]),
            best=dict(values["best"]),
        )


def _settings(args: argparse.Namespace) -> tuple[RunConfig, Path, dict[str, Any] | None]:
    """The run's config and manifest, and the checkpoint to resume from (None: a new run).

    ``--resume auto`` (for jobs that rerun one command line after a failure) starts a new
    run, or continues OUT/last.pt when there is one, provided the command asks for the
    config it was saved with.
    """
    out: Path = args.out
    auto = args.resume == "auto"
    resume = ("last" if (out / "last.pt").exists() else None) if auto else args.resume
    if not resume:
        if args.data is None:
            raise ConfigError("--data MANIFEST is required (unless --resume)")
        if (out / "last.pt").exists():
            raise ConfigError(
                f"{out} already holds a run: continue it with --resume or pick another --out"
            )
        return load_config(args.config, flag_overrides(args)), Path(args.data), None
    if not auto and (args.config or flag_overrides(args)):
        raise ConfigError(
            "--resume continues with the run's saved config: drop --config/--set/flags"
        )
    path = out / "last.pt" if resume == "last" else Path(resume)
    resumed = load_checkpoint(path, "cpu")
    if not resumed.get("train"):
        raise ConfigError(f"{path} holds no training state to resume from")
    config = RunConfig.from_dict(resumed["train"]["config"])
    if auto and load_config(args.config, flag_overrides(args)) != config:
        raise ConfigError(
            f"--resume auto: {path} was trained with another config than this command "
            "gives; pick another --out, or resume it with --resume alone"
        )
    return config, Path(args.data or resumed["train"]["manifest"]), resumed


def _new_model(
    config: RunConfig, spec: DataSpec, preprocess: PreprocessConfig
) -> tuple[nn.Module, CheckpointMeta]:
    """Build the configured family for this data set (classes, views, channels, mean/std)."""
    name = config.model["name"]
    fields = {k: v for k, v in config.model.items() if k != "name"}
    try:
        model = get_model(
            name,
            **{
                "num_classes": len(spec.labels),
                "num_views": len(spec.view_names),
                "in_channels": preprocess.channels,
                "mean": _per_channel(tuple(preprocess.mean), preprocess.channels),
                "std": _per_channel(tuple(preprocess.std), preprocess.channels),
                **fields,
            },
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[model]: {exc}") from exc
    meta = CheckpointMeta(
        model_name=name,
        model_config=model_config_dict(model),
        labels=spec.labels,
        view_names=spec.view_names,
        preprocess=preprocess,
        view_yaws=spec.view_yaws,
        task=spec.task,
    )
    return model, meta


def _measure_normalisation(
    config: DataConfig, preprocess: PreprocessConfig, train_set: ClipDataset
) -> PreprocessConfig:
    """Fill in "auto" mean/std from (unaugmented) training clips; this also fills the cache."""
    if "auto" not in (config.mean, config.std):
        return preprocess
    mean, std = pixel_stats(train_set, config.stats_clips)
    return dataclasses.replace(
        preprocess,
        mean=mean if config.mean == "auto" else preprocess.mean,
        std=std if config.std == "auto" else preprocess.std,
    )


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train (or resume), keep best.pt and last.pt, plot curves, evaluate best.pt; return a summary.

    Under torchrun, every rank runs this; rank 0 alone writes and prints.
    """
    if args.threads:
        torch.set_num_threads(args.threads)
    world = init_world(pick_device(args.device), args.dist_timeout or DEFAULT_TIMEOUT_S)
    finished = False
    try:
        summary = _train(args, world)
        finished = True
        return summary
    finally:
        shutdown(world, finished)


def _train(args: argparse.Namespace, world: World) -> dict[str, Any]:
    """`main` on this rank of `world` (one process: the whole run)."""
    device = world.device
    out: Path = args.out
    config, manifest, resumed = _settings(args)
    tc = config.train
    if tc.epochs < 1 or tc.batch_size < 1:
        raise ConfigError("train.epochs and train.batch_size must be >= 1")
    if tc.view_dropout_start_epoch < 0:
        raise ConfigError(
            f"train.view_dropout_start_epoch must be >= 0, got {tc.view_dropout_start_epoch}"
        )
    local_batch = local_batch_size(tc.batch_size, world)

    spec = read_data_spec(manifest)
    if not spec.split("train"):
        raise ConfigError(f"{manifest} has no clip in split 'train'")
    try:
        augment = Augment(config.augment, spec.view_yaws, spec.task)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    cache_dir = _cache_dir(config.data, manifest)
    preprocess = (
        meta_from_checkpoint(resumed).preprocess if resumed else _preprocess(config.data, spec)
    )
    if resumed is None:
        # Rank 0 measures (and caches what it decodes); the others take its numbers.
        if world.is_main:
            unaugmented = ClipDataset(spec.split("train"), spec.labels, preprocess, cache_dir)
            preprocess = _measure_normalisation(config.data, preprocess, unaugmented)
        preprocess = world.broadcast(preprocess)
    train_set = ClipDataset(
        spec.split("train"), spec.labels, preprocess, cache_dir, augment, tc.seed
    )
    val_set = ClipDataset(spec.split("val"), spec.labels, preprocess, cache_dir)

    torch.manual_seed(tc.seed)
    if resumed is None:
        model, meta = _new_model(config, spec, preprocess)
    else:
        meta = meta_from_checkpoint(resumed)
        model = get_model(meta.model_name, **meta.model_config)
        model.load_state_dict(resumed["model"]["state_dict"])
    # `trained` is what steps (DDP under torchrun); `model` the module inside it, which
    # checkpoints save and validation runs.
    trained = wrap(model.to(device), world)
    model = getattr(trained, "module", trained)
    optimizer = torch.optim.AdamW(trained.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    precision = Precision.for_device(device, tc.amp)
    criterion = nn.CrossEntropyLoss(label_smoothing=tc.label_smoothing, reduction="none")
    steps_per_epoch = math.ceil(len(train_set) / tc.batch_size)
    total_steps = tc.epochs * steps_per_epoch
    warmup_steps = max(0, min(round(tc.warmup_epochs * steps_per_epoch), total_steps - 1))

    progress = Progress()
    if resumed is not None:
        state = resumed["train"]
        optimizer.load_state_dict(state["optimizer"])
        if precision.scaler is not None and state.get("scaler"):
            precision.scaler.load_state_dict(state["scaler"])
        progress = Progress.from_dict(state["progress"])
        if not world.is_main:
            # The saved epoch totals are every rank's: rank 0 carries them on, alone.
            saved = progress.current
            progress.current = EpochState(batches=saved.batches, seconds=saved.seconds)
        rng = state.get("rank_rng") or [{"cpu": state["torch_rng"], "cuda": state.get("cuda_rng")}]
        world.restore_rng(rng, tc.seed, progress.step)
        world.log(
            f"resuming {out} at epoch {progress.epochs_done(steps_per_epoch):g}, step "
            f"{progress.step} on {world.size} process(es)"
        )
    else:
        if world.is_main:
            out.mkdir(parents=True, exist_ok=True)
        world.restore_rng(None, tc.seed)
        world.log(
            f"training {meta.model_name} ({sum(p.numel() for p in model.parameters()):,} "
            f"parameters) on {len(train_set)} clips, {len(spec.labels)} classes, views "
            f"{list(spec.view_names)}; mean {tuple(round(m, 4) for m in preprocess.mean)} std "
            f"{tuple(round(s, 4) for s in preprocess.std)}; flip "
            f"{'on' if augment.flips else 'off'}; device {device}"
            + (f", {world.size} processes" if world.distributed else "")
        )
    if world.is_main:
        (out / "config.json").write_text(
            json.dumps({"manifest": str(manifest), **config.to_dict()}, indent=2) + "\n"
        )

    def save(names: Sequence[str], metrics: dict[str, float]) -> None:
        """Every rank hands in its RNG state; rank 0 writes the checkpoints."""
        rng = world.rng_states()
        if not world.is_main:
            return
        meta.epoch = progress.epochs_done(steps_per_epoch)
        meta.step = progress.step
        meta.metrics = metrics
        train_state = {
            "config": config.to_dict(),
            "manifest": str(manifest),
            "progress": progress.to_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": precision.scaler.state_dict() if precision.scaler else None,
            "torch_rng": rng[0]["cpu"],
            "cuda_rng": rng[0]["cuda"],
            "world_size": world.size,
            "rank_rng": rng,
        }
        for name in names:
            save_checkpoint(out / name, model, meta, train_state)

    deadline = math.inf if args.time_limit is None else time.monotonic() + args.time_limit * 60

    def should_stop() -> bool:
        # Decided together: a rank that stopped alone would leave the others waiting.
        return args.time_limit is not None and world.any(time.monotonic() >= deadline)

    val_order = shard(len(val_set), world)
    val_loader = make_loader(val_set, local_batch, tc.workers, val_order) if val_order else None
    stopped = False
    while progress.epoch < tc.epochs and not stopped:
        # The epoch's order depends on (seed, epoch) only; a resumed epoch skips what it did.
        sampler = GlobalBatchSampler(
            len(train_set), world, tc.batch_size, tc.seed, progress.current.batches
        )
        sampler.set_epoch(progress.epoch)
        train_set.set_epoch(progress.epoch)
        model.drop_views_in_training = progress.epoch >= tc.view_dropout_start_epoch
        loader = make_loader(
            train_set,
            sampler.local_batch,
            tc.workers,
            list(sampler),
            pin_memory=device.type == "cuda",
        )
        progress.step, stopped = train_one_epoch(
            trained,
            loader,
            optimizer,
            criterion,
            device,
            progress.current,
            step=progress.step,
            lr_fn=lambda step: lr_at(step, total_steps, warmup_steps, tc),
            config=tc,
            precision=precision,
            sampler=sampler,
            should_stop=should_stop,
            desc=f"epoch {progress.epoch + 1}/{tc.epochs}",
            progress=world.is_main and not args.no_progress,
        )
        current = progress.current = progress.current.reduced(world)
        row = {
            "epoch": progress.epochs_done(steps_per_epoch),
            "step": progress.step,
            "train_loss": current.loss,
            "train_acc": current.acc,
            "clips_per_s": current.clips / max(current.seconds, 1e-9),
        }
        if len(val_set):
            row.update(validate(model, val_loader, device, world))
        progress.history.append(row)
        if current.batches >= steps_per_epoch:
            progress.epoch, progress.current = progress.epoch + 1, EpochState()
        best = progress.best
        improved = not len(val_set) or (row["val_acc"], -row["val_loss"]) > (
            best["val_acc"],
            -best["val_loss"],
        )
        metrics = {k: v for k, v in row.items() if k != "epoch"}
        if improved:
            progress.best = {
                "val_acc": row.get("val_acc", math.nan),
                "val_loss": row.get("val_loss", math.nan),
                "epoch": row["epoch"],
            }
        save(["best.pt", "last.pt"] if improved else ["last.pt"], metrics)
        world.log(_epoch_line(row, tc.epochs, improved))
    summary: dict[str, Any] = {
        "out": str(out),
        "stopped_early": stopped,
        "best": progress.best,
        "step": progress.step,
        "world_size": world.size,
    }
    if not world.is_main:
        return summary
    (out / "history.json").write_text(json.dumps(progress.history, indent=2) + "\n")
    plot_curves(progress.history, out / "curves.png")
    if stopped:
        print(
            f"time limit reached: stopped at step {progress.step}; "
            f"continue with: mplstm train --out {out} --resume"
        )
    if args.eval_split != "none" and spec.split(args.eval_split):
        report, paths = evaluate_checkpoint(
            out / "best.pt",
            manifest,
            args.eval_split,
            out / f"eval-{args.eval_split}",
            batch_size=tc.batch_size,
            workers=tc.workers,
            device=device,
            cache_dir=cache_dir,
            progress=not args.no_progress,
        )
        summary["eval"] = {
            "accuracy": report.accuracy,
            "top5": report.top5,
            "report": str(paths["markdown"]),
        }
        print(
            f"best.pt on {args.eval_split}: accuracy {report.accuracy:.1%}, top-{report.top_k} "
            f"{report.top5:.1%} ({report.clips} clips); report {paths['markdown']}"
        )
    return summary


def _epoch_line(row: dict[str, float], epochs: int, improved: bool) -> str:
    parts = [
        f"epoch {row['epoch']:g}/{epochs}",
        f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.3f}",
        f"{row['clips_per_s']:.1f} clips/s",
    ]
    if "val_acc" in row:
        parts.append(f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.3f}")
    return " | ".join(parts) + (" *best" if improved else "")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
