"""Training, torchvision-reference style: `get_args_parser`, `train_one_epoch`, `validate`, `main`.

`main` is three steps, each usable alone by a launcher or a test: `set_up_run` (config,
data, model, optimizer; new or resumed), `fit` (the epochs) and `finish_run` (history,
curves, evaluation of best.pt). What a run is configured with (TOML, ``--set``, flags)
is config.py's, which stays torch-free; this module turns it into tensors. No
module-level state: everything a run needs is passed in, so sweeps and launchers can call
`main(args)`.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mplstm.core.preprocess import PreprocessConfig
from mplstm.training.augment import Augment
from mplstm.training.checkpoint import (
    CheckpointMeta,
    load_checkpoint,
    meta_from_checkpoint,
    model_config_dict,
    save_checkpoint,
)
from mplstm.training.config import (
    ConfigError,
    DataConfig,
    RunConfig,
    TrainConfig,
    add_train_arguments,
    check_train_config,
    flag_overrides,
    load_config,
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
from mplstm.training.losses import make_criterion
from mplstm.training.models import get_model
from mplstm.training.plots import plot_curves


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The training options, as `mplstm train` takes them."""
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
            logits = model(batch.frames, batch.view_mask, batch.lengths)
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
            camera_checks=config.camera_checks,
            # Every view of a training clip is in the manifest; only a camera that fails
            # its check is ever absent, and it is masked rather than stopping the run.
            allow_missing_views=config.camera_checks,
            fps=config.fps or None,
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


@dataclass
class Run:
    """What the steps of one run share: built by `set_up_run`, advanced by `fit`, closed
    by `finish_run`."""

    out: Path
    world: World
    config: RunConfig
    manifest: Path
    spec: DataSpec
    cache_dir: Path | None
    train_set: ClipDataset
    val_set: ClipDataset
    local_batch: int  # this rank's share of train.batch_size
    # `trained` is what steps (DDP under torchrun); `model` the module inside it, which
    # checkpoints save and validation runs.
    trained: nn.Module
    model: nn.Module
    meta: CheckpointMeta
    optimizer: torch.optim.Optimizer
    precision: Precision
    criterion: nn.Module
    steps_per_epoch: int
    progress: Progress = field(default_factory=Progress)

    @property
    def total_steps(self) -> int:
        return self.config.train.epochs * self.steps_per_epoch

    @property
    def warmup_steps(self) -> int:
        warmup = round(self.config.train.warmup_epochs * self.steps_per_epoch)
        return max(0, min(warmup, self.total_steps - 1))

    def lr(self, step: int) -> float:
        return lr_at(step, self.total_steps, self.warmup_steps, self.config.train)


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
    run = set_up_run(args, world)
    stopped = fit(run, args.time_limit, show_progress=not args.no_progress)
    return finish_run(run, stopped, args.eval_split, show_progress=not args.no_progress)


def set_up_run(args: argparse.Namespace, world: World) -> Run:
    """Config, data, model, optimizer and progress of a new run, or of a resumed one as it
    was saved; writes OUT/config.json."""
    config, manifest, resumed = _settings(args)
    tc = config.train
    check_train_config(tc)
    local_batch = local_batch_size(tc.batch_size, world)

    spec = read_data_spec(manifest)
    if not spec.split("train"):
        raise ConfigError(f"{manifest} has no clip in split 'train'")
    try:
        augment = Augment(config.augment, spec.view_yaws, spec.task)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    cache_dir = _cache_dir(config.data, manifest)
    preprocess = _run_preprocess(config.data, spec, cache_dir, resumed, world)
    train_set = ClipDataset(
        spec.split("train"), spec.labels, preprocess, cache_dir, augment, tc.seed
    )
    val_set = ClipDataset(spec.split("val"), spec.labels, preprocess, cache_dir)

    torch.manual_seed(tc.seed)
    model, meta = _new_model(config, spec, preprocess) if resumed is None else _saved_model(resumed)
    if resumed is None and tc.init_from:
        _init_frontend(model, Path(tc.init_from), world)
    trained = wrap(model.to(world.device), world)
    run = Run(
        out=args.out,
        world=world,
        config=config,
        manifest=manifest,
        spec=spec,
        cache_dir=cache_dir,
        train_set=train_set,
        val_set=val_set,
        local_batch=local_batch,
        trained=trained,
        model=getattr(trained, "module", trained),
        meta=meta,
        optimizer=torch.optim.AdamW(trained.parameters(), lr=tc.lr, weight_decay=tc.weight_decay),
        precision=Precision.for_device(world.device, tc.amp),
        criterion=_criterion(tc, model),
        steps_per_epoch=math.ceil(len(train_set) / tc.batch_size),
    )
    if resumed is None:
        _start(run, augment.flips)
    else:
        _restore(run, resumed["train"])
    if world.is_main:
        (run.out / "config.json").write_text(
            json.dumps({"manifest": str(manifest), **config.to_dict()}, indent=2) + "\n"
        )
    return run


def _criterion(config: TrainConfig, model: nn.Module) -> nn.Module:
    """The run's per-clip loss: cross-entropy, or a margin loss on the model's cosine head."""
    mc = model.config
    try:
        return make_criterion(
            config.loss,
            margin=config.margin,
            scale=mc.embedding_scale if getattr(mc, "embedding_size", 0) else None,
            label_smoothing=config.label_smoothing,
            softmax_weight=config.softmax_weight,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _run_preprocess(
    config: DataConfig,
    spec: DataSpec,
    cache_dir: Path | None,
    resumed: dict[str, Any] | None,
    world: World,
) -> PreprocessConfig:
    """A resumed run's saved preprocessing, or a new run's with "auto" mean/std measured."""
    if resumed is not None:
        return meta_from_checkpoint(resumed).preprocess
    preprocess = _preprocess(config, spec)
    # Rank 0 measures (and caches what it decodes); the others take its numbers.
    if world.is_main:
        unaugmented = ClipDataset(spec.split("train"), spec.labels, preprocess, cache_dir)
        preprocess = _measure_normalisation(config, preprocess, unaugmented)
    return world.broadcast(preprocess)


def _init_frontend(model: nn.Module, path: Path, world: World) -> None:
    """Start the model's front-end (frontend.*) from another checkpoint's, where shapes match."""
    try:
        state = load_checkpoint(path, "cpu")["model"]["state_dict"]
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"train.init_from: {exc}") from exc
    wanted = {k: v.shape for k, v in model.state_dict().items() if k.startswith("frontend.")}
    taken = {k: state[k] for k in wanted if k in state and state[k].shape == wanted[k]}
    if not wanted or len(taken) < len(wanted):
        raise ConfigError(
            f"train.init_from: {path} has no front-end of this model's shapes "
            f"({len(taken)} of {len(wanted)} tensors match): use the same model.widths"
        )
    model.load_state_dict(taken, strict=False)
    world.log(f"front-end from {path}: {len(taken)} tensors")


def _saved_model(resumed: dict[str, Any]) -> tuple[nn.Module, CheckpointMeta]:
    """The model of a checkpoint, rebuilt from the checkpoint alone."""
    meta = meta_from_checkpoint(resumed)
    model = get_model(meta.model_name, **meta.model_config)
    model.load_state_dict(resumed["model"]["state_dict"])
    return model, meta


def _start(run: Run, flips: bool) -> None:
    """A new run: its folder, every rank's RNG from the seed, and what it is training."""
    world, preprocess = run.world, run.meta.preprocess
    if world.is_main:
        run.out.mkdir(parents=True, exist_ok=True)
    world.restore_rng(None, run.config.train.seed)
    world.log(
        f"training {run.meta.model_name} ({sum(p.numel() for p in run.model.parameters()):,} "
        f"parameters) on {len(run.train_set)} clips, {len(run.spec.labels)} classes, views "
        f"{list(run.spec.view_names)}; mean {tuple(round(m, 4) for m in preprocess.mean)} std "
        f"{tuple(round(s, 4) for s in preprocess.std)}; flip "
        f"{'on' if flips else 'off'}; device {world.device}"
        + (f", {world.size} processes" if world.distributed else "")
    )


def _restore(run: Run, state: dict[str, Any]) -> None:
    """A resumed run: optimizer, grad scaler, progress and every rank's RNG as saved."""
    world = run.world
    run.optimizer.load_state_dict(state["optimizer"])
    if run.precision.scaler is not None and state.get("scaler"):
        run.precision.scaler.load_state_dict(state["scaler"])
    progress = run.progress = Progress.from_dict(state["progress"])
    if not world.is_main:
        # The saved epoch totals are every rank's: rank 0 carries them on, alone.
        saved = progress.current
        progress.current = EpochState(batches=saved.batches, seconds=saved.seconds)
    rng = state.get("rank_rng") or [{"cpu": state["torch_rng"], "cuda": state.get("cuda_rng")}]
    world.restore_rng(rng, run.config.train.seed, progress.step)
    world.log(
        f"resuming {run.out} at epoch {progress.epochs_done(run.steps_per_epoch):g}, step "
        f"{progress.step} on {world.size} process(es)"
    )


def save_checkpoints(run: Run, names: Sequence[str], metrics: dict[str, float]) -> None:
    """Every rank hands in its RNG state; rank 0 writes the checkpoints."""
    world, progress, meta = run.world, run.progress, run.meta
    rng = world.rng_states()
    if not world.is_main:
        return
    meta.epoch = progress.epochs_done(run.steps_per_epoch)
    meta.step = progress.step
    meta.metrics = metrics
    train_state = {
        "config": run.config.to_dict(),
        "manifest": str(run.manifest),
        "progress": progress.to_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.precision.scaler.state_dict() if run.precision.scaler else None,
        "torch_rng": rng[0]["cpu"],
        "cuda_rng": rng[0]["cuda"],
        "world_size": world.size,
        "rank_rng": rng,
    }
    for name in names:
        save_checkpoint(run.out / name, run.model, meta, train_state)


def fit(run: Run, time_limit: float | None = None, show_progress: bool = True) -> bool:
    """Train the remaining epochs, validating and saving after each; returns whether
    `time_limit` (minutes) stopped the run first, mid-epoch, with a resumable last.pt."""
    world, tc = run.world, run.config.train
    deadline = math.inf if time_limit is None else time.monotonic() + time_limit * 60

    def should_stop() -> bool:
        # Decided together: a rank that stopped alone would leave the others waiting.
        return time_limit is not None and world.any(time.monotonic() >= deadline)

    val_order = shard(len(run.val_set), world)
    val_loader = (
        make_loader(run.val_set, run.local_batch, tc.workers, val_order) if val_order else None
    )
    stopped = False
    while run.progress.epoch < tc.epochs and not stopped:
        stopped = _fit_epoch(run, should_stop, show_progress)
        _close_epoch(run, val_loader)
    return stopped


def _fit_epoch(run: Run, should_stop: Callable[[], bool], show_progress: bool) -> bool:
    """Train (the rest of) the epoch in progress; returns whether `should_stop` cut it short."""
    progress, tc, world = run.progress, run.config.train, run.world
    # The epoch's order depends on (seed, epoch) only; a resumed epoch skips what it did.
    sampler = GlobalBatchSampler(
        len(run.train_set), world, tc.batch_size, tc.seed, progress.current.batches
    )
    sampler.set_epoch(progress.epoch)
    run.train_set.set_epoch(progress.epoch)
    run.model.drop_views_in_training = progress.epoch >= tc.view_dropout_start_epoch
    loader = make_loader(
        run.train_set,
        sampler.local_batch,
        tc.workers,
        list(sampler),
        pin_memory=world.device.type == "cuda",
    )
    progress.step, stopped = train_one_epoch(
        run.trained,
        loader,
        run.optimizer,
        run.criterion,
        world.device,
        progress.current,
        step=progress.step,
        lr_fn=run.lr,
        config=tc,
        precision=run.precision,
        sampler=sampler,
        should_stop=should_stop,
        desc=f"epoch {progress.epoch + 1}/{tc.epochs}",
        progress=world.is_main and show_progress,
    )
    return stopped


def _close_epoch(run: Run, val_loader: torch.utils.data.DataLoader | None) -> None:
    """Sum the epoch's totals over the ranks, validate, keep the best, save and log."""
    progress, world = run.progress, run.world
    current = progress.current = progress.current.reduced(world)
    row = {
        "epoch": progress.epochs_done(run.steps_per_epoch),
        "step": progress.step,
        "train_loss": current.loss,
        "train_acc": current.acc,
        "clips_per_s": current.clips / max(current.seconds, 1e-9),
    }
    if len(run.val_set):
        row.update(validate(run.model, val_loader, world.device, world))
    progress.history.append(row)
    if current.batches >= run.steps_per_epoch:
        progress.epoch, progress.current = progress.epoch + 1, EpochState()
    best = progress.best
    improved = not len(run.val_set) or (row["val_acc"], -row["val_loss"]) > (
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
    save_checkpoints(run, ["best.pt", "last.pt"] if improved else ["last.pt"], metrics)
    world.log(_epoch_line(row, run.config.train.epochs, improved))


def finish_run(
    run: Run, stopped: bool, eval_split: str = "test", show_progress: bool = True
) -> dict[str, Any]:
    """Write history.json and curves.png, evaluate best.pt on `eval_split` ("none": skip);
    returns the run's summary (rank 0 alone writes and evaluates)."""
    progress = run.progress
    summary: dict[str, Any] = {
        "out": str(run.out),
        "stopped_early": stopped,
        "best": progress.best,
        "step": progress.step,
        "world_size": run.world.size,
    }
    if not run.world.is_main:
        return summary
    (run.out / "history.json").write_text(json.dumps(progress.history, indent=2) + "\n")
    plot_curves(progress.history, run.out / "curves.png")
    if stopped:
        print(
            f"time limit reached: stopped at step {progress.step}; "
            f"continue with: mplstm train --out {run.out} --resume"
        )
    if eval_split != "none" and run.spec.split(eval_split):
        summary["eval"] = _evaluate_best(run, eval_split, show_progress)
    return summary


def _evaluate_best(run: Run, split: str, show_progress: bool) -> dict[str, Any]:
    """Evaluate OUT/best.pt on `split` into OUT/eval-SPLIT; print and return the headline."""
    tc = run.config.train
    report, paths = evaluate_checkpoint(
        run.out / "best.pt",
        run.manifest,
        split,
        run.out / f"eval-{split}",
        batch_size=tc.batch_size,
        workers=tc.workers,
        device=run.world.device,
        cache_dir=run.cache_dir,
        progress=show_progress,
    )
    print(
        f"best.pt on {split}: accuracy {report.accuracy:.1%}, top-{report.top_k} "
        f"{report.top5:.1%} ({report.clips} clips); report {paths['markdown']}"
    )
    return {"accuracy": report.accuracy, "top5": report.top5, "report": str(paths["markdown"])}


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
