"""ConvLSTM families: the recurrence keeps 2-D maps (Shi et al., NeurIPS 2015).

- `convlstm`: deep ConvLSTM stack on the frames (Courtney & Sreenivas, ACPR 2019),
  the views stacked as channels (missing views as zeros).
- `cnn_convlstm`: the shared per-view CNN front-end kept 2-D → views stacked as
  channels → ConvLSTM → classifier (the Keras ConvLSTM2D pattern).

Both classify from the last valid hidden state (lengths freeze the state at each
sequence's end), global-average-pooled.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mplstm.training.models.base import ModelConfig, MultiViewModel, time_mask
from mplstm.training.models.frontend import FrameCNN
from mplstm.training.models.registry import register_model


class ConvLSTM(nn.Module):
    """One ConvLSTM layer: x [B, T, C, H, W] → (outputs [B, T, K, H, W], last valid h [B, K, H, W]).

    Like `MPLSTM`, the input convolution of all steps is one batched call before the
    recurrence; each step convolves only the hidden state. Gate order i, f, g, o.
    """

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.input_conv = nn.Conv2d(in_channels, 4 * hidden_channels, kernel_size, padding=pad)
        self.hidden_conv = nn.Conv2d(
            hidden_channels, 4 * hidden_channels, kernel_size, padding=pad, bias=False
        )
        self.hidden_channels = hidden_channels
        with torch.no_grad():  # forget bias 1, as in the MP-LSTM
            self.input_conv.bias[hidden_channels : 2 * hidden_channels] = 1.0

    def forward(self, x: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
        b, t = x.shape[:2]
        proj = self.input_conv(x.flatten(0, 1)).unflatten(0, (b, t))  # [B, T, 4K, H, W]
        h = x.new_zeros(b, self.hidden_channels, *x.shape[3:])
        c = torch.zeros_like(h)
        outputs: list[Tensor] = []
        for step in range(t):
            z = proj[:, step] + self.hidden_conv(h)
            i, f, g, o = z.chunk(4, dim=1)
            c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h_new = torch.sigmoid(o) * torch.tanh(c_new)
            if valid is not None:
                keep = valid[:, step, None, None, None]
                h_new = torch.where(keep, h_new, h)
                c_new = torch.where(keep, c_new, c)
            h, c = h_new, c_new
            outputs.append(h)
        return torch.stack(outputs, dim=1), h


def _stack_views(x: Tensor, view_mask: Tensor) -> Tensor:
    """[B, V, T, C, H, W] → [B, T, V*C, H, W], missing views as zeros."""
    x = x * view_mask[:, :, None, None, None, None].to(x.dtype)
    return x.transpose(1, 2).flatten(2, 3)


@dataclass
class ConvLSTMConfig(ModelConfig):
    # Per stage: a ConvLSTM with this many channels, then 2x2 max pooling (not after the
    # last). After a stride-2 conv stem of widths[0] channels.
    convlstm_channels: tuple[int, ...] = (16, 32, 64)
    kernel_size: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        self.convlstm_channels = tuple(int(c) for c in self.convlstm_channels)
        if not self.convlstm_channels or min(self.convlstm_channels) < 1:
            raise ValueError(f"convlstm_channels must be positive, got {self.convlstm_channels}")


@register_model("convlstm")
class DeepConvLSTMModel(MultiViewModel):
    """Views stacked as channels → conv stem → ConvLSTM stages with pooling → classifier."""

    config_class = ConvLSTMConfig
    embeds = False
    dynamic_time = False
    reads_features = False

    def __init__(self, config: ConvLSTMConfig) -> None:
        super().__init__(config)
        stem = config.widths[0]
        self.stem = nn.Sequential(
            nn.Conv2d(config.num_views * config.in_channels, stem, 5, 2, 2, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU(inplace=True),
        )
        channels = (stem, *config.convlstm_channels)
        self.layers = nn.ModuleList(
            ConvLSTM(cin, cout, config.kernel_size) for cin, cout in itertools.pairwise(channels)
        )
        # Batch norm on each ConvLSTM's output maps: without it the tanh-bounded states
        # reach the next layer and the classifier with little spread, and training crawls.
        self.norms = nn.ModuleList(nn.BatchNorm2d(c) for c in config.convlstm_channels)
        self.pool = nn.MaxPool2d(2)
        self.drop = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(channels[-1], config.num_classes)

    def classify(self, x: Tensor, view_mask: Tensor, lengths: Tensor | None) -> Tensor:
        seq = _stack_views(x, view_mask)  # [B, T, V*C, H, W]
        b, t = seq.shape[:2]
        seq = self.stem(seq.flatten(0, 1)).unflatten(0, (b, t))
        valid = time_mask(lengths, t, seq.device)
        for k, layer in enumerate(self.layers):
            if k > 0:  # normalise and pool the maps of the layer below
                seq = self.pool(self.norms[k - 1](seq.flatten(0, 1))).unflatten(0, (b, t))
            seq, last = layer(seq, valid)
        return self.classifier(self.drop(self.norms[-1](last).mean(dim=(2, 3))))


@dataclass
class CNNConvLSTMConfig(ModelConfig):
    convlstm_channels: int = 64  # one ConvLSTM over the front-end's 2-D maps
    kernel_size: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.convlstm_channels < 1:
            raise ValueError(f"convlstm_channels must be >= 1, got {self.convlstm_channels}")


@register_model("cnn_convlstm")
class CNNConvLSTMModel(MultiViewModel):
    """Shared per-view CNN kept 2-D → views stacked as channels → ConvLSTM → classifier."""

    config_class = CNNConvLSTMConfig
    embeds = False
    dynamic_time = False
    reads_features = False

    def __init__(self, config: CNNConvLSTMConfig) -> None:
        super().__init__(config)
        self.frontend = FrameCNN(config.in_channels, config.widths, spatial=True)
        self.rnn = ConvLSTM(
            config.num_views * self.frontend.out_dim, config.convlstm_channels, config.kernel_size
        )
        # As in `convlstm`: batch norm on the last state's maps. Without it the classifier
        # reads tanh-bounded states of little spread, and on 2,000 synthetic clips this
        # family stayed at chance for 12 epochs (docs/results.md).
        self.norm = nn.BatchNorm2d(config.convlstm_channels)
        self.drop = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.convlstm_channels, config.num_classes)

    def classify(self, x: Tensor, view_mask: Tensor, lengths: Tensor | None) -> Tensor:
        maps = _stack_views(self.frontend(x), view_mask)  # [B, T, V*D, h, w]
        _, last = self.rnn(maps, time_mask(lengths, maps.shape[1], maps.device))
        return self.classifier(self.drop(self.norm(last).mean(dim=(2, 3))))
