"""Training augmentation of a multi-view clip: random crop, multi-view flip, time masking.

All three keep the clip's shape, so the model sees train and test input through the one
preprocessing path. Flipping needs the cameras' yaw angles: a horizontally flipped
image from yaw +a is what a camera at yaw -a sees (a face is near mirror-symmetric), so a
flip mirrors every view AND moves it into the slot of its mirrored camera. Without the
angles, or when a view has no mirrored partner, a flip would put a left view where the
model expects a right one, so it is refused (`flip_permutation` returns None).
"auto" flips only for lip reading: a mirrored word is the same word, but a mirrored face
need not be the same identity (the synthetic speakers differ by teeth gaps left or right
of centre), so identity and unnamed tasks train unflipped unless told `flip = "on"`.
The settings (`AugmentConfig`, [augment]) live in config.py beside the other sections, so
the whole schema of a training config is read and checked in one place.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mplstm.training.config import AugmentConfig


def flip_permutation(yaws: Sequence[float] | None, tolerance: float = 1.0) -> np.ndarray | None:
    """perm with perm[v] = the view whose yaw is -yaw[v]; None when some view has no mirror."""
    if yaws is None:
        return None
    yaws_a = np.asarray(yaws, dtype=float)
    distance = np.abs(yaws_a[:, None] + yaws_a[None, :])  # |yaw_v - (-yaw_u)|
    perm = distance.argmin(axis=1)
    if np.any(distance[np.arange(len(yaws_a)), perm] > tolerance):
        return None
    return perm


class Augment:
    """Callable transform for `ClipDataset`: (frames, view mask, rng) -> (frames, view mask)."""

    def __init__(
        self,
        config: AugmentConfig,
        view_yaws: Sequence[float] | None = None,
        task: str | None = None,
    ) -> None:
        self.config = config
        wanted = config.flip == "on" or (config.flip == "auto" and task == "lipreading")
        self.flip_perm = flip_permutation(view_yaws) if wanted else None
        if config.flip == "on" and self.flip_perm is None:
            raise ValueError(
                "augment.flip = 'on' needs every view's yaw angle (synth.json) and a mirrored "
                f"camera for each view; got angles {view_yaws}. Use 'auto' or 'off'."
            )

    @property
    def flips(self) -> bool:
        return self.flip_perm is not None

    def __call__(
        self, frames: np.ndarray, view_mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        if cfg.crop_pad:
            frames = random_crop(frames, cfg.crop_pad, rng)
        if self.flip_perm is not None and rng.random() < 0.5:
            frames, view_mask = mirror_views(frames, view_mask, self.flip_perm)
        if cfg.time_mask:
            frames = mask_time(frames, int(rng.integers(0, cfg.time_mask + 1)), rng)
        return frames, view_mask


def random_crop(frames: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    """Shift each view of [V, T, C, H, W] by a random offset in [-pad, pad], edges repeated."""
    v, _, _, h, w = frames.shape
    padded = np.pad(frames, ((0, 0), (0, 0), (0, 0), (pad, pad), (pad, pad)), mode="edge")
    dy, dx = rng.integers(0, 2 * pad + 1, size=(2, v))
    return np.stack([padded[i, :, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(v)])


def mirror_views(
    frames: np.ndarray, view_mask: np.ndarray, perm: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Flip every view horizontally and move it into its mirrored camera's slot."""
    return frames[perm, ..., ::-1], view_mask[perm]


def mask_time(frames: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """Replace `length` consecutive frames (same in every view) by each view's mean frame."""
    t = frames.shape[1]
    length = min(length, t - 1)
    if length <= 0:
        return frames
    start = int(rng.integers(0, t - length + 1))
    out = frames.copy()
    out[:, start : start + length] = frames.mean(axis=1, keepdims=True).round().astype(np.uint8)
    return out
