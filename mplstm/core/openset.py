"""Open-set identity metrics (DESIGN.md §10): enrol people, then identify and verify probes.

Torch-free and shared: `mplstm evaluate --open-set` scores a checkpoint's embeddings with
it, `mplstm export` the exported model's, and the service matches probes with the same
rule. A person's template is the normalised mean of their enrolment embeddings; a probe's
score against a person is the cosine with that template.

Protocol on a set of people never seen in training: the first `gallery_people` (by
label) are enrolled from their first `enrol_clips` clips (by clip id); their other clips
are genuine probes; every clip of the remaining people is an impostor probe. Reported:

- rank-1: genuine probes whose best-scoring gallery person is themselves;
- verification (one-to-one): genuine pairs (a probe against its own person) and impostor
  pairs (a probe against every other gallery person); EER, and the threshold and TAR at
  each false-accept rate asked for (FAR: the share of impostor pairs at or above it);
- open-set identification at those thresholds: DIR (genuine probes ranked first *and*
  accepted) and FPIR (impostor probes whose best score is accepted), which grows with the
  gallery size where the FAR per comparison does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

DEFAULT_FARS: tuple[float, ...] = (0.01, 0.001)
ROC_POINTS = 200  # points kept of the ROC curve (for the plot and the JSON)


class OpenSetError(ValueError):
    """An open-set evaluation that cannot be run on this data; the message says why."""


@dataclass(frozen=True)
class Protocol:
    """Which clips enrol whom, and which are probes (indices into the clip list)."""

    people: tuple[str, ...]  # gallery people, in template order
    enrol: tuple[tuple[int, ...], ...]  # per gallery person, their enrolment clips
    genuine: tuple[int, ...]  # probes of gallery people
    genuine_person: tuple[int, ...]  # their person's index in `people`
    impostors: tuple[int, ...]  # probes of people not in the gallery
    impostor_people: tuple[str, ...]


@dataclass(frozen=True)
class Operating:
    """One operating point: a threshold set at a false-accept rate, and what it gives."""

    far: float  # asked for
    threshold: float
    far_measured: float  # impostor pairs at or above the threshold
    tar: float  # genuine pairs at or above it
    dir: float  # genuine probes ranked first and accepted (open-set identification)
    fpir: float  # impostor probes whose best score is accepted


@dataclass(frozen=True)
class OpenSetResult:
    """Every open-set figure of one set of embeddings."""

    gallery_people: int
    impostor_people: int
    genuine_probes: int
    impostor_probes: int
    genuine_pairs: int
    impostor_pairs: int
    rank1: float
    eer: float
    eer_threshold: float
    operating: tuple[Operating, ...]
    roc: dict[str, list[float]] = field(repr=False)  # far, tar (ROC_POINTS each)

    def at(self, far: float) -> Operating:
        """The operating point set at `far`."""
        return next(o for o in self.operating if o.far == far)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_protocol(
    clip_ids: Sequence[str],
    labels: Sequence[str],
    *,
    enrol_clips: int = 2,
    gallery_people: int | None = None,
) -> Protocol:
    """Split the clips of people never seen in training into enrolment and probes.

    `gallery_people` None: half of the people (rounded up) are enrolled, the rest impostors.
    """
    people = sorted(set(labels))
    gallery_people = (len(people) + 1) // 2 if gallery_people is None else gallery_people
    if not 1 <= gallery_people <= len(people) or enrol_clips < 1:
        raise OpenSetError(
            f"need 1 <= gallery people <= {len(people)} people and >= 1 enrolment clip, "
            f"got {gallery_people} and {enrol_clips}"
        )
    order = sorted(range(len(clip_ids)), key=lambda i: clip_ids[i])
    by_person: dict[str, list[int]] = {p: [] for p in people}
    for i in order:
        by_person[labels[i]].append(i)
    gallery = people[:gallery_people]
    short = [p for p in gallery if len(by_person[p]) <= enrol_clips]
    if short:
        raise OpenSetError(
            f"{short[:5]} have no clip left to probe with after {enrol_clips} enrolment clips"
        )
    genuine = [(i, k) for k, p in enumerate(gallery) for i in by_person[p][enrol_clips:]]
    impostor_people = people[gallery_people:]
    return Protocol(
        people=tuple(gallery),
        enrol=tuple(tuple(by_person[p][:enrol_clips]) for p in gallery),
        genuine=tuple(i for i, _ in genuine),
        genuine_person=tuple(k for _, k in genuine),
        impostors=tuple(i for p in impostor_people for i in by_person[p]),
        impostor_people=tuple(impostor_people),
    )


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero)."""
    vectors = np.asarray(vectors, np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def template(embeddings: np.ndarray) -> np.ndarray:
    """One person's template: the normalised mean of their unit embeddings [n, E] → [E]."""
    return normalise(normalise(embeddings).sum(axis=0))


def threshold_at_far(impostor_scores: np.ndarray, far: float) -> float:
    """The lowest threshold at which at most `far` of the impostor scores are accepted
    (a score is accepted when >= the threshold)."""
    scores = np.sort(np.asarray(impostor_scores, np.float64))[::-1]
    allowed = int(np.floor(far * len(scores) + 1e-9))
    if allowed >= len(scores):
        return float(scores[-1]) if len(scores) else -1.0
    # Just above the first impostor score that must be refused.
    return float(np.nextafter(np.float32(scores[allowed]), np.float32(np.inf)))


def equal_error_rate(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float]:
    """(EER, its threshold): where the false-accept and false-reject rates cross."""
    thresholds = np.unique(np.concatenate([genuine, impostor]))
    far, frr = _rates(genuine, impostor, thresholds)
    i = int(np.argmin(np.abs(far - frr)))
    return float((far[i] + frr[i]) / 2), float(thresholds[i])


def roc_curve(genuine: np.ndarray, impostor: np.ndarray, points: int = ROC_POINTS) -> dict:
    """FAR and TAR over the thresholds, thinned to about `points` (log-spaced in FAR)."""
    thresholds = np.unique(np.concatenate([genuine, impostor]))[::-1]
    far, frr = _rates(genuine, impostor, thresholds)
    targets = np.concatenate([[0.0], np.logspace(-4, 0, points - 1)])
    keep = np.unique(np.searchsorted(far, targets, side="right").clip(0, len(far) - 1))
    return {"far": far[keep].tolist(), "tar": (1 - frr[keep]).tolist()}


def _rates(
    genuine: np.ndarray, impostor: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """FAR (impostors >= t) and FRR (genuine < t) at each threshold t."""
    g, i = np.sort(genuine), np.sort(impostor)
    far = 1 - np.searchsorted(i, thresholds, side="left") / max(len(i), 1)
    frr = np.searchsorted(g, thresholds, side="left") / max(len(g), 1)
    return far, frr


def evaluate_open_set(
    embeddings: np.ndarray, protocol: Protocol, fars: Sequence[float] = DEFAULT_FARS
) -> OpenSetResult:
    """Every figure of the protocol for one set of clip embeddings [clips, E]."""
    embeddings = normalise(embeddings)
    templates = np.stack([template(embeddings[list(idx)]) for idx in protocol.enrol])
    genuine_scores = embeddings[list(protocol.genuine)] @ templates.T  # [G, P]
    impostor_scores = embeddings[list(protocol.impostors)] @ templates.T  # [I, P]
    own = np.asarray(protocol.genuine_person, np.int64)
    rows = np.arange(len(own))
    genuine = genuine_scores[rows, own]
    others = np.ones_like(genuine_scores, bool)
    others[rows, own] = False
    impostor = np.concatenate([genuine_scores[others], impostor_scores.reshape(-1)])
    if not len(genuine) or not len(impostor):
        raise OpenSetError("the protocol has no genuine or no impostor pair to score")
    ranked_first = genuine_scores.argmax(axis=1) == own
    eer, eer_threshold = equal_error_rate(genuine, impostor)
    best_impostor = impostor_scores.max(axis=1) if len(impostor_scores) else np.zeros(0)
    operating = []
    for far in fars:
        t = threshold_at_far(impostor, far)
        operating.append(
            Operating(
                far=far,
                threshold=t,
                far_measured=float(np.mean(impostor >= t)),
                tar=float(np.mean(genuine >= t)),
                dir=float(np.mean(ranked_first & (genuine >= t))),
                fpir=float(np.mean(best_impostor >= t)) if len(best_impostor) else 0.0,
            )
        )
    return OpenSetResult(
        gallery_people=len(protocol.people),
        impostor_people=len(protocol.impostor_people),
        genuine_probes=len(genuine),
        impostor_probes=len(protocol.impostors),
        genuine_pairs=len(genuine),
        impostor_pairs=len(impostor),
        rank1=float(ranked_first.mean()),
        eer=eer,
        eer_threshold=eer_threshold,
        operating=tuple(operating),
        roc=roc_curve(genuine, impostor),
    )
