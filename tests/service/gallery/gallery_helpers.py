"""Gallery test helpers: keys, model names, a gallery server's settings."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from bench.pg_cluster import Cluster, ClusterUnavailable, start_cluster

ADMIN_KEY, USER_KEY = "admin-key-0123", "user-key-4567"
IDENTITY, IDENTITY_B, LIPREADING = "tiny-id", "tiny-id-b", "tiny-lip"


def server_env(gallery_url: str, **extra: str) -> dict[str, str]:
    """A gallery server's settings: keys, the database, the shared server's tight limits."""
    from service_helpers import SHARED_ENV

    return {
        **SHARED_ENV,
        "MPLSTM_DEFAULT_MODEL": LIPREADING,
        "MPLSTM_GALLERY_URL": gallery_url,
        "MPLSTM_API_KEYS": USER_KEY,
        "MPLSTM_ADMIN_API_KEYS": ADMIN_KEY,
        "MPLSTM_DECODE_WORKERS": "1",
        **extra,
    }


def auth(key: str = USER_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def new_database(cluster: Cluster) -> str:
    """A fresh, empty database on the cluster; its URL."""
    name = f"gallery_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return cluster.url.rsplit("/", 1)[0] + f"/{name}"


def cluster_or_skip() -> Cluster:
    """A new throwaway PostgreSQL cluster; the test skips, saying why, where none starts."""
    try:
        return start_cluster()
    except ClusterUnavailable as exc:
        pytest.skip(f"no PostgreSQL cluster: {exc}")
