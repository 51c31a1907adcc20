"""Service test fixtures: real model packages, real video clips, real servers over loopback.

Packages are exported once per session from tiny untrained models (tests may import
torch to build them; the service itself never does).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from live_server import Server
from service_helpers import SHARED_ENV, build_packages, write_clip
from stream_helpers import LIVE_ENV, build_live_packages


@pytest.fixture(scope="session")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository with two packages: `tiny` (missing views allowed) and `tiny-full`."""
    work = tmp_path_factory.mktemp("packages")
    build_packages(work / "models", work)
    return work / "models"


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Path]]:
    """Four different three-view clips."""
    root = tmp_path_factory.mktemp("clips")
    return [write_clip(root / f"clip{i}", seed=i) for i in range(4)]


@pytest.fixture(scope="session")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The shared server: both packages, tight limits (`SHARED_ENV`), no API keys."""
    srv = Server(repo, tmp_path_factory.mktemp("server") / "server.log", dict(SHARED_ENV))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def batcher_server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The shared server's settings, but the video route infers through the dynamic batcher."""
    env = {**SHARED_ENV, "MPLSTM_VIDEO_INFERENCE": "main"}
    srv = Server(repo, tmp_path_factory.mktemp("batcher-server") / "server.log", env)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def repo_copy(repo: Path, tmp_path: Path) -> Path:
    """A private copy of the repository, for tests that change it."""
    return Path(shutil.copytree(repo, tmp_path / "models"))


@pytest.fixture(scope="session")
def live_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with a tiny live package (`tiny-live`, 10 steps/s) and an offline one."""
    work = tmp_path_factory.mktemp("live-packages")
    build_live_packages(work / "models", work)
    return work / "models"


@pytest.fixture(scope="session")
def live_server(live_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`mplstm serve` of the live repository with small session limits (`LIVE_ENV`)."""
    # `mplstm serve`: its WebSocket settings (sans-I/O implementation, no deflate, size cap).
    log = tmp_path_factory.mktemp("live-server") / "server.log"
    srv = Server(live_repo, log, dict(LIVE_ENV), command="mplstm")
    srv.start()
    yield srv
    srv.stop()
