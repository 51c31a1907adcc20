"""A real service process for tests: `mplstm serve` / uvicorn in a subprocess on loopback."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from mplstm.service.http_protocol import PROTOCOL

_START_TIMEOUT_S = 90.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A service subprocess on a loopback port; its stdout/stderr go to `log_path`."""

    models_dir: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    command: str = "uvicorn"  # or "mplstm" (the `mplstm serve` entry point)
    # (soft, hard) limit of open files the server starts with; None: the test runner's.
    open_files: tuple[int, int] | None = None
    port: int = 0
    grpc_port: int = 0
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_target(self) -> str:
        """host:port of its gRPC server (tritonclient.grpc's `url`)."""
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, *, wait_ready: bool = True) -> Server:
        self.port = free_port()
        # A port of its own: the default (8001) would clash between servers.
        self.grpc_port = int(self.env.get("MPLSTM_GRPC_PORT") or free_port())
        # Only this server's MPLSTM_* settings, none inherited from the test runner.
        env = {k: v for k, v in os.environ.items() if not k.startswith("MPLSTM_")}
        env.update(
            {
                "MPLSTM_MODELS_DIR": str(self.models_dir),
                "MPLSTM_GRPC_PORT": str(self.grpc_port),
                **self.env,
            }
        )
        if self.command == "mplstm":
            args = [sys.executable, "-m", "mplstm", "serve", "--port", str(self.port)]
        else:
            args = [
                sys.executable, "-m", "uvicorn", "--factory", "mplstm.service.app:app_from_env",
                "--host", "127.0.0.1", "--port", str(self.port), "--http", PROTOCOL,
            ]  # fmt: skip
        with self.log_path.open("wb") as log:  # the child keeps its own copy of the handle
            # A preexec_fn makes Popen fork() rather than vfork(), which runs gRPC's fork
            # handlers in the child (this process holds gRPC clients): only when needed.
            limits = self._limits if self.open_files is not None else None
            self.process = subprocess.Popen(
                args, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=limits
            )
        try:
            self.wait("/v2/health/ready" if wait_ready else "/v2/health/live")
        except BaseException:
            self.stop()
            raise
        return self

    def _limits(self) -> None:
        """In the child, before exec: the open-file limits it starts with."""
        assert self.open_files is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, self.open_files)

    def wait(self, path: str) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not up in {_START_TIMEOUT_S} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM, then wait for a graceful exit; returns the exit status."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def healthy(self) -> bool:
        return httpx.get(self.url + "/v2/health/ready", timeout=5).status_code == 200
