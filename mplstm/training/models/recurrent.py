"""Families built on per-frame CNN features and a recurrent layer (DESIGN.md §3).

- `mplstm`: front-end → MP-LSTM (the views fused inside the cell) → pooling → classifier.
- `early_fusion`: view features concatenated per frame → LSTM → pooling → classifier.
- `late_fusion`: one LSTM per view (shared weights) → per-view logits averaged over
  present views.
- `single_view`: LRCN (Donahue et al., CVPR 2015) on one view: per-frame predictions
  of an LSTM averaged over time.

The plain LSTMs are `MPLSTM` layers with one view, which is exactly an LSTM (tested
against torch.nn.LSTM): one recurrent implementation, one export path, and lengths
handled the same way in every family.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from mplstm.training.cell import MPLSTM, RecurrentActivation
from mplstm.training.models.base import ModelConfig, MultiViewModel, time_mask
from mplstm.training.models.frontend import FrameCNN
from mplstm.training.models.head import make_classifier
from mplstm.training.models.pooling import Pooling, TemporalPool, masked_mean
from mplstm.training.models.registry import register_model


@dataclass
class RecurrentConfig(ModelConfig):
    hidden_size: int = 128  # U
    num_layers: int = 1
    bidirectional: bool = True  # the authors' model is bidirectional
    pooling: Pooling = "attention"  # the authors' temporal attention, "mean", or "last"


class FeatureSequenceModel(MultiViewModel):
    """A family that reads per-frame feature vectors: the front-end, or features mode."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.frontend: FrameCNN | None = None
        if config.feature_dim is None:
            causal = bool(getattr(config, "causal", False))
            self.frontend = FrameCNN(config.in_channels, config.widths, causal=causal)
            self.feature_dim = self.frontend.out_dim
        else:
            self.feature_dim = config.feature_dim
        self.drop = nn.Dropout(config.dropout)

    def features(self, x: Tensor) -> Tensor:
        """[B, V, T, C, H, W] pixels (or [B, V, T, D] features) → [B, V, T, D]."""
        return x if self.frontend is None else self.frontend(x)


def _classifier(config: ModelConfig, in_dim: int) -> nn.Module:
    """The family's head: linear, or an embedding and cosine classifier (`embedding_size`)."""
    return make_classifier(
        in_dim, config.num_classes, config.embedding_size, config.embedding_scale
    )


def _lstm(config: RecurrentConfig | SingleViewConfig, input_size: int) -> MPLSTM:
    """A plain LSTM: an MP-LSTM with one view."""
    return MPLSTM(
        input_size,
        config.hidden_size,
        num_views=1,
        num_layers=config.num_layers,
        bidirectional=config.bidirectional,
    )


@dataclass
class MPLSTMConfig(RecurrentConfig):
    recurrent_activation: RecurrentActivation = "sigmoid"  # "hard_sigmoid": the released code
    candidate_uses_forget_kernel: bool = False  # True: the released code's U_f in g
    peepholes: bool = False  # the paper figure's C_{t-1} into the gates
    layer_dropout: float = 0.0  # between stacked MP-LSTM layers
    # Live models (DESIGN.md §3): a prediction after every step. The front-end reads only
    # past frames and the MP-LSTM runs forward only; every pooling is causal over a prefix.
    causal: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.causal and self.bidirectional:
            raise ValueError("a causal (live) model runs forward only: set bidirectional = false")


@register_model("mplstm")
class MPLSTMModel(FeatureSequenceModel):
    """Shared per-view front-end → MP-LSTM → temporal attention or mean → classifier."""

    config_class = MPLSTMConfig

    def __init__(self, config: MPLSTMConfig) -> None:
        super().__init__(config)
        self.rnn = MPLSTM(
            self.feature_dim,
            config.hidden_size,
            config.num_views,
            num_layers=config.num_layers,
            bidirectional=config.bidirectional,
            dropout=config.layer_dropout,
            recurrent_activation=config.recurrent_activation,
            candidate_uses_forget_kernel=config.candidate_uses_forget_kernel,
            peepholes=config.peepholes,
        )
        out_dim = config.hidden_size * (2 if config.bidirectional else 1)
        self.pool = TemporalPool(config.pooling, out_dim)
        self.classifier = _classifier(config, out_dim)

    def represent(self, x: Tensor, view_mask: Tensor, lengths: Tensor | None) -> Tensor:
        feats = self.features(x).transpose(1, 2)  # [B, T, V, D]
        out, _ = self.rnn(feats, view_mask, lengths)
        return self.pool(out, time_mask(lengths, out.shape[1], out.device))

    def classify(self, x: Tensor, view_mask: Tensor, lengths: Tensor | None) -> Tensor:
        return self.classifier(self.drop(self.represent(x, view_mask, lengths)))

    def step_state_shapes(self, height: int, width: int) -> dict[str, tuple[int, ...]]:
        """Live models: the state `step` carries per sequence for H x W input, by name
        (the batch axis left out)."""
        cfg = self.config
        shapes = {"h": (cfg.num_layers, cfg.hidden_size), "c": (cfg.num_layers, cfg.hidden_size)}
        if self.frontend is not None:
            frames = FrameCNN.CONTEXT_FRAMES
            shapes["context"] = (cfg.num_views, frames, cfg.in_channels, height, width)
        if self.pool.state_size:
            shapes["pool"] = (self.pool.state_size,)
        return shapes

    def step(
        self, x: Tensor, view_mask: Tensor, state: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Live models: one chunk and the state so far → (logits after its last step, new state).

        x: normalised frames [B, V, t, C, H, W] (features mode: [B, V, t, D]); view_mask
        [B, V]; state (`step_state_shapes`, batch first): h and c [B, layers, U], context
        [B, V, 2, C, H, W] (the last input frames), pool [B, S] (the pooling's
        accumulator). All zeros start a sequence; chunks of any length give, after each,
        what `forward` gives on every frame so far.
        """
        if not self.config.causal:
            raise ValueError("only a causal (live) model runs step by step: set causal = true")
        new: dict[str, Tensor] = {}
        feats = x
        if self.frontend is not None:
            feats, new["context"] = self.frontend.step(x, state["context"])
        initial = (state["h"].transpose(0, 1), state["c"].transpose(0, 1))
        out, (h, c) = self.rnn(feats.transpose(1, 2), view_mask, state=initial)
        new["h"], new["c"] = h.transpose(0, 1), c.transpose(0, 1)
        pooled, pool = self.pool.step(out, state.get("pool"))
        if pool is not None:
            new["pool"] = pool
        return self.classifier(pooled), new


@dataclass
class EarlyFusionConfig(RecurrentConfig):
    pass


@register_model("early_fusion")
class EarlyFusionModel(FeatureSequenceModel):
    """View features concatenated per frame (missing views as zeros) → LSTM → pool → classifier."""

    config_class = EarlyFusionConfig

    def __init__(self, config: EarlyFusionConfig) -> None:
        super().__init__(config)
        self.rnn = _lstm(config, config.num_views * self.feature_dim)
        out_dim = config.hidden_size * (2 if config.bidirectional else 1)
        self.pool = TemporalPool(config.pooling, out_dim)
        self.classifier = _classifier(config, out_dim)

    def represent(self, x: Tensor, view_mask: Tensor, lengths: Tensor | None) -> Tensor:
        feats = self.features(x) * view_mask[:, :, None, None]  # [B, V, T, D]
        joint = feats.transpose(1, 2).flatten(2).unsqueeze(2)  # [B, T, 1, V*D]
        out, _ = self.rnn(joint, None, lengths)
        return self.pool(out, time_mask(lengths, out.shape[1], out.device))

    def classify(self, x: Tensor, view_mask: Tensor, lengths: Tensor | None) -> Tensor:
        return self.classifier(self.drop(self.represent(x, view_mask, lengths)))


@dataclass
class LateFusionConfig(RecurrentConfig):
    pass


@register_model("late_fusion")
class LateFusionModel(FeatureSequenceModel):
    """Per-view LSTM (weights shared by views) → per-view logits → mean over present views."""

    config_class = LateFusionConfig

    def __init__(self, config: LateFusionConfig) -> None:
        super().__init__(config)
        self.rnn = _lstm(config, self.feature_dim)
        out_dim = config.hidden_size * (2 if config.bidirectional else 1)
        self.pool = TemporalPool(config.pooling, out_dim)
        self.classifier = _classifier(config, out_dim)

    def _per_view(self, x: Tensor, lengths: Tensor | None) -> Tensor:
        """Each view's pooled features [B, V, D], from one LSTM shared by the views."""
        feats = self.features(x)  # [B, V, T, D]
        b, v, t, d = feats.shape
        per_view = feats.reshape(b * v, t, 1, d)
        view_lengths = None if lengths is None else lengths.repeat_interleave(v)
        out, _ = self.rnn(per_view, None, view_lengths)
        return self.pool(out, time_mask(view_lengths, t, out.device)).reshape(b, v, -1)

    def represent(self, x: Tensor, view_mask: Tensor, lengths: Tensor | None) -> Tensor:
        # The views' features averaged over present views: late fusion of features.
        weights = view_mask.to(x.dtype).unsqueeze(-1)
        return (self._per_view(x, lengths) * weights).sum(dim=1) / weights.sum(dim=1)

    def classify(self, x: Tensor, view_mask: Tensor, lengths: Tensor | None) -> Tensor:
        if self.config.embedding_size:
            return self.classifier(self.drop(self.represent(x, view_mask, lengths)))
        logits = self.classifier(self.drop(self._per_view(x, lengths)))
        weights = view_mask.to(logits.dtype).unsqueeze(-1)
        return (logits * weights).sum(dim=1) / weights.sum(dim=1)


@dataclass
class SingleViewConfig(ModelConfig):
    hidden_size: int = 128
    num_layers: int = 1
    bidirectional: bool = False  # LRCN's LSTM reads forward only
    view: int = 0  # the one view read; the others (and the view mask) are ignored

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.view < self.num_views:
            raise ValueError(f"view must lie in [0, num_views={self.num_views}), got {self.view}")


@register_model("single_view")
class SingleViewModel(FeatureSequenceModel):
    """LRCN on one view: CNN per frame → LSTM → per-frame logits averaged over valid steps."""

    config_class = SingleViewConfig

    def __init__(self, config: SingleViewConfig) -> None:
        super().__init__(config)
        self.rnn = _lstm(config, self.feature_dim)
        out_dim = config.hidden_size * (2 if config.bidirectional else 1)
        self.classifier = _classifier(config, out_dim)

    def _outputs(self, x: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The LSTM's outputs [B, T, dirs*U] on the one view it reads, and the time mask."""
        view = self.config.view
        feats = self.features(x[:, view : view + 1])  # only the view it reads
        out, _ = self.rnn(feats.transpose(1, 2), None, lengths)
        return out, time_mask(lengths, out.shape[1], out.device)

    def represent(self, x: Tensor, view_mask: Tensor, lengths: Tensor | None) -> Tensor:
        return masked_mean(*self._outputs(x, lengths))

    def classify(self, x: Tensor, view_mask: Tensor, lengths: Tensor | None) -> Tensor:
        if self.config.embedding_size:  # one embedding per clip: the outputs averaged first
            return self.classifier(self.drop(self.represent(x, view_mask, lengths)))
        out, mask = self._outputs(x, lengths)
        return masked_mean(self.classifier(self.drop(out)), mask)  # LRCN: per-frame logits
