"""The training config: its schema, TOML loading, ``--set`` overrides and `mplstm train`'s flags.

Torch-free on purpose: `mplstm --help` builds the train parser from here without loading
PyTorch, and whatever only reads or compares configs (resume checks, benchmarks, tests)
need not pay for torch either. What turns a config into tensors lives in train.py.

Precedence, lowest to highest: the dataclass defaults, the TOML file, ``--set
section.key=value`` in order given (a later one wins), then the shortcut flags
(``--epochs``, ``--lr``, ...), which are only ``--set`` items spelled shorter.
Unknown sections and keys are refused by name rather than ignored: a misspelt key that
silently kept its default would cost a whole training run to notice.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLIP_CHOICES: tuple[str, ...] = ("auto", "on", "off")


class ConfigError(ValueError):
    """A training config (file, --set, flags) that cannot be used; the message says which key."""


@dataclass(frozen=True)
class DataConfig:
    """[data]: how clips become model input (stored in checkpoints as the preprocessing)."""

    frames: int = 20  # T (with fps: the nominal T, e.g. a sliding window's length)
    # Live models: sample at this fixed rate (frames per second), as many steps as a clip
    # lasts, in place of T spread over it (DESIGN.md §4); 0 spreads T.
    fps: float = 0.0
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
    # Camera checks on every clip (mplstm.core.camera_checks): a view that fails one (black,
    # blank, frozen, no signal, duplicate) is masked as absent, as view dropout does.
    camera_checks: bool = True


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
    # "cross_entropy", or a margin loss on the cosine classifier of a model with an
    # embedding (model.embedding_size > 0): "cosface" (cosine - margin) or "arcface"
    # (angle + margin); open-set identity (mplstm.training.losses, docs/results.md).
    loss: str = "cross_entropy"
    margin: float = 0.2
    # With a margin loss: weight of plain cross-entropy on the unmargined logits beside it.
    softmax_weight: float = 0.0
    grad_clip: float = 5.0  # max gradient norm; 0 turns clipping off
    amp: bool = True  # mixed precision on CUDA (bf16 where supported); ignored on CPU
    seed: int = 0
    workers: int = 0  # DataLoader processes; 0 is fastest on 2 cores once clips are cached
    # Epochs trained on every view before the model's view_dropout starts: dropped views
    # from the first step kept a 5-view model on the frontal cue alone (docs/results.md).
    view_dropout_start_epoch: int = 0
    # A checkpoint whose per-frame front-end (frontend.*) a new run starts from, as the
    # paper starts from a pretrained face CNN: e.g. a single-view model of the same people,
    # which learns the per-view traits several times faster (docs/results.md). "": none.
    init_from: str = ""


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation of training clips; [augment] in the training config."""

    # Pad each view by up to this many pixels (edge values) and crop back to H x W at a
    # random offset per view: cameras are never framed exactly alike.
    crop_pad: int = 4
    # "auto": flip for lip reading when the data set gives view angles and every view has
    # its mirror; "on" flips whatever the task (still needs the angles).
    flip: str = "auto"
    # Replace a random run of up to this many frames (same run in every view, which are
    # synchronized) by each view's mean frame, as lip-reading training does; 0 turns it off.
    time_mask: int = 0

    def __post_init__(self) -> None:
        if self.crop_pad < 0 or self.time_mask < 0:
            raise ValueError("augment.crop_pad and augment.time_mask must be >= 0")
        if self.flip not in FLIP_CHOICES:
            raise ValueError(f"augment.flip must be one of {FLIP_CHOICES}, got {self.flip!r}")


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


def check_train_config(config: TrainConfig) -> None:
    """Refuse loop settings no run can start with (checked once the run's config is known,
    so that a resumed run is judged by its saved config)."""
    if config.epochs < 1 or config.batch_size < 1:
        raise ConfigError("train.epochs and train.batch_size must be >= 1")
    if config.margin < 0 or config.softmax_weight < 0:
        raise ConfigError("train.margin and train.softmax_weight must be >= 0")
    if config.view_dropout_start_epoch < 0:
        raise ConfigError(
            f"train.view_dropout_start_epoch must be >= 0, got {config.view_dropout_start_epoch}"
        )


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


@dataclass(frozen=True)
class ShortcutFlag:
    """A flag that stands for one config key; declared once, for the parser and the mapping."""

    flag: str
    key: str
    value_type: type
    help: str

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    def override(self, value: Any) -> str:
        """The --set item this flag's value means (strings quoted, as TOML wants them)."""
        return f"{self.key}={json.dumps(value) if isinstance(value, str) else repr(value)}"


SHORTCUT_FLAGS: tuple[ShortcutFlag, ...] = (
    ShortcutFlag(
        "--model", "model.name", str, "model family (model.name), e.g. mplstm, late_fusion"
    ),
    ShortcutFlag("--epochs", "train.epochs", int, "train.epochs"),
    ShortcutFlag("--batch-size", "train.batch_size", int, "train.batch_size"),
    ShortcutFlag("--lr", "train.lr", float, "train.lr (peak learning rate)"),
    ShortcutFlag("--seed", "train.seed", int, "train.seed"),
    ShortcutFlag("--workers", "train.workers", int, "train.workers: DataLoader processes"),
)


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """--set items, then the shortcut flags (which win)."""
    given = ((f, getattr(args, f.dest)) for f in SHORTCUT_FLAGS)
    return [*args.overrides, *(f.override(value) for f, value in given if value is not None)]


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The training options, as `mplstm train` and `train.get_args_parser` take them."""
    parser.add_argument(
        "--data", type=Path, metavar="MANIFEST", help="data set manifest (.jsonl/.csv)"
    )
    parser.add_argument("--config", type=Path, metavar="TOML", help="training config file")
    parser.add_argument(
        "--out", type=Path, required=True, help="run folder for checkpoints and plots"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value (TOML syntax), e.g. --set model.hidden_size=64; repeatable",
    )
    for shortcut in SHORTCUT_FLAGS:
        parser.add_argument(shortcut.flag, type=shortcut.value_type, help=shortcut.help)
    _add_run_arguments(parser)
    return parser


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """How a run proceeds (resume, time, device, evaluation): none of it is in RunConfig,
    so a resumed run may change any of them."""
    parser.add_argument(
        "--resume",
        nargs="?",
        const="last",
        metavar="CHECKPOINT",
        help="continue a stopped run (default OUT/last.pt) with its saved config; 'auto': "
        "continue OUT/last.pt when it exists (the command's config must match it), else start "
        "a new run, for jobs that rerun the same command after a failure",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        metavar="MINUTES",
        help="stop cleanly once this much training time has passed (after the current "
        "batch), saving a resumable checkpoint; 0 stops after one step",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N"
    )
    parser.add_argument(
        "--eval-split",
        default="test",
        help="split to evaluate best.pt on after training; 'none' to skip (default test)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--dist-timeout",
        type=float,
        metavar="SECONDS",
        help="under torchrun: how long a rank waits on the others (a collective, the "
        "start-up) before failing, e.g. when a peer died (default 600)",
    )
