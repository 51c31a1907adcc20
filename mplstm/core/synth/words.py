"""The synthetic vocabulary: a word is a pair (interior pattern, protrusion pattern).

Word `w` has interior pattern ``a = w % 5`` (what the tongue and teeth do inside the
mouth, seen only from near-frontal views) and protrusion pattern ``b = w // 5`` (how the
lips push forward, seen only from near-profile views). Trajectories are fixed functions of
the word's normalised time tau (0 = word onset, 1 = offset); a clip warps tau in time, so
a word looks the same in every run and every clip differs in timing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_INTERIOR = 5
N_PROTRUSION = 5
MAX_WORDS = N_INTERIOR * N_PROTRUSION

# Gaussian bumps (centre, width) in tau. Distinct timings make the patterns separable
# once a model sees the whole word; a single frame is not enough.
_TONGUE: tuple[tuple[tuple[float, float], ...], ...] = (
    ((0.3, 0.1),),  # raised early
    ((0.7, 0.1),),  # raised late
    ((0.2, 0.08), (0.8, 0.08)),  # raised twice
    (),  # stays low (teeth do the work)
    ((0.5, 0.22),),  # a long plateau
)
_TEETH: tuple[tuple[tuple[float, float], ...], ...] = (
    (),
    (),
    (),
    ((0.5, 0.15),),  # teeth bared in the middle
    (),
)
_PROTRUSION: tuple[tuple[tuple[float, float], ...], ...] = (
    (),  # lips stay back
    ((0.5, 0.18),),  # rounded in the middle, for long: the only pattern of 10 words
    ((0.25, 0.11),),  # early
    ((0.75, 0.11),),  # late
    ((0.2, 0.09), (0.8, 0.09)),  # twice
)


@dataclass(frozen=True)
class Word:
    """A word of the synthetic vocabulary and its two hidden factors."""

    id: int
    interior: int  # a: tongue/teeth pattern, visible from near-frontal views only
    protrusion: int  # b: lip protrusion pattern, visible from near-profile views only

    @property
    def name(self) -> str:
        """The word's label."""
        return word_name(self.id)


def word_name(word_id: int) -> str:
    """The fixed label of a word id: 'w00', 'w01', ..."""
    return f"w{word_id:02d}"


def word(word_id: int) -> Word:
    """The word with this id (0 <= id < MAX_WORDS)."""
    if not 0 <= word_id < MAX_WORDS:
        raise ValueError(f"word id must be in 0..{MAX_WORDS - 1}, got {word_id}")
    return Word(word_id, word_id % N_INTERIOR, word_id // N_INTERIOR)


def tongue_trajectory(w: Word, tau: np.ndarray) -> np.ndarray:
    """Tongue raise in [0, 1] at normalised word times `tau` (0 outside the word)."""
    return _bumps(_TONGUE[w.interior], tau)


def teeth_trajectory(w: Word, tau: np.ndarray) -> np.ndarray:
    """Teeth exposure in [0, 1] at normalised word times `tau`."""
    return _bumps(_TEETH[w.interior], tau)


def protrusion_trajectory(w: Word, tau: np.ndarray) -> np.ndarray:
    """Lip protrusion in [0, 1] at normalised word times `tau`."""
    return _bumps(_PROTRUSION[w.protrusion], tau)


def _bumps(bumps: tuple[tuple[float, float], ...], tau: np.ndarray) -> np.ndarray:
    tau = np.asarray(tau, dtype=np.float64)
    out = np.zeros_like(tau)
    for centre, width in bumps:
        out = np.maximum(out, np.exp(-0.5 * ((tau - centre) / width) ** 2))
    return out
