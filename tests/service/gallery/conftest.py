"""Gallery fixtures: a real SQLite file or a real PostgreSQL database per test, and an
identity package (a tiny model with an embedding head, thresholds set at export)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from pg_cluster import Cluster, ClusterUnavailable, start_cluster

ENGINES = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def pg() -> Iterator[Cluster]:
    """One throwaway PostgreSQL cluster for the session (skips, saying why, where none starts)."""
    try:
        cluster = start_cluster()
    except ClusterUnavailable as exc:
        pytest.skip(f"no PostgreSQL cluster: {exc}")
    yield cluster
    cluster.remove()


def new_database(cluster: Cluster) -> str:
    """A fresh, empty database on the cluster; its URL."""
    name = f"gallery_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return cluster.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(params=ENGINES)
def gallery_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty gallery database, once per engine."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'gallery.db'}"
    return new_database(request.getfixturevalue("pg"))
