"""The gRPC server: the Open Inference Protocol, health and reflection, beside the HTTP app.

It runs in the HTTP app's process and event loop (grpc.aio), so both protocols share
the model repository, the batchers and the metrics; `MPLSTM_GRPC_PORT` (Triton's 8001
by default, 0: off) on `MPLSTM_HOST`. It serves:

- `inference.GRPCInferenceService` (`grpc_servicer.py`), for `tritonclient.grpc` and
  KServe's gRPC clients;
- `grpc.health.v1.Health`, for Kubernetes' built-in gRPC probes: SERVING once every
  model is loaded and warmed up (the service "" and the inference service alike),
  NOT_SERVING before that and from SIGTERM on;
- server reflection (grpcurl, grpcui).

Messages over `MPLSTM_MAX_UPLOAD_BYTES` are refused by gRPC itself with
RESOURCE_EXHAUSTED, from the length prefix, before the message is parsed. On SIGTERM
the server stops taking new calls at once (while uvicorn drains HTTP); the app's
shutdown then gives the calls in flight `MPLSTM_GRACEFUL_SHUTDOWN_S` to finish.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from types import FrameType
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tritonclient.grpc import service_pb2_grpc

from mplstm.service.dataplane import DataPlane
from mplstm.service.grpc_servicer import SERVICE_NAME, InferenceServicer
from mplstm.service.settings import ENV_PREFIX, Settings, SettingsError

log = logging.getLogger(__name__)

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class GrpcServer:
    """The running gRPC server (or none, when `MPLSTM_GRPC_PORT` is 0)."""

    def __init__(
        self, server: grpc.aio.Server | None, health_servicer: Any, port: int, grace_s: float
    ) -> None:
        self.server = server
        self.port = port
        self._health = health_servicer
        self._grace_s = grace_s
        self._stopping: asyncio.Task[None] | None = None
        self._previous_handler: Any = None

    @classmethod
    async def start(
        cls, plane: DataPlane, settings: Settings, api_keys: frozenset[str]
    ) -> GrpcServer:
        """Bind `MPLSTM_GRPC_PORT` and serve; SettingsError naming the variable if it cannot."""
        if settings.grpc_port == 0:
            log.info("gRPC is off (%sGRPC_PORT=0)", ENV_PREFIX)
            return cls(None, None, 0, settings.graceful_shutdown_s)
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", settings.max_upload_bytes),
                ("grpc.max_send_message_length", -1),
                # Uvicorn worker processes (MPLSTM_WORKERS > 1) share the port, as they
                # share the HTTP one; a single process must own it, or a second server
                # on the same port would silently take half the calls.
                ("grpc.so_reuseport", int(settings.workers > 1)),
            ]
        )
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(plane, api_keys), server
        )
        health_servicer = health.aio.HealthServicer()
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, _NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        address = _address(settings.host, settings.grpc_port)
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise SettingsError(
                f"{ENV_PREFIX}GRPC_PORT: cannot listen on {address} ({exc}); is the port taken?"
            ) from None
        await server.start()
        grpc_server = cls(server, health_servicer, port, settings.graceful_shutdown_s)
        plane.on_readiness_change(grpc_server.readiness_changed)
        grpc_server._stop_on_sigterm()
        log.info("gRPC listening on %s", _address(settings.host, port))
        return grpc_server

    async def readiness_changed(self, ready: bool) -> None:
        """Report every model loaded and warmed up (or not) to the health service."""
        if self._health is not None:
            for name in ("", SERVICE_NAME):
                await self._health.set(name, _SERVING if ready else _NOT_SERVING)

    def begin_shutdown(self) -> None:
        """Health NOT_SERVING, new calls refused; calls in flight get the grace period."""
        if self.server is None or self._stopping is not None:
            return
        log.info("gRPC: refusing new calls; %d s for those in flight", self._grace_s)
        self._stopping = asyncio.get_running_loop().create_task(self._shutdown())

    async def _shutdown(self) -> None:
        assert self.server is not None
        await self._health.enter_graceful_shutdown()
        await self.server.stop(self._grace_s)

    async def stop(self) -> None:
        """Stop (if SIGTERM has not begun it) and wait until every call has ended."""
        if self.server is None:
            return
        self.begin_shutdown()
        assert self._stopping is not None
        await self._stopping
        self._restore_sigterm()
        log.info("gRPC stopped")

    def _stop_on_sigterm(self) -> None:
        """Begin the shutdown at SIGTERM, then let the handler already there (uvicorn's) run."""
        if threading.current_thread() is not threading.main_thread():
            return  # the app's shutdown still stops the server
        loop = asyncio.get_running_loop()
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            loop.call_soon_threadsafe(self.begin_shutdown)
            if callable(previous):
                previous(signum, frame)

        self._previous_handler = previous
        signal.signal(signal.SIGTERM, on_sigterm)

    def _restore_sigterm(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
