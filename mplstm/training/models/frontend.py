"""The per-view CNN front-end, shared by all views and trained end to end.

A 3-D conv stem (short-range motion over 3 frames, as in lip-reading front-ends)
followed by two stride-2 2-D residual stages per frame. No pretrained weights.
For 64x64 input: stem 32x32, pool 16x16, stages 8x8 and 4x4.
"""

from __future__ import annotations

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

    def __init__(
        self, in_channels: int, widths: tuple[int, int, int], spatial: bool = False
    ) -> None:
        super().__init__()
        w0, w1, w2 = widths
        # Pooling before batch norm and ReLU: they then run on a quarter of the stem's
        # output, the largest tensor of the model (about 10% of a training step).
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, w0, (3, 5, 5), (1, 2, 2), (1, 2, 2), bias=False),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            nn.BatchNorm3d(w0),
            nn.ReLU(inplace=True),
        )
        self.stages = nn.Sequential(ResidualBlock(w0, w1, 2), ResidualBlock(w1, w2, 2))
        self.spatial = spatial
        self.out_dim = w2

    def forward(self, x: Tensor) -> Tensor:
        b, v, t, c, h, w = x.shape
        # Views fold into the batch: one set of weights for every view.
        y = self.stem(x.reshape(b * v, t, c, h, w).transpose(1, 2))  # [BV, w0, T, h', w']
        y = y.transpose(1, 2).flatten(0, 1)  # [BV*T, w0, h', w']
        y = self.stages(y)
        if self.spatial:
            return y.reshape(b, v, t, *y.shape[1:])
        return y.mean(dim=(2, 3)).reshape(b, v, t, -1)
