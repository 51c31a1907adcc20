"""The `ClipError` family: every way a clip can be refused, each with a stable code.

The service maps `http_status` to its answer and the batch scorer writes `code`
and the message into an error row, so a message must tell the user what to fix.
"""

from __future__ import annotations

from collections.abc import Sequence

from mplstm.core.camera_checks import ViewFailure


class ClipError(ValueError):
    """A clip (or one view of it) that cannot be turned into model input."""

    code = "bad_clip"
    http_status = 422

    def __init__(self, message: str, *, view: str | None = None) -> None:
        self.view = view
        super().__init__(f"view {view!r}: {message}" if view else message)

    def __reduce__(self) -> tuple[object, ...]:
        # Raised in a decode worker process and re-raised in the parent: the default
        # would call cls(text) and drop `view`.
        return (_restore, (type(self), str(self), self.view))


def _restore(cls: type[ClipError], text: str, view: str | None) -> ClipError:
    error = cls.__new__(cls)
    ValueError.__init__(error, text)
    error.view = view
    return error


class UnreadableContainerError(ClipError):
    """Not a media container FFmpeg can open (zero bytes, random bytes, text, truncated header)."""

    code = "unreadable_container"
    http_status = 415


class StillImageError(UnreadableContainerError):
    """A still image (PNG, JPEG, ...) sent as a video: FFmpeg opens it as a one-frame stream."""

    code = "still_image"
    http_status = 415


class NoVideoStreamError(ClipError):
    """The container opens but holds no video stream (audio only, subtitles)."""

    code = "no_video_stream"
    http_status = 415


class CorruptVideoError(ClipError):
    """The stream starts but cannot be decoded to the end, or yields no frame."""

    code = "corrupt_video"
    http_status = 422


class ClipTooLongError(ClipError):
    """More frames or a longer duration than the limits allow."""

    code = "clip_too_long"
    http_status = 413


class ClipTooLargeError(ClipError):
    """More bytes or a larger frame (width x height) than the limits allow."""

    code = "clip_too_large"
    http_status = 413


class ViewsOutOfSyncError(ClipError):
    """The views' durations differ by more than the tolerance, or share no time range."""

    code = "views_out_of_sync"
    http_status = 422


class ViewNamesError(ClipError):
    """Wrong number of views, unknown, duplicate or missing view names."""

    code = "bad_views"
    http_status = 422


class CameraFailedError(ClipError):
    """A view failed its camera check and the model cannot do without it, or none is left."""

    code = "camera_failed"
    http_status = 422

    def __init__(self, message: str, failures: Sequence[ViewFailure]) -> None:
        self.failures = tuple(failures)
        # The message names every failed view itself: no "view 'x':" prefix.
        self.view = self.failures[0].view if self.failures else None
        ValueError.__init__(self, message)

    def __reduce__(self) -> tuple[object, ...]:
        return (_restore_camera, (str(self), self.view, self.failures))


def _restore_camera(text: str, view: str | None, failures: tuple[ViewFailure, ...]) -> ClipError:
    error = _restore(CameraFailedError, text, view)
    error.failures = failures  # type: ignore[attr-defined]
    return error
