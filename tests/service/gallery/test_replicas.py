"""Two replicas (two server processes) on one PostgreSQL; the database going down and back."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from gallery_helpers import ADMIN_KEY, IDENTITY, auth, cluster_or_skip, new_database, server_env
from live_server import Server
from service_helpers import upload, write_clip

from bench.pg_cluster import Cluster

# How long a test waits for something that should take about a second: a generous bound
# for a loaded machine, not a measurement.
EVENTUALLY_S = 30.0


def eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + EVENTUALLY_S
    while not check():
        assert time.monotonic() < deadline, f"not within {EVENTUALLY_S} s: {what}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Path]]:
    root = tmp_path_factory.mktemp("replica-clips")
    return [write_clip(root / f"c{i}", seed=400 + i) for i in range(2)]


def _start(repo: Path, url: str, log: Path) -> Server:
    return Server(repo, log, server_env(url)).start()


def _identify(server: Server, clip: dict[str, Path]) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/models/{IDENTITY}/identify?top_k=3&threshold=0.5",
        files=upload(clip), headers=auth(), timeout=60,
    )  # fmt: skip


def _people(server: Server, clip: dict[str, Path]) -> set[str]:
    response = _identify(server, clip)
    return (
        {m["person_id"] for m in response.json()["matches"]}
        if response.status_code == 200
        else set()
    )


def test_two_replicas_see_each_others_enrolments_and_deletions(
    identity_repo: Path, pg: Cluster, clips, tmp_path: Path
) -> None:
    url = new_database(pg)
    a = _start(identity_repo, url, tmp_path / "a.log")
    b = _start(identity_repo, url, tmp_path / "b.log")
    try:
        enrolled = httpx.post(
            f"{a.url}/v1/models/{IDENTITY}/gallery/grace", files=upload(clips[0]),
            data={"display_name": "Grace"}, headers=auth(ADMIN_KEY), timeout=60,
        )  # fmt: skip
        assert enrolled.status_code == 201, enrolled.text
        eventually(lambda: "grace" in _people(b, clips[0]), "replica b matches a's enrolment")
        assert _identify(b, clips[0]).json()["decision"] == "grace"
        listed = httpx.get(f"{b.url}/v1/models/{IDENTITY}/gallery", headers=auth(), timeout=30)
        assert [p["display_name"] for p in listed.json()["people"]] == ["Grace"]
        # The other way, and the right to be forgotten reaches every replica.
        deleted = httpx.delete(
            f"{b.url}/v1/models/{IDENTITY}/gallery/grace", headers=auth(ADMIN_KEY), timeout=30
        )
        assert deleted.status_code == 200
        eventually(lambda: "grace" not in _people(a, clips[0]), "replica a forgets grace")
    finally:
        a.stop()
        b.stop()


@pytest.fixture
def own_cluster() -> Iterator[Cluster]:
    """A cluster of this test's own: it is stopped and started again."""
    cluster = cluster_or_skip()
    yield cluster
    cluster.remove()


def test_database_down_is_503_for_the_gallery_only_and_it_recovers(
    identity_repo: Path, own_cluster: Cluster, clips, tmp_path: Path
) -> None:
    server = _start(identity_repo, own_cluster.url, tmp_path / "server.log")
    gallery = f"{server.url}/v1/models/{IDENTITY}/gallery"
    try:
        assert (
            httpx.post(
                f"{gallery}/heidi", files=upload(clips[1]), headers=auth(ADMIN_KEY), timeout=60
            ).status_code
            == 201
        )
        own_cluster.stop("fast")
        eventually(lambda: _identify(server, clips[1]).status_code == 503, "identify answers 503")
        for response in (
            _identify(server, clips[1]),
            httpx.get(gallery, headers=auth(), timeout=30),
            httpx.post(
                f"{gallery}/ivan", files=upload(clips[0]), headers=auth(ADMIN_KEY), timeout=60
            ),
        ):
            assert response.status_code == 503, response.text
            assert response.json()["error"] == "gallery_unavailable"
            assert int(response.headers["retry-after"]) >= 1
        predicted = httpx.post(
            f"{server.url}/v1/predict", files=upload(clips[0]), headers=auth(), timeout=60
        )
        assert predicted.status_code == 200, predicted.text
        assert httpx.get(f"{server.url}/v2/health/ready", timeout=30).status_code == 200

        own_cluster.start()
        eventually(lambda: _identify(server, clips[1]).status_code == 200, "the gallery recovers")
        assert _identify(server, clips[1]).json()["decision"] == "heidi"
        assert (
            httpx.post(
                f"{gallery}/ivan", files=upload(clips[0]), headers=auth(ADMIN_KEY), timeout=60
            ).status_code
            == 201
        )
    finally:
        server.stop()


def test_a_server_starts_with_its_database_down_and_serves_the_gallery_once_it_is_up(
    identity_repo: Path, own_cluster: Cluster, clips, tmp_path: Path
) -> None:
    own_cluster.stop("fast")
    server = _start(identity_repo, own_cluster.url, tmp_path / "server.log")
    try:
        assert _identify(server, clips[0]).status_code == 503
        assert (
            httpx.post(
                f"{server.url}/v1/predict", files=upload(clips[0]), headers=auth(), timeout=60
            ).status_code
            == 200
        )
        own_cluster.start()
        eventually(lambda: _identify(server, clips[0]).status_code == 200, "the gallery comes up")
    finally:
        server.stop()
