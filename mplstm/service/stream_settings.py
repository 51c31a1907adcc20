"""The `MPLSTM_*` settings of live sessions (docs/streaming.md), part of the service's."""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings

from mplstm.service.sessions import SessionLimits

_MIB = 2**20
# The highest camera rate a session expects: the jitter buffer must outlast a silent view.
MAX_CAMERA_FPS = 240


class StreamSettings(BaseSettings):
    """Limits and timing of WebSocket live sessions (prefix `MPLSTM_`)."""

    # Sessions each live model holds at once; more are told to retry later (1013).
    max_sessions: int = Field(64, gt=0, le=100_000)
    # A session that sends nothing for this long is closed (1008).
    stream_idle_s: float = Field(30.0, gt=0)
    # A camera that sends nothing for this long (stream time) is masked for the steps it misses.
    stream_silence_ms: float = Field(300.0, gt=0)
    # Frames further than this from the session's clock are refused (1007).
    stream_max_skew_s: float = Field(2.0, gt=0)
    # Frames buffered per view (the jitter buffer); a full one stops reading the socket.
    stream_buffer_frames: int = Field(96, gt=1, le=100_000)
    # One WebSocket message at most (1009).
    stream_max_message_bytes: int = Field(1 * _MIB, gt=0, le=16 * _MIB)
    stream_max_frames_per_message: int = Field(64, gt=0)
    # Steps of all sessions run together: at most this many per inference, waiting at most
    # max delay for a fuller batch.
    stream_max_batch: int = Field(64, gt=0, le=4096)
    stream_max_delay_ms: float = Field(2.0, ge=0, le=1000)
    # Running predictions every K steps by default (a session may ask for its own `every`).
    stream_update_every: int = Field(1, gt=0)
    # ONNX Runtime threads of a live model's step session (0: ONNX Runtime's default). One
    # leaves the other cores to the event loop, which parses every session's messages; a
    # step batch is small, so a second thread saves little (docs/benchmarks.md, stream).
    stream_intra_op_threads: int = Field(1, ge=0, le=256)

    @model_validator(mode="after")
    def _buffer_outlasts_silence(self) -> StreamSettings:
        needed = int(self.stream_silence_ms / 1000 * MAX_CAMERA_FPS) + 2
        if self.stream_buffer_frames < needed:
            raise ValueError(
                f"MPLSTM_STREAM_BUFFER_FRAMES={self.stream_buffer_frames} cannot hold "
                f"MPLSTM_STREAM_SILENCE_MS={self.stream_silence_ms:g} of a {MAX_CAMERA_FPS} fps "
                f"camera: use at least {needed}, or a shorter silence"
            )
        return self

    def session_limits(self, update_every: int | None, top_k: int) -> SessionLimits:
        """A session's limits: these settings and what its client asked for."""
        return SessionLimits(
            silence_s=self.stream_silence_ms / 1000,
            max_skew_s=self.stream_max_skew_s,
            buffer_frames=self.stream_buffer_frames,
            update_every=update_every or self.stream_update_every,
            top_k=top_k,
        )
