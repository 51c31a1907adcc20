"""The FastAPI app: `create_app(settings)`; `app_from_env()` is the uvicorn factory.

Start-up (lifespan) starts the gRPC server (`grpc_server.py`) beside the HTTP app, loads
and warms up every model, then the server reports ready. On SIGTERM uvicorn stops
accepting connections and waits for in-flight requests, and the gRPC server refuses new
calls; the lifespan's shutdown then lets the gRPC calls in flight finish and drains every
batcher and the worker processes.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.requests import ClientDisconnect

from mplstm import __version__
from mplstm.service.bodies import BodyBudget, client_disconnected
from mplstm.service.connections import GUARD_KEY, ConnectionGuard, HttpMetrics
from mplstm.service.dataplane import DataPlane
from mplstm.service.errors import ClientDisconnectedError, install_error_handlers
from mplstm.service.gallery.gallery import open_gallery
from mplstm.service.gallery.routes import install as install_gallery
from mplstm.service.grpc_server import GrpcServer
from mplstm.service.limits import BodyLimitMiddleware
from mplstm.service.logs import RequestIdMiddleware, configure_logging
from mplstm.service.metrics import ServiceMetrics
from mplstm.service.pipeline import Services
from mplstm.service.repository import ModelRepository
from mplstm.service.routes import open_router, router
from mplstm.service.settings import Settings, load_settings
from mplstm.service.stream_route import stream_router
from mplstm.service.video_workers import VideoWorkers

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    """The service app for `settings`; models load when the app starts (lifespan)."""
    configure_logging(settings.log_format, settings.log_level)
    admin_keys = settings.load_admin_keys()
    api_keys = settings.load_api_keys() | admin_keys  # an admin key may do everything

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        if not api_keys:
            log.warning(
                "authentication is OFF: no MPLSTM_API_KEYS or MPLSTM_API_KEY_FILE; anyone who "
                "can reach this port can use it"
            )
        metrics = ServiceMetrics()
        http_metrics = HttpMetrics(metrics.registry)
        guard = ConnectionGuard.start(settings, http_metrics)
        workers = await VideoWorkers.open(settings.decode_workers, settings.decode_limits())
        repository = ModelRepository(settings, metrics, workers)
        budget = BodyBudget(settings.max_inflight_bytes, http_metrics)
        app.state.services = services = Services(
            settings, repository, workers, metrics, budget, http_metrics
        )
        app.state.dataplane = plane = DataPlane(services)
        try:
            # Bound before the models load, so a taken port fails start-up at once; it
            # answers NOT_SERVING (health) and UNAVAILABLE (inference) until they are ready.
            grpc_server = await GrpcServer.start(plane, settings, api_keys)
        except BaseException:
            await workers.close()
            raise
        await repository.load_all()
        await open_gallery(app.state.gallery, repository.models(), metrics.registry)
        await grpc_server.readiness_changed(repository.ready)
        # What start-up loaded lives as long as the process: frozen out of the cyclic
        # GC's sight, full collections stop walking it; they had paused every request in
        # flight (docs/benchmarks.md, design figures).
        gc.freeze()
        log.info("listening; ready=%s", repository.ready)
        try:
            # The connection limits, for the HTTP protocol (http_protocol.py) of each connection.
            yield {GUARD_KEY: guard}
        finally:
            # gRPC stopped accepting at SIGTERM already (GrpcServer); here its calls in
            # flight finish, then the batchers they wait on drain.
            await grpc_server.stop()
            log.info("shutting down: draining batchers")
            await repository.close()
            await app.state.gallery.close()
            await workers.close()
            log.info("shut down")

    app = FastAPI(
        title="mplstm-serve",
        version=__version__,
        description="Multi-view video recognition with Multi-Perspective LSTMs: "
        "/v1 video in, /v2 Open Inference Protocol tensors in.",
        lifespan=lifespan,
    )
    app.state.api_keys = api_keys
    app.state.admin_keys = admin_keys
    install_error_handlers(app)
    for disconnect in (ClientDisconnectedError, ClientDisconnect):
        app.add_exception_handler(disconnect, client_disconnected)
    app.include_router(open_router)
    app.include_router(router)
    app.include_router(stream_router)  # live sessions (WebSocket): docs/streaming.md
    install_gallery(app, settings.gallery_url)
    # Outermost last: request ids wrap everything, the body limit wraps the routes.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(RequestIdMiddleware)
    return app


def app_from_env() -> FastAPI:
    """Uvicorn factory (`uvicorn --factory mplstm.service.app:app_from_env`): settings from MPLSTM_*."""
    return create_app(load_settings())
