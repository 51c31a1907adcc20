"""Live-session test helpers: a tiny live package, a WebSocket client, raw frames, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from service_helpers import FULL_MODEL, LABELS, SIZE, VIEWS, upload
from tiny_models import save_tiny_checkpoint
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from mplstm.service.stream_protocol import encode_frames

LIVE_MODEL = "tiny-live"
FPS = 10.0
IDLE_S = 3.0
MAX_SESSIONS = 6
MAX_MESSAGE_BYTES = 64 * 1024
LIVE_ENV = {
    "MPLSTM_DEFAULT_MODEL": LIVE_MODEL,
    "MPLSTM_MAX_SESSIONS": str(MAX_SESSIONS),
    "MPLSTM_STREAM_IDLE_S": str(IDLE_S),
    "MPLSTM_STREAM_SILENCE_MS": "300",
    "MPLSTM_STREAM_MAX_SKEW_S": "2",
    "MPLSTM_STREAM_MAX_MESSAGE_BYTES": str(MAX_MESSAGE_BYTES),
    "MPLSTM_STREAM_MAX_DELAY_MS": "20",
}


def build_live_packages(repo: Path, work: Path) -> None:
    from mplstm.export.package import build_package

    live = save_tiny_checkpoint(
        work / "live.pt", views=VIEWS, labels=LABELS, fps=FPS, view_dropout=0.2, seed=3
    )
    build_package(live, repo / LIVE_MODEL / "1")
    offline = save_tiny_checkpoint(work / "offline.pt", views=VIEWS, labels=LABELS, seed=4)
    build_package(offline, repo / FULL_MODEL / "1")


def ws_url(server_url: str, model: str = LIVE_MODEL, **query: Any) -> str:
    args = "&".join(f"{k}={v}" for k, v in query.items())
    return f"{server_url.replace('http', 'ws', 1)}/v1/models/{model}/stream" + (
        f"?{args}" if args else ""
    )


def pixels(seed: int) -> np.ndarray:
    """One raw frame of the tiny package's size: uint8 [1, SIZE, SIZE]."""
    return np.random.default_rng(seed).integers(0, 256, (1, SIZE, SIZE), np.uint8)


def frames_message(*frames: tuple[str, float, np.ndarray | bytes], fmt: str = "raw") -> bytes:
    """A binary frames message from (view, t, pixels or encoded bytes)."""
    return encode_frames(
        [(v, t, fmt, p.tobytes() if isinstance(p, np.ndarray) else p) for v, t, p in frames]
    )


@dataclass
class Outcome:
    """What a session got: every message, and how it closed."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    code: int | None = None
    reason: str = ""

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == kind]


async def until_closed(ws: ClientConnection, timeout: float = 30.0) -> Outcome:
    """Read messages until the server closes the session."""
    outcome = Outcome()
    async with asyncio.timeout(timeout):
        with contextlib.suppress(ConnectionClosed):  # raised for a close code other than 1000
            async for text in ws:
                outcome.messages.append(json.loads(text))
    outcome.code, outcome.reason = ws.close_code, ws.close_reason or ""
    return outcome


async def until_final(ws: ClientConnection, finals: int = 1, timeout: float = 30.0) -> Outcome:
    """Read messages until `finals` final answers came (the session stays open)."""
    outcome = Outcome()
    async with asyncio.timeout(timeout):
        while len(outcome.of("final")) < finals:
            outcome.messages.append(json.loads(await ws.recv()))
    return outcome


async def session(server_url: str, **query: Any) -> ClientConnection:
    """An open session whose `ready` message has been read."""
    ws = await connect(ws_url(server_url, **query))
    ready = json.loads(await ws.recv())
    assert ready["type"] == "ready", ready
    return ws


def offline_answer(server_url: str, clip: dict[str, Path]) -> list[dict[str, Any]]:
    """The same live package's /v1 answer on the same files (every label)."""
    r = httpx.post(
        f"{server_url}/v1/models/{LIVE_MODEL}/predict?top_k={len(LABELS)}",
        files=upload(clip),
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def metric(server_url: str, name: str, **labels: str) -> float:
    """One sample of /metrics (0 when absent)."""
    text = httpx.get(f"{server_url}/metrics", timeout=10).text
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", line)
        if match and ",".join(sorted(match.group(1).split(","))) == wanted:
            return float(match.group(2))
    return 0.0


def wait_for_sessions(server_url: str, count: int, timeout: float = 10.0) -> None:
    """Until the server holds `count` live sessions."""
    deadline = time.monotonic() + timeout
    while metric(server_url, "mplstm_stream_sessions", model=LIVE_MODEL) != count:
        assert time.monotonic() < deadline, "sessions were not released"
        time.sleep(0.05)


def same_predictions(a: list[dict[str, Any]], b: list[dict[str, Any]], atol: float = 1e-4) -> None:
    """Two prediction lists name the same labels in order, scores within atol."""
    assert [p["label"] for p in a] == [p["label"] for p in b], (a, b)
    np.testing.assert_allclose([p["score"] for p in a], [p["score"] for p in b], rtol=0, atol=atol)
