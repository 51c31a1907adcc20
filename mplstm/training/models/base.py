"""What every model family shares: the config fields, input handling, view dropout.

Input contract (DESIGN.md §3): x [B, V, T, C, H, W], uint8 pixels or float pixels
already normalised by `core` preprocessing; or, in features mode, x [B, V, T, D].
view_mask [B, V] (True = view present) or None for all present; lengths [B] or
None for all T steps. Output: logits [B, num_classes].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mplstm.training.cell import check_view_mask


@dataclass
class ModelConfig:
    """Fields shared by every family; each family's config adds its own."""

    num_classes: int = 10  # logits out
    num_views: int = 3  # V: views in, in the order of the package's view names
    in_channels: int = 1  # C: 1 for grayscale mouth crops (lip-reading convention), 3 for RGB
    # uint8 pixels are scaled to [0, 1] and then normalised with these, inside the model,
    # so that an exported model takes raw uint8 frames. Defaults: mpc001's lip-reading values.
    mean: tuple[float, ...] = (0.421,)
    std: tuple[float, ...] = (0.165,)
    # Training only: each present view is dropped with this probability (never all views
    # of a sample), so that the model keeps working when a camera fails.
    view_dropout: float = 0.0
    # Features mode: set to D to read precomputed per-frame features [B, V, T, D] (the
    # authors' setup) in place of pixels; the model then has no CNN front-end.
    feature_dim: int | None = None
    # Front-end channels: 3-D conv stem, then two stride-2 residual stages. Small enough
    # for 64x64 inputs on 2 CPU cores.
    widths: tuple[int, int, int] = (16, 32, 64)
    dropout: float = 0.2  # before the classifier
    # Open-set identity: > 0 gives an L2-normalised embedding of this size and a cosine
    # classifier over it (logits = embedding_scale * cos), trained with a margin loss
    # (train.loss); the package then has an `embedding` output. 0: a linear classifier.
    embedding_size: int = 0
    embedding_scale: float = 30.0  # the s of CosFace/ArcFace: cosines in [-1, 1] become logits

    def __post_init__(self) -> None:
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        self.widths = tuple(int(w) for w in self.widths)  # type: ignore[assignment]
        if self.num_classes < 2 or self.num_views < 1 or self.in_channels < 1:
            raise ValueError("num_classes must be >= 2, num_views and in_channels >= 1")
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ValueError(
                f"mean and std need one value per input channel ({self.in_channels}), "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")
        if not 0.0 <= self.view_dropout < 1.0:
            raise ValueError(f"view_dropout must lie in [0, 1), got {self.view_dropout}")
        if self.feature_dim is not None and self.feature_dim < 1:
            raise ValueError(f"feature_dim must be >= 1 or None, got {self.feature_dim}")
        if len(self.widths) != 3 or min(self.widths) < 1:
            raise ValueError(f"widths must be three positive channel counts, got {self.widths}")
        if self.embedding_size < 0 or self.embedding_scale <= 0:
            raise ValueError(
                f"embedding_size must be >= 0 and embedding_scale > 0, got "
                f"{self.embedding_size} and {self.embedding_scale}"
            )


def drop_views(view_mask: Tensor, p: float) -> Tensor:
    """Drop each present view with probability p, keeping at least one view of each sample.

    Where every present view of a sample would go, one of them, chosen at random, stays.
    A sample with no present view keeps none (the layer refuses it).
    """
    drop = torch.rand(view_mask.shape, device=view_mask.device) < p
    keep = view_mask & ~drop
    score = torch.rand(view_mask.shape, device=view_mask.device).masked_fill(~view_mask, -1.0)
    one = nn.functional.one_hot(score.argmax(dim=1), view_mask.shape[1]).bool() & view_mask
    return torch.where(keep.any(dim=1, keepdim=True), keep, one)


def time_mask(lengths: Tensor | None, steps: int, device: torch.device) -> Tensor | None:
    """[B, T] bool, True at steps inside each sequence; None when lengths is None."""
    if lengths is None:
        return None
    return torch.arange(steps, device=device)[None, :] < lengths.to(device)[:, None]


class MultiViewModel(nn.Module):
    """Base of every family: normalises input, defaults and drops views, then `classify`."""

    name: ClassVar[str]
    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    reads_features: ClassVar[bool] = True  # False: the family needs pixels
    # False where the time loop is Python over T (ConvLSTM cells): torch.export then fixes
    # T, so such a family exports for its training T only (the service always sends that T).
    dynamic_time: ClassVar[bool] = True
    # False where the family has no clip-level feature vector for an embedding head.
    embeds: ClassVar[bool] = True

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.feature_dim is not None and not self.reads_features:
            raise ValueError(
                f"{type(self).__name__} reads pixels: features mode (feature_dim) is not supported"
            )
        if config.embedding_size and not self.embeds:
            raise ValueError(
                f"{type(self).__name__} has no embedding head: embedding_size must be 0"
            )
        self.config = config
        # The trainer turns this off for the first `train.view_dropout_start_epoch` epochs.
        self.drop_views_in_training = True
        std = torch.tensor(config.std)
        # uint8 → (x / 255 - mean) / std as one multiply-add.
        scale = (1.0 / (255.0 * std)).view(-1, 1, 1)
        shift = (-torch.tensor(config.mean) / std).view(-1, 1, 1)
        self.register_buffer("pixel_scale", scale, persistent=False)
        self.register_buffer("pixel_shift", shift, persistent=False)

    @property
    def features_mode(self) -> bool:
        return self.config.feature_dim is not None

    def forward(
        self, x: Tensor, view_mask: Tensor | None = None, lengths: Tensor | None = None
    ) -> Tensor:
        """x [B, V, T, C, H, W] (or [B, V, T, D] in features mode) → logits [B, classes]."""
        return self.classify(*self._prepared(x, view_mask), lengths)

    def embed(
        self, x: Tensor, view_mask: Tensor | None = None, lengths: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """(logits [B, classes], L2-normalised embedding [B, E]) of the same input as `forward`.

        With an embedding head (`embedding_size` > 0), the head's embedding, one pass. A
        plain classifier's embedding is its normalised penultimate features (what the
        closed-set model offers open-set evaluation), at the cost of a second pass.
        """
        x, view_mask = self._prepared(x, view_mask)
        features = self.represent(x, view_mask, lengths)
        head = getattr(self, "classifier", None)
        if self.config.embedding_size:
            embedding = head.embed(self.drop(features))
            return head.logits(embedding), embedding
        return self.classify(x, view_mask, lengths), F.normalize(features, dim=-1)

    def _prepared(self, x: Tensor, view_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Checked, normalised float input and the bool view mask (views dropped in training)."""
        cfg = self.config
        if self.features_mode:
            expected = f"[B, V={cfg.num_views}, T, D={cfg.feature_dim}]"
            ok = x.dim() == 4 and x.shape[3] == cfg.feature_dim
        else:
            expected = f"[B, V={cfg.num_views}, T, C={cfg.in_channels}, H, W]"
            ok = x.dim() == 6 and x.shape[3] == cfg.in_channels
        if not ok or x.shape[1] != cfg.num_views:
            raise ValueError(f"{self.name} expects input {expected}, got {list(x.shape)}")
        if view_mask is None:
            view_mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        view_mask = view_mask.to(device=x.device, dtype=torch.bool)
        if self.training and self.drop_views_in_training and cfg.view_dropout > 0:
            view_mask = drop_views(view_mask, cfg.view_dropout)
        check_view_mask(view_mask)
        return self.normalise(x), view_mask

    def normalise(self, x: Tensor) -> Tensor:
        """uint8 pixels → (x / 255 - mean) / std as floats; float input passes as it is."""
        # dtype is static under export: this branch is fixed at trace time.
        uint8 = x.dtype == torch.uint8
        return x.float() * self.pixel_scale + self.pixel_shift if uint8 else x.float()

    def classify(self, x: Tensor, view_mask: Tensor, lengths: Tensor | None) -> Tensor:
        """Normalised float input, bool view mask [B, V] → logits [B, classes]."""
        raise NotImplementedError

    def represent(self, x: Tensor, view_mask: Tensor, lengths: Tensor | None) -> Tensor:
        """Normalised float input, bool view mask [B, V] → the features [B, D] the head reads."""
        raise NotImplementedError(f"{self.name} has no clip-level features to embed")
