"""What a worker process runs: decode a clip, or decode clips and infer them where decoded.

The service and the batch scorer both send these to the one worker pool
(`mplstm.core.worker_pool`): `decode` where inference runs in the main process
(`Placement.MAIN`), `decode_and_infer` where each worker infers with its own CPU
session (`Placement.WORKERS`). A clip that cannot be decoded comes back as its error,
never as an exception, so one bad clip does not fail the others of a batch; the
caller decides (the service answers with the error's status, the scorer writes an
error row). Only probabilities, never frames, come back from `decode_and_infer`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mplstm.core.camera_checks import ViewFailure
from mplstm.core.errors import CorruptVideoError
from mplstm.core.package import ModelPackage
from mplstm.core.preprocess import PreprocessConfig, ViewSource, load_clip
from mplstm.core.worker_pool import CRASH_ATTEMPTS
from mplstm.inference.backend import Backend, dummy_batch, shape_groups
from mplstm.inference.sessions import worker_session

ClipViews = Mapping[str, ViewSource]
# Fault injection for tests: called in the worker with a clip's views before decoding.
BeforeDecode = Callable[[ClipViews], None]


class InferenceError(RuntimeError):
    """Inference failed on clips that decoded: a server fault, not the input's."""


@dataclass(frozen=True)
class Decoded:
    """A decoded clip (frames and mask), or the error that stopped its decoding."""

    view_names: tuple[str, ...]
    frames: np.ndarray | None  # uint8 [V, T, C, H, W]
    view_mask: np.ndarray | None  # bool [V]
    decode_s: float  # in whichever process decoded it
    error: Exception | None = None  # a ClipError for bad input; anything else is a bug
    views_dropped: tuple[ViewFailure, ...] = ()  # failed their camera check, masked

    def clip(self) -> tuple[np.ndarray, np.ndarray]:
        """(frames, view_mask); raises the decoding error if there is one."""
        if self.error is not None:
            raise self.error
        assert self.frames is not None and self.view_mask is not None
        return self.frames, self.view_mask


@dataclass(frozen=True)
class Scored:
    """One clip's outcome: probabilities and views used, or the error that stopped it."""

    view_names: tuple[str, ...]
    view_mask: np.ndarray | None  # bool [V]
    probabilities: np.ndarray | None  # float32 [classes]
    decode_s: float
    inference_s: float  # of the whole batch it ran in
    batch_size: int  # clips in that batch
    error: Exception | None = None
    views_dropped: tuple[ViewFailure, ...] = ()  # failed their camera check, masked
    embedding: np.ndarray | None = None  # float32 [E], models with an embedding output

    @property
    def views_used(self) -> tuple[str, ...]:
        """The views that were present and used, in model order."""
        if self.view_mask is None:
            return ()
        return tuple(n for n, used in zip(self.view_names, self.view_mask, strict=True) if used)

    def raise_error(self) -> None:
        """Raise the clip's error, if it has one."""
        if self.error is not None:
            raise self.error


def decode(
    views: ClipViews, config: PreprocessConfig, before: BeforeDecode | None = None
) -> Decoded:
    """`load_clip` on one clip's views; a failure comes back as the error, not raised."""
    if before is not None:
        before(views)
    names = config.view_names or tuple(views)
    start = time.perf_counter()
    try:
        clip = load_clip(views, config)
    except Exception as exc:  # a ClipError, or a decoder bug: fails this clip, not the others
        return Decoded(names, None, None, time.perf_counter() - start, exc)
    return Decoded(
        clip.view_names,
        clip.frames,
        clip.view_mask,
        time.perf_counter() - start,
        views_dropped=clip.views_dropped,
    )


def infer_decoded(decoded: Sequence[Decoded], backend: Backend) -> list[Scored]:
    """Infer the clips that decoded as one batch; the others keep their errors."""
    good = [d for d in decoded if d.error is None]
    probabilities: list[np.ndarray | None] = [None] * len(good)
    embeddings: list[np.ndarray | None] = [None] * len(good)
    seconds = 0.0
    if good:
        start = time.perf_counter()
        # One run per clip length (live packages sample at a fixed rate: T varies).
        for group in shape_groups([d.frames for d in good]):
            output = backend.infer(
                np.stack([good[i].frames for i in group]),
                np.stack([good[i].view_mask for i in group]),
            )
            for row, i in enumerate(group):
                probabilities[i] = output.probabilities[row]
                if output.embedding is not None:
                    embeddings[i] = output.embedding[row]
        seconds = time.perf_counter() - start
    rows = iter(range(len(good)))
    out = []
    for d in decoded:
        row = None if d.error is not None else next(rows)
        out.append(
            Scored(
                d.view_names,
                d.view_mask,
                None if row is None else probabilities[row],
                d.decode_s,
                seconds,
                len(good),
                d.error,
                d.views_dropped,
                None if row is None else embeddings[row],
            )
        )
    return out


def decode_and_infer(
    clips: Sequence[ClipViews],
    config: PreprocessConfig,
    package: ModelPackage,
    threads: int,
    keep: int,
    before: BeforeDecode | None = None,
) -> list[Scored]:
    """In a worker: decode the clips here and infer them as one batch with this worker's session.

    `threads`: ONNX Runtime threads of the session; `keep`: sessions this worker keeps.
    """
    decoded = [decode(views, config, before) for views in clips]
    try:
        return infer_decoded(decoded, worker_session(package, threads, keep))
    except Exception as exc:  # whatever the runtime raises; it must pickle across
        raise InferenceError(f"{type(exc).__name__}: {exc}") from None


def warm_up_worker(package: ModelPackage, threads: int, keep: int) -> None:
    """In a worker: open the session for `package` and run a dummy clip through it."""
    worker_session(package, threads, keep).infer(*dummy_batch(package.manifest))


def decoder_crashed(retry: str) -> CorruptVideoError:
    """The error of a clip that killed its decode worker each time it ran; `retry` says how to resend."""
    return CorruptVideoError(
        f"the video decoder crashed on this clip {CRASH_ATTEMPTS} times; re-encode the views "
        f"(e.g. ffmpeg -i in.mp4 -c:v libx264 out.mp4) and {retry}"
    )
