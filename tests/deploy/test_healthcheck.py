"""deploy/healthcheck.py, the images' HEALTHCHECK, run as Docker runs it: a process whose
exit status says whether the service on MPLSTM_PORT answers 200 on its readiness route."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from deploy_helpers import REPO, load_script, served_get_paths

SCRIPT = REPO / "deploy" / "healthcheck.py"


class _Readiness(BaseHTTPRequestHandler):
    """Answers the readiness path with the server's current status, anything else 404."""

    def do_GET(self) -> None:
        status = self.server.ready_status if self.path == self.server.ready_path else 404  # type: ignore[attr-defined]
        self.send_response(status)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Readiness)
    httpd.ready_path = "/v2/health/ready"  # type: ignore[attr-defined]
    httpd.ready_status = 503  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def run_check(port: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MPLSTM_PORT": str(port)}
    return subprocess.run(
        [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30
    )


def test_healthcheck_probes_the_readiness_route_the_app_serves() -> None:
    script = load_script(SCRIPT)
    assert script.READY_PATH in served_get_paths()
    assert script.ready_url({"MPLSTM_PORT": "9123"}) == "http://127.0.0.1:9123/v2/health/ready"


def test_healthcheck_fails_until_ready_then_passes(server: ThreadingHTTPServer) -> None:
    port = server.server_address[1]
    not_ready = run_check(port)
    assert not_ready.returncode == 1
    assert "HTTP 503" in not_ready.stderr
    server.ready_status = 200  # type: ignore[attr-defined]
    assert run_check(port).returncode == 0


def test_healthcheck_fails_when_nothing_listens() -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), _Readiness) as probe:
        port = probe.server_address[1]  # free once closed
    result = run_check(port)
    assert result.returncode == 1
    assert str(port) in result.stderr
