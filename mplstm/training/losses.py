"""Training losses: cross-entropy, or a margin loss on a cosine classifier (open-set identity).

A margin loss asks more of the true class than beating the others: CosFace subtracts
`margin` from its cosine (Wang et al., CVPR 2018), ArcFace adds `margin` to its angle
(Deng et al., CVPR 2019), both before the scale. Classes then sit apart by the margin in
the embedding, which is what lets people never seen in training be told apart by cosine
similarity. ``softmax_weight`` adds plain cross-entropy on the unmargined logits beside it.
Every loss here returns one value per clip (the trainer weighs and sums them).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

LOSSES: tuple[str, ...] = ("cross_entropy", "cosface", "arcface")
MARGIN_LOSSES: tuple[str, ...] = ("cosface", "arcface")


class MarginLoss(nn.Module):
    """CosFace or ArcFace on logits ``scale * cos`` [B, classes]; per-clip losses [B]."""

    def __init__(
        self,
        kind: str,
        margin: float,
        scale: float,
        *,
        label_smoothing: float = 0.0,
        softmax_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if kind not in MARGIN_LOSSES:
            raise ValueError(f"margin loss must be one of {MARGIN_LOSSES}, got {kind!r}")
        self.kind, self.margin, self.scale = kind, margin, scale
        self.label_smoothing = label_smoothing
        self.softmax_weight = softmax_weight

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        cos = (logits / self.scale).clamp(-1 + 1e-7, 1 - 1e-7)
        true = cos.gather(1, labels[:, None])
        if self.kind == "cosface":
            target = true - self.margin
        else:
            angle = torch.acos(true) + self.margin
            # Past pi the cosine would grow again: there, fall back to CosFace's penalty
            # (the usual ArcFace guard), so the target keeps falling with the angle.
            target = torch.where(
                angle < math.pi, torch.cos(angle), true - self.margin * math.sin(self.margin)
            )
        margined = cos.scatter(1, labels[:, None], target) * self.scale
        loss = F.cross_entropy(
            margined, labels, reduction="none", label_smoothing=self.label_smoothing
        )
        if self.softmax_weight:
            loss = loss + self.softmax_weight * F.cross_entropy(logits, labels, reduction="none")
        return loss


def make_criterion(
    loss: str,
    *,
    margin: float,
    scale: float | None,
    label_smoothing: float,
    softmax_weight: float,
) -> nn.Module:
    """The per-clip loss a run trains with; `scale` is the model's cosine scale (None: no
    cosine classifier, where only cross-entropy makes sense)."""
    if loss not in LOSSES:
        raise ValueError(f"train.loss must be one of {LOSSES}, got {loss!r}")
    if loss == "cross_entropy":
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing, reduction="none")
    if scale is None:
        raise ValueError(
            f"train.loss = {loss!r} needs an embedding: set model.embedding_size (e.g. 128)"
        )
    return MarginLoss(
        loss, margin, scale, label_smoothing=label_smoothing, softmax_weight=softmax_weight
    )
