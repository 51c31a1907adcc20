"""Synthetic speakers: every trait is a function of the speaker id alone.

Identity is carried by two discrete traits, each seen by one group of views only:
``frontal_trait = id % 5`` (the gaps between the upper teeth, seen from near-frontal views)
and ``profile_trait = (id // 5) % 4`` (upper/lower lip and chin profile, seen from
near-profile views). Only the pair tells 20 consecutive ids apart, so no single view
identifies a speaker. The continuous appearance (skin and lip colour, texture, mouth size)
also varies with the id, but by less than the per-clip lighting, camera gain and framing
vary, so it is a weak cue.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_FRONTAL_TRAITS = 5
N_PROFILE_TRAITS = 4
# Distinct random streams for speakers and clips, so that no clip seed reproduces a speaker.
SPEAKER_STREAM = 0x5EA4E5

# Teeth-gap patterns (gap centres as a fraction of the mouth width), one per frontal trait.
TEETH_GAPS: tuple[tuple[float, ...], ...] = ((), (0.0,), (-0.16,), (0.16,), (-0.1, 0.1))
# Extra protrusion of the upper lip, of the lower lip, and of the chin, one per profile trait.
PROFILE_SHAPES: tuple[tuple[float, float, float], ...] = (
    (0.0, 0.0, 0.0),  # even lips
    (0.14, -0.05, 0.0),  # upper lip forward (overbite)
    (-0.05, 0.14, 0.0),  # lower lip forward
    (0.0, 0.0, 0.18),  # prominent chin
)


@dataclass(frozen=True)
class Speaker:
    """A synthetic speaker's fixed appearance (lengths in units of half the crop height)."""

    id: int
    frontal_trait: int
    profile_trait: int
    skin: tuple[float, float, float]  # linear RGB albedo
    lip: tuple[float, float, float]
    mouth_width: float  # corner to corner at rest
    upper_lip: float  # lip thickness above the opening
    lower_lip: float
    face_radius: float  # curvature of the face around the mouth (seen in profile)
    texture: tuple[tuple[float, float, float, float], ...]  # (kx, ky, phase, amplitude)

    @property
    def name(self) -> str:
        """The speaker's label."""
        return speaker_name(self.id)


def speaker_name(speaker_id: int) -> str:
    """The fixed label of a speaker id: 's001', 's002', ..."""
    return f"s{speaker_id:03d}"


def speaker(speaker_id: int) -> Speaker:
    """The speaker with this id (>= 0); the same id gives the same speaker in every run."""
    if speaker_id < 0:
        raise ValueError(f"speaker id must be >= 0, got {speaker_id}")
    rng = np.random.default_rng(np.random.SeedSequence([SPEAKER_STREAM, speaker_id]))
    tone = rng.uniform(-1.0, 1.0)
    skin = (0.78 + 0.06 * tone, 0.6 + 0.05 * tone, 0.5 + 0.05 * tone)
    redness = rng.uniform(-1.0, 1.0)
    lip = (0.66 + 0.04 * redness, 0.36 + 0.03 * tone, 0.36 + 0.03 * tone)
    texture = tuple(
        (
            float(rng.uniform(3.0, 9.0) * rng.choice([-1, 1])),
            float(rng.uniform(3.0, 9.0)),
            float(rng.uniform(0, 2 * np.pi)),
            float(rng.uniform(0.01, 0.025)),
        )
        for _ in range(4)
    )
    return Speaker(
        id=speaker_id,
        frontal_trait=speaker_id % N_FRONTAL_TRAITS,
        profile_trait=(speaker_id // N_FRONTAL_TRAITS) % N_PROFILE_TRAITS,
        skin=tuple(float(c) for c in skin),
        lip=tuple(float(c) for c in lip),
        mouth_width=float(rng.uniform(1.2, 1.32)),
        upper_lip=float(rng.uniform(0.15, 0.18)),
        lower_lip=float(rng.uniform(0.17, 0.21)),
        face_radius=float(rng.uniform(2.0, 2.6)),
        texture=texture,
    )
