"""What one client connection may cost before the service answers it, and the count of refusals.

The limits themselves are enforced by the HTTP protocol (`http_protocol.py`, a uvicorn
protocol) before a request reaches the app: the size and count of request headers, a
deadline for the request head, a deadline and a minimum rate for the body, an idle
keep-alive timeout, and a cap on open connections below the open-file limit. The app
hands them to the protocol through the lifespan state (`GUARD_KEY`), with the metrics
they are counted in, so any launcher that names the protocol gets the app's settings.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import resource
import time

from prometheus_client import CollectorRegistry, Counter, Gauge

from mplstm.service.settings import ENV_PREFIX, Settings

log = logging.getLogger(__name__)

# Lifespan-state key of the ConnectionGuard (uvicorn hands the state to each protocol).
GUARD_KEY = "mplstm.connections"
# Scope key of the Refusal the protocol answered in the app's place (a request it cut off).
CUT_OFF = "mplstm.cut_off"
# A body may start slowly (TCP slow start, a client that waits for `100 Continue`); its
# average rate is checked from then on, every UPLOAD_CHECK_S.
UPLOAD_RATE_GRACE_S = 5.0
UPLOAD_CHECK_S = 1.0
# Deadlines of connections opened together (a flood) would all fire in one turn of the
# event loop and stall everyone else's requests for tens of ms: each head deadline and
# the first body check come up to this much later, at random, spreading the cut-offs.
DEADLINE_SPREAD_S = 1.0
# After a refusal the connection reads (and drops) what the client still sends, for at
# most this long, so that closing it does not reset the answer before the client reads it.
LINGER_S = 2.0
# Open files kept for everything but client sockets: model files, worker pipes, spooled
# uploads, logs; the larger of this and an eighth of the limit.
_FD_RESERVE = 128
# A refusal is logged at most once per reason in this period, with the count since.
_LOG_EVERY_S = 10.0


@dataclasses.dataclass(frozen=True)
class Refusal:
    """An answer the protocol gives in the app's place: status, stable code, what to do."""

    status: int
    code: str
    detail: str

    @property
    def retry_after(self) -> bool:
        """503s say when to retry, like the app's own."""
        return self.status == 503


@dataclasses.dataclass(frozen=True)
class ConnectionLimits:
    """Per-connection limits (the MPLSTM_* settings of the same names, docs/service.md)."""

    max_connections: int = 4096
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    header_timeout_s: float = 10.0
    upload_timeout_s: float = 60.0
    min_upload_bytes_per_s: int = 1024
    keepalive_timeout_s: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings, open_files: int) -> ConnectionLimits:
        """The settings' limits, the connection cap lowered to fit `open_files` descriptors."""
        room = max(open_files - max(_FD_RESERVE, open_files // 8), 1)
        if settings.max_connections > room:
            log.warning(
                "%sMAX_CONNECTIONS=%d does not fit %d open files; at most %d connections",
                ENV_PREFIX,
                settings.max_connections,
                open_files,
                room,
            )
        own = {f.name: getattr(settings, f.name) for f in dataclasses.fields(cls)}
        return cls(**{**own, "max_connections": min(settings.max_connections, room)})


class HttpMetrics:
    """Connections, refusals, client disconnects and request-body memory, in `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.connections = Gauge(
            "mplstm_http_connections", "Open client connections.", registry=registry
        )
        self.refused = Counter(
            "mplstm_http_refused",
            "Requests and connections the server cut off or refused before the app answered "
            "them, by reason (the error code the client got).",
            ("reason",),
            registry=registry,
        )
        self.client_disconnects = Counter(
            "mplstm_http_client_disconnects",
            "Requests whose client went away before the answer (mostly during the upload).",
            registry=registry,
        )
        self.body_bytes = Gauge(
            "mplstm_http_body_bytes_in_flight",
            "Request-body bytes held for requests in flight (MPLSTM_MAX_INFLIGHT_BYTES bounds it).",
            registry=registry,
        )
        self.body_waiting = Gauge(
            "mplstm_http_body_waiting",
            "Requests waiting for room under MPLSTM_MAX_INFLIGHT_BYTES.",
            registry=registry,
        )


class ConnectionGuard:
    """The limits every connection of one app follows, and where their refusals are counted."""

    def __init__(self, limits: ConnectionLimits, metrics: HttpMetrics) -> None:
        self.limits = limits
        self.metrics = metrics
        self._last_logged: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    @classmethod
    def start(cls, settings: Settings, metrics: HttpMetrics) -> ConnectionGuard:
        """The guard of a starting server: open-file limit raised, the connection cap fitted."""
        limits = ConnectionLimits.from_settings(settings, raise_open_file_limit())
        log.info(
            "clients: at most %d connections, %d header bytes, heads within %g s, bodies "
            "within %g s",
            limits.max_connections,
            limits.max_header_bytes,
            limits.header_timeout_s,
            limits.upload_timeout_s,
        )
        return cls(limits, metrics)

    def refused(self, refusal: Refusal, client: tuple[str, int] | None) -> None:
        """Count a refusal; log it, at most once per reason every few seconds."""
        self.metrics.refused.labels(refusal.code).inc()
        self._log(
            refusal.code,
            f"{refusal.status} {refusal.code} to {_who(client)}: {refusal.detail}",
        )

    def client_left(self, client: tuple[str, int] | None) -> None:
        """A client went away mid-upload before its request reached the app: count it, log it
        (at most once every few seconds)."""
        self.metrics.client_disconnects.inc()
        self._log("client_disconnected", f"{_who(client)} went away mid-upload")

    def _log(self, key: str, line: str) -> None:
        # A flood of slow clients must not flood the log: one line per kind per period.
        count = self._unlogged.get(key, 0) + 1
        now = time.monotonic()
        if now - self._last_logged.get(key, -math.inf) < _LOG_EVERY_S:
            self._unlogged[key] = count
            return
        self._last_logged[key] = now
        self._unlogged[key] = 0
        more = f" (and {count - 1} more since the last such line)" if count > 1 else ""
        log.info("%s%s", line, more)


def _who(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "a client"


def raise_open_file_limit() -> int:
    """Raise this process's soft open-file limit to its hard limit; the soft limit after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft if soft != resource.RLIM_INFINITY else target
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("open-file limit stays at %d (could not raise it to %d: %s)", soft, target, exc)
        return soft
    log.info("open-file limit raised from %d to %d (the hard limit)", soft, target)
    return target
