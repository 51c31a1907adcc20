"""`mplstm serve`: the inference service (FastAPI + uvicorn), settings from MPLSTM_* variables."""

from __future__ import annotations

import argparse
import os
import signal
import types


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve the model packages over HTTP (/v1 video, /v2 Open Inference Protocol) and gRPC",
        description="Serve every model under the models folder. Options override the "
        "MPLSTM_* environment variables (see docs/service.md).",
    )
    parser.add_argument("--models", help="model repository folder (MPLSTM_MODELS_DIR)")
    parser.add_argument("--host", help="address to bind (MPLSTM_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (MPLSTM_PORT, default 8000)")
    parser.add_argument(
        "--grpc-port", type=int, help="gRPC port (MPLSTM_GRPC_PORT, default 8001; 0: off)"
    )
    parser.add_argument(
        "--workers", type=int, help="uvicorn worker processes (MPLSTM_WORKERS, default 1)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from mplstm.cli import CommandError
    from mplstm.service.settings import SettingsError, load_settings

    # Through the environment, so every worker process builds the same settings.
    for option, variable in (
        ("models", "MPLSTM_MODELS_DIR"),
        ("host", "MPLSTM_HOST"),
        ("port", "MPLSTM_PORT"),
        ("grpc_port", "MPLSTM_GRPC_PORT"),
        ("workers", "MPLSTM_WORKERS"),
    ):
        value = getattr(args, option)
        if value is not None:
            os.environ[variable] = str(value)
    try:
        settings = load_settings()
    except SettingsError as exc:
        raise CommandError(str(exc)) from None
    if not settings.models_dir.is_dir():
        raise CommandError(
            f"model repository {settings.models_dir} is not a folder (--models or MPLSTM_MODELS_DIR)"
        )
    from mplstm.service.http_protocol import PROTOCOL

    # Uvicorn re-raises SIGTERM once it has drained (for whoever embeds it); with the
    # default action the process would then die of it (143) after a clean shutdown.
    signal.signal(signal.SIGTERM, _exit_after_drain)
    uvicorn.run(
        "mplstm.service.app:app_from_env",
        factory=True,
        # Uvicorn's httptools protocol with the service's client limits (docs/service.md).
        http=PROTOCOL,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        timeout_graceful_shutdown=settings.graceful_shutdown_s,
        log_level=settings.log_level.lower(),
        # The service logs each request itself, with its request id.
        access_log=False,
        # Live sessions. The WebSocket layer stops a message over twice the limit before
        # buffering it whole (1009); up to that, the service refuses it with its reason.
        ws_max_size=2 * settings.stream_max_message_bytes,
        # Frames are raw pixels or JPEG: deflate would cost more CPU per message than the
        # rest of a step (docs/benchmarks.md, stream).
        ws_per_message_deflate=False,
        # The sans-I/O implementation: 7-12% less CPU per step than the legacy one here.
        ws="websockets-sansio",
    )
    return 0


def _exit_after_drain(signum: int, frame: types.FrameType | None) -> None:
    """SIGTERM outside uvicorn's own handler: before it starts, or re-raised after its drain."""
    raise SystemExit(0)
