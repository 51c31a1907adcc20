"""The per-view CNN front-end, shared by all views and trained end to end.

A 3-D conv stem (short-range motion over 3 frames, as in lip-reading front-ends)
followed by two stride-2 2-D residual stages per frame. No pretrained weights.
For 64x64 input: stem 32x32, pool 16x16, stages 8x8 and 4x4.

Causal (live models, DESIGN.md §3): the stem reads frames t-2..t instead of t-1..t+1,
zero-padded before the first frame, so a frame's features never wait for later frames.
A live session runs it chunk by chunk (`step`), carrying the last two input frames as
context: the same output as over the whole clip.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ResidualBlock(nn.Module):
    """ResNet basic block: two 3x3 convs, projection shortcut when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn1(self.conv1(x)).relu()
        return (self.bn2(self.conv2(y)) + self.shortcut(x)).relu()


class FrameCNN(nn.Module):
    """x [B, V, T, C, H, W] → features [B, V, T, D] (or maps [B, V, T, D, h, w] if spatial)."""

    # Frames before t the stem reads (its temporal kernel 3, minus one).
    CONTEXT_FRAMES = 2

    def __init__(
        self,
        in_channels: int,
        widths: tuple[int, int, int],
        spatial: bool = False,
        causal: bool = False,
    ) -> None:
        super().__init__()
        w0, w1, w2 = widths
        self.causal = causal
        time_pad = 0 if causal else 1  # causal: the context frames are prepended instead
        # Pooling before batch norm and ReLU: they then run on a quarter of the stem's
        # output, the largest tensor of the model (about 10% of a training step).
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, w0, (3, 5, 5), (1, 2, 2), (time_pad, 2, 2), bias=False),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            nn.BatchNorm3d(w0),
            nn.ReLU(inplace=True),
        )
        self.stages = nn.Sequential(ResidualBlock(w0, w1, 2), ResidualBlock(w1, w2, 2))
        self.spatial = spatial
        self.out_dim = w2

    def forward(self, x: Tensor) -> Tensor:
        """Normalised frames [B, V, T, C, H, W] → features (causal: zeros before frame 0)."""
        if self.causal:
            x, _ = self.with_context(x, None)
        return self._frames(x)

    def with_context(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """(context + x along time, the new context): causal stems only.

        context [B, V, CONTEXT_FRAMES, C, H, W]: the frames before x (None: zeros, the
        start of a sequence); the new context is the last CONTEXT_FRAMES of the two.
        """
        if context is None:
            b, v, _, c, h, w = x.shape
            context = x.new_zeros(b, v, self.CONTEXT_FRAMES, c, h, w)
        joined = torch.cat([context, x], dim=2)
        return joined, joined[:, :, -self.CONTEXT_FRAMES :]

    def step(self, x: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """One chunk of a sequence: (features of x's frames, the context for the next chunk)."""
        joined, context = self.with_context(x, context)
        return self._frames(joined), context

    def _frames(self, x: Tensor) -> Tensor:
        b, v, t, c, h, w = x.shape
        # Views fold into the batch: one set of weights for every view.
        y = self.stem(x.reshape(b * v, t, c, h, w).transpose(1, 2))  # [BV, w0, T, h', w']
        t = y.shape[2]  # causal: the context frames are consumed
        y = y.transpose(1, 2).flatten(0, 1)  # [BV*T, w0, h', w']
        y = self.stages(y)
        if self.spatial:
            return y.reshape(b, v, t, *y.shape[1:])
        return y.mean(dim=(2, 3)).reshape(b, v, t, -1)
