"""Temporal pooling over a recurrent layer's outputs, masked by sequence lengths.

Every kind is causal when run over a prefix, and `TemporalPool.step` runs it over a
sequence chunk by chunk with a small accumulator (live models, DESIGN.md §3): the
running mean keeps a sum and a count; attention keeps the softmax's numerator,
denominator and running maximum (the online softmax), so the pooled vector after any
chunk equals the whole-sequence pooling of the steps so far; `last` keeps nothing.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

Pooling = Literal["attention", "mean", "last"]
POOLINGS: tuple[str, ...] = ("attention", "mean", "last")


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over dim 1 of x [B, T, ...] counting only steps where mask [B, T] is True."""
    if mask is None:
        return x.mean(dim=1)
    weights = mask.to(x.dtype).reshape(*mask.shape, *([1] * (x.dim() - 2)))
    return (x * weights).sum(dim=1) / weights.sum(dim=1)


def last_valid(x: Tensor, mask: Tensor | None) -> Tensor:
    """x [B, T, D] at each sequence's last valid step (mask [B, T], a prefix, or None)."""
    if mask is None:
        return x[:, -1]
    last = mask.long().sum(dim=1) - 1
    return x[torch.arange(x.shape[0], device=x.device), last]


class TemporalAttention(nn.Module):
    """Additive attention over time (as after the authors' BiMP-LSTM): softmax(vᵀ tanh(W h_t))."""

    def __init__(self, dim: int, attention_dim: int | None = None) -> None:
        super().__init__()
        attention_dim = attention_dim or dim
        self.proj = nn.Linear(dim, attention_dim)
        self.score = nn.Linear(attention_dim, 1, bias=False)

    def scores(self, x: Tensor) -> Tensor:
        """x [B, T, D] → unnormalised attention scores [B, T]."""
        return self.score(torch.tanh(self.proj(x))).squeeze(-1)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x [B, T, D], mask [B, T] | None → [B, D]."""
        scores = self.scores(x)  # [B, T]
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=1)
        return torch.bmm(weights.unsqueeze(1), x).squeeze(1)

    def step(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One chunk x [B, t, D] and the accumulator [B, D + 2] (numerator, denominator,
        running max; all zero before the first chunk) → (pooled [B, D], new accumulator)."""
        dim = x.shape[-1]
        num, den, top = state[:, :dim], state[:, dim : dim + 1], state[:, dim + 1 :]
        scores = self.scores(x)  # [B, t]
        chunk_top = scores.max(dim=1, keepdim=True).values
        started = den > 0
        new_top = torch.where(started, torch.maximum(top, chunk_top), chunk_top)
        # Before the first chunk nothing is carried: its exp() is never used.
        carried = torch.where(started, torch.exp(top - new_top), torch.zeros_like(den))
        weights = torch.exp(scores - new_top)  # [B, t]
        num = num * carried + torch.bmm(weights.unsqueeze(1), x).squeeze(1)
        den = den * carried + weights.sum(dim=1, keepdim=True)
        return num / den, torch.cat([num, den, new_top], dim=1)


class TemporalPool(nn.Module):
    """`attention`, `mean` or `last` pooling of [B, T, D] → [B, D], steps past each length out."""

    def __init__(self, kind: Pooling, dim: int) -> None:
        super().__init__()
        if kind not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {kind!r}")
        self.kind = kind
        self.dim = dim
        self.attention = TemporalAttention(dim) if kind == "attention" else None

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        if self.attention is not None:
            return self.attention(x, mask)
        if self.kind == "last":
            return last_valid(x, mask)
        return masked_mean(x, mask)

    @property
    def state_size(self) -> int:
        """Accumulator floats per sequence that `step` carries (0: none)."""
        return {"attention": self.dim + 2, "mean": self.dim + 1, "last": 0}[self.kind]

    def step(self, x: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """One chunk x [B, t, D] → (pooling of every step so far [B, D], new accumulator)."""
        if self.kind == "last":
            return x[:, -1], None
        assert state is not None
        if self.attention is not None:
            return self.attention.step(x, state)
        total = state[:, : self.dim] + x.sum(dim=1)
        count = state[:, self.dim :] + x.shape[1]
        return total / count, torch.cat([total, count], dim=1)
