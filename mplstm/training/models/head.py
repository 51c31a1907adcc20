"""The classifier head: a plain linear layer, or an L2-normalised embedding and a cosine classifier.

Open-set identity (DESIGN.md §10) needs an embedding in which one person's clips lie close
and other people's far, so that people never seen in training can be enrolled and
matched by cosine similarity. Margin losses (CosFace, Wang et al. 2018; ArcFace, Deng et
al. 2019; `mplstm.training.losses`) learn one: the embedding and every class weight are
unit vectors, and the logits are ``scale * cos(angle)``. Exported, the same head gives
the `embedding` output beside the logits.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class CosineClassifier(nn.Module):
    """features [B, D] → L2-normalised embedding [B, E] → logits ``scale * cos`` [B, classes]."""

    def __init__(self, in_dim: int, embedding_size: int, num_classes: int, scale: float) -> None:
        super().__init__()
        self.project = nn.Linear(in_dim, embedding_size)
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, std=1 / math.sqrt(embedding_size))
        self.scale = scale

    def embed(self, features: Tensor) -> Tensor:
        """The unit-length embedding of `features`."""
        return F.normalize(self.project(features), dim=-1)

    def logits(self, embedding: Tensor) -> Tensor:
        """``scale * cos`` between unit embeddings and each class's unit weight."""
        return self.scale * embedding @ F.normalize(self.weight, dim=-1).t()

    def forward(self, features: Tensor) -> Tensor:
        return self.logits(self.embed(features))


def make_classifier(
    in_dim: int, num_classes: int, embedding_size: int, scale: float
) -> nn.Linear | CosineClassifier:
    """A linear classifier (`embedding_size` 0), else a cosine classifier over an embedding."""
    if embedding_size:
        return CosineClassifier(in_dim, embedding_size, num_classes, scale)
    return nn.Linear(in_dim, num_classes)
