"""A throwaway PostgreSQL cluster for the gallery's tests and bench/gallery.py.

initdb in a temp dir, started on a free loopback port. PostgreSQL refuses to run as root,
so as root the cluster runs as the `postgres` system user (runuser); as anyone else, as
that user. Where no cluster can start (no server binaries: `make postgres` installs
them) `ClusterUnavailable` says why, and the tests skip with it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/local/bin", "/usr/lib/postgresql/16/bin")


def _binary(name: str) -> str | None:
    for folder in _BIN_DIRS:
        if (Path(folder) / name).is_file():
            return str(Path(folder) / name)
    return shutil.which(name)


class ClusterUnavailable(RuntimeError):
    """No cluster can start here; the message says why."""


@dataclass
class Cluster:
    """A running cluster: its folder, port, and the URL of its `postgres` database."""

    folder: Path
    port: int
    user: str | None  # the OS user it runs as (None: this process's)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        return subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        result = self._run(
            _binary("pg_ctl") or "pg_ctl", "-D", str(self.folder / "data"), "-w", "-t", "60",
            "-l", str(self.folder / "server.log"),
            "-o", f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1",
            "start",
        )  # fmt: skip
        if result.returncode:
            raise ClusterUnavailable(f"pg_ctl start failed: {result.stderr or result.stdout}")

    def stop(self, mode: str = "fast") -> None:
        self._run(
            _binary("pg_ctl") or "pg_ctl", "-D", str(self.folder / "data"), "-w", "-m", mode, "stop"
        )

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


def start_cluster() -> Cluster:
    """initdb and start a cluster; ClusterUnavailable saying why when it cannot."""
    initdb = _binary("initdb")
    if initdb is None or _binary("pg_ctl") is None:
        raise ClusterUnavailable("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    user = None
    if os.geteuid() == 0:
        user = "postgres"
        if subprocess.run(["id", "-u", user], capture_output=True).returncode:
            raise ClusterUnavailable("running as root and there is no `postgres` user to run as")
    folder = Path(tempfile.mkdtemp(prefix="mplstm-pg-"))
    if user:
        shutil.chown(folder, user)
    cluster = Cluster(folder, free_port(), user)
    result = cluster._run(
        initdb, "-D", str(folder / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8",
        "--no-sync",
    )  # fmt: skip
    if result.returncode:
        shutil.rmtree(folder, ignore_errors=True)
        raise ClusterUnavailable(f"initdb failed: {result.stderr or result.stdout}")
    try:
        cluster.start()
    except ClusterUnavailable:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return cluster
