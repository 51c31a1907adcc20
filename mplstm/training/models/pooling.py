"""Temporal pooling over a recurrent layer's outputs, masked by sequence lengths."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

Pooling = Literal["attention", "mean"]


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over dim 1 of x [B, T, ...] counting only steps where mask [B, T] is True."""
    if mask is None:
        return x.mean(dim=1)
    weights = mask.to(x.dtype).reshape(*mask.shape, *([1] * (x.dim() - 2)))
    return (x * weights).sum(dim=1) / weights.sum(dim=1)


class TemporalAttention(nn.Module):
    """Additive attention over time (as after the authors' BiMP-LSTM): softmax(vᵀ tanh(W h_t))."""

    def __init__(self, dim: int, attention_dim: int | None = None) -> None:
        super().__init__()
        attention_dim = attention_dim or dim
        self.proj = nn.Linear(dim, attention_dim)
        self.score = nn.Linear(attention_dim, 1, bias=False)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x [B, T, D], mask [B, T] | None → [B, D]."""
        scores = self.score(torch.tanh(self.proj(x))).squeeze(-1)  # [B, T]
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=1)
        return torch.bmm(weights.unsqueeze(1), x).squeeze(1)


class TemporalPool(nn.Module):
    """`attention` or `mean` pooling of [B, T, D] → [B, D], steps past each length left out."""

    def __init__(self, kind: Pooling, dim: int) -> None:
        super().__init__()
        if kind not in ("attention", "mean"):
            raise ValueError(f"pooling must be 'attention' or 'mean', got {kind!r}")
        self.attention = TemporalAttention(dim) if kind == "attention" else None

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        if self.attention is not None:
            return self.attention(x, mask)
        return masked_mean(x, mask)
