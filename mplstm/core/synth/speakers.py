"""Synthetic speakers: every trait is a function of the speaker id (and generator version).

Identity is split between two groups of views, so that no single view identifies a
speaker: a frontal trait (the upper teeth, seen through the mouth opening from near-frontal
views only) and a profile trait (the upper/lower lip and chin profile, seen in the
silhouette of near-profile views only).

- Generator 2 (the closed-set tables of docs/results.md): two discrete traits,
  ``frontal = id % 5`` (a teeth-gap pattern) and ``profile = (id // 5) % 4`` (a lip/chin
  shape). Only the pair tells 20 consecutive ids apart, and ids 20 apart share both: a
  person "never seen in training" is a repeat of one who was.
- Generator 3 (the default): continuous traits drawn per id, so every id is a new person.
  Frontal: the positions and widths of two gaps between the upper teeth, and the teeth's
  shade. Profile: how far the upper lip, the lower lip and the chin stand out. Each group
  alone leaves near neighbours in the other group's dimensions apart only by the weak
  all-view cues.

The continuous appearance (skin and lip colour, texture, mouth size) varies with the id in
both versions, by less than the per-clip lighting, camera gain and framing vary: a weak cue.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_FRONTAL_TRAITS = 5
N_PROFILE_TRAITS = 4
# Distinct random streams for speakers and clips, so that no clip seed reproduces a speaker.
SPEAKER_STREAM = 0x5EA4E5
# Generator 3's continuous traits come from their own stream: the appearance drawn from
# SPEAKER_STREAM is the same in both versions.
TRAIT_STREAM = 0x7EA175
GENERATOR_VERSIONS: tuple[int, ...] = (2, 3)
GENERATOR_VERSION = 3  # the default: continuous identity traits

# Generator 2: teeth-gap patterns (gap centres as a fraction of the mouth width), one per
# frontal trait, each gap GAP_HALF_WIDTH wide on either side.
TEETH_GAPS: tuple[tuple[float, ...], ...] = ((), (0.0,), (-0.16,), (0.16,), (-0.1, 0.1))
GAP_HALF_WIDTH = 0.05
TEETH_SHADE = 0.93  # generator 2's teeth brightness (the material colour's first channel)
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
    frontal_trait: int | None  # generator 2's discrete traits; None in generator 3
    profile_trait: int | None
    skin: tuple[float, float, float]  # linear RGB albedo
    lip: tuple[float, float, float]
    mouth_width: float  # corner to corner at rest
    upper_lip: float  # lip thickness above the opening
    lower_lip: float
    face_radius: float  # curvature of the face around the mouth (seen in profile)
    texture: tuple[tuple[float, float, float, float], ...]  # (kx, ky, phase, amplitude)
    # Frontal trait: gaps between the upper teeth (centre, half-width; fractions of the
    # mouth width) and the teeth's brightness.
    teeth_gaps: tuple[tuple[float, float], ...] = ()
    teeth_shade: float = TEETH_SHADE
    # Profile trait: extra protrusion of the upper lip, of the lower lip, and of the chin.
    profile: tuple[float, float, float] = (0.0, 0.0, 0.0)
    generator: int = GENERATOR_VERSION

    @property
    def name(self) -> str:
        """The speaker's label."""
        return speaker_name(self.id)


def speaker_name(speaker_id: int) -> str:
    """The fixed label of a speaker id: 's001', 's002', ..."""
    return f"s{speaker_id:03d}"


def check_generator(version: int) -> int:
    """`version` if this code can render it; ValueError listing the known versions otherwise."""
    if version not in GENERATOR_VERSIONS:
        raise ValueError(f"generator version must be one of {GENERATOR_VERSIONS}, got {version}")
    return version


def speaker(speaker_id: int, generator: int = GENERATOR_VERSION) -> Speaker:
    """The speaker with this id (>= 0); the same id and version give the same speaker always."""
    if speaker_id < 0:
        raise ValueError(f"speaker id must be >= 0, got {speaker_id}")
    check_generator(generator)
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
    appearance = {
        "id": speaker_id,
        "skin": tuple(float(c) for c in skin),
        "lip": tuple(float(c) for c in lip),
        "mouth_width": float(rng.uniform(1.2, 1.32)),
        "upper_lip": float(rng.uniform(0.15, 0.18)),
        "lower_lip": float(rng.uniform(0.17, 0.21)),
        "face_radius": float(rng.uniform(2.0, 2.6)),
        "texture": texture,
        "generator": generator,
    }
    if generator == 2:
        frontal = speaker_id % N_FRONTAL_TRAITS
        profile = (speaker_id // N_FRONTAL_TRAITS) % N_PROFILE_TRAITS
        return Speaker(
            frontal_trait=frontal,
            profile_trait=profile,
            teeth_gaps=tuple((g, GAP_HALF_WIDTH) for g in TEETH_GAPS[frontal]),
            profile=PROFILE_SHAPES[profile],
            **appearance,
        )
    return Speaker(frontal_trait=None, profile_trait=None, **appearance, **_traits(speaker_id))


def _traits(speaker_id: int) -> dict:
    """Generator 3's continuous frontal and profile traits of one id."""
    rng = np.random.default_rng(np.random.SeedSequence([TRAIT_STREAM, speaker_id]))
    # One gap left of centre and one right of it, anywhere on the visible teeth, from a
    # narrow to a wide one, and the teeth's shade from dull to bright: three numbers, each
    # range wide enough that two random people differ by several pixels or grey levels.
    gaps = (
        (float(rng.uniform(-0.3, -0.04)), float(rng.uniform(0.035, 0.09))),
        (float(rng.uniform(0.04, 0.3)), float(rng.uniform(0.035, 0.09))),
    )
    shade = float(rng.uniform(0.4, 0.95))
    # Generator 2's four shapes lie inside this box.
    profile = (
        float(rng.uniform(-0.06, 0.24)),
        float(rng.uniform(-0.06, 0.24)),
        float(rng.uniform(0.0, 0.3)),
    )
    return {"teeth_gaps": gaps, "teeth_shade": shade, "profile": profile}
