"""Gallery fixtures: a real SQLite file or a real PostgreSQL database per test, and an
identity package (a tiny model with an embedding head, thresholds set at export)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gallery_helpers import IDENTITY, IDENTITY_B, LIPREADING, cluster_or_skip, new_database

from bench.pg_cluster import Cluster

ENGINES = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def pg() -> Iterator[Cluster]:
    """One throwaway PostgreSQL cluster for the session (skips, saying why, where none starts)."""
    cluster = cluster_or_skip()
    yield cluster
    cluster.remove()


@pytest.fixture(params=ENGINES)
def gallery_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty gallery database, once per engine."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'gallery.db'}"
    return new_database(request.getfixturevalue("pg"))


@pytest.fixture(scope="session")
def identity_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny-id` (embedding head, view dropout, thresholds measured at export on four
    people it never saw), `tiny-id-b` (the same package under another name: its own,
    empty gallery) and `tiny-lip` (no embedding)."""
    import shutil

    from service_helpers import VIEWS, write_clip
    from tiny_models import save_tiny_checkpoint

    from mplstm.core.manifest import ClipRecord, write_manifest
    from mplstm.export.package import OpenSetOptions, build_package

    work = tmp_path_factory.mktemp("identity")
    repo = work / "models"
    unseen = [
        ClipRecord(
            f"u{p}_c{c}", f"u{p}", f"u{p}", "test", write_clip(work / f"u{p}_{c}", 50 + 7 * p + c)
        )
        for p in range(4)
        for c in range(3)
    ]
    write_manifest(unseen, work / "unseen.jsonl")
    identity = save_tiny_checkpoint(
        work / "id.pt", views=VIEWS, labels=("p1", "p2", "p3"), seed=3, task="identity",
        view_dropout=0.2, embedding_size=8,
    )  # fmt: skip
    build_package(
        identity,
        repo / IDENTITY / "1",
        open_set=OpenSetOptions(work / "unseen.jsonl", enrol_clips=1),
    )
    shutil.copytree(repo / IDENTITY, repo / IDENTITY_B)
    lip = save_tiny_checkpoint(work / "lip.pt", views=VIEWS, labels=("a", "b"), seed=4)
    build_package(lip, repo / LIPREADING / "1")
    return repo
