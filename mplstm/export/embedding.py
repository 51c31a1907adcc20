"""What export adds for identity models with an embedding head (DESIGN.md §3, §5, §10).

- The served signature gains a third output, `embedding` [B, E] (L2-normalised), beside
  logits and probabilities; model.fp16.onnx and TensorRT engines come from the same graph.
- Parity: the embedding is compared like the logits (`mplstm.inference.parity`), on the
  same inputs, and the export fails when it is off.
- Open-set thresholds: the exported model embeds clips of people never seen in training
  (decoded by `core` as the service decodes them), and `mplstm.core.openset` sets the
  thresholds at FAR 1% and 0.1% that the service's identify and verify routes apply.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mplstm.core.openset import DEFAULT_FARS, evaluate_open_set, make_protocol
from mplstm.core.package import EMBEDDING_OUTPUT, TensorSpec
from mplstm.inference.parity import TOLERANCES, compare_embeddings

# How the service matches: a person's template is the normalised mean of their
# embeddings, and a probe's score against a person is the cosine with it.
MATCHING = {"score": "cosine", "template": "normalised mean of the person's embeddings"}


def embedding_size(model: nn.Module) -> int:
    """E of the model's embedding head; 0 when it has none (nothing here applies)."""
    return int(getattr(model.config, "embedding_size", 0) or 0)


class EmbeddingPackagedModel(nn.Module):
    """(clip uint8 [B,V,T,C,H,W], view_mask bool [B,V]) → logits, probabilities, embedding."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, clip: Tensor, view_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits, embedding = self.model.embed(clip, view_mask)
        return logits, logits.softmax(dim=-1), embedding


def embedding_spec(size: int) -> TensorSpec:
    """The manifest's description of the embedding output."""
    return TensorSpec(EMBEDDING_OUTPUT, "float32", ("batch", size))


def embedding_parity(
    model: nn.Module,
    session: Any,
    inputs: Sequence[tuple[np.ndarray, np.ndarray]],
    tolerance: float = TOLERANCES["embedding-fp32"],
) -> dict[str, Any]:
    """PyTorch's embedding against ONNX Runtime's on the parity inputs, for the manifest."""
    pairs = []
    for clip, mask in inputs:
        with torch.no_grad():
            expected = model.embed(torch.from_numpy(clip), torch.from_numpy(mask))[1].numpy()
        pairs.append(
            (expected, session.run([EMBEDDING_OUTPUT], {"clip": clip, "view_mask": mask})[0])
        )
    parity = compare_embeddings(pairs, tolerance)
    return {
        "tolerance": tolerance,
        "max_abs_diff": parity.max_abs_diff,
        "min_cosine": parity.min_cosine,
        "passed": parity.passed,
    }


def open_set_section(
    size: int,
    evaluation: tuple[Sequence[Any], np.ndarray] | None,
    *,
    data: str | Path | None = None,
    split: str = "test",
    enrol_clips: int = 2,
    gallery_people: int | None = None,
    fars: Sequence[float] = DEFAULT_FARS,
) -> dict[str, Any]:
    """The manifest's `open_set`: the matching rule, and thresholds measured on people
    never seen in training (`evaluation`: their clip records and the exported model's
    embeddings of them). Without it the package has no thresholds, and the service asks
    for one per request."""
    section: dict[str, Any] = {"embedding_size": size, **MATCHING, "thresholds": []}
    if evaluation is None:
        return section
    records, embeddings = evaluation
    protocol = make_protocol(
        [r.id for r in records],
        [r.label for r in records],
        enrol_clips=enrol_clips,
        gallery_people=gallery_people,
    )
    result = evaluate_open_set(embeddings, protocol, fars)
    section["thresholds"] = [
        {"far": o.far, "threshold": o.threshold, "tar": o.tar, "fpir": o.fpir}
        for o in result.operating
    ]
    section["evaluation"] = {
        "data": None if data is None else Path(data).as_posix(),
        "split": split,
        "enrol_clips": enrol_clips,
        "gallery_people": result.gallery_people,
        "impostor_people": result.impostor_people,
        "genuine_pairs": result.genuine_pairs,
        "impostor_pairs": result.impostor_pairs,
        "rank1": result.rank1,
        "eer": result.eer,
    }
    return section
