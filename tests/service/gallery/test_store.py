"""The gallery store, one suite run against each engine (SQLite file, PostgreSQL server)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from mplstm.service.gallery.store import (
    SCHEMA_VERSION,
    GalleryError,
    GallerySchemaError,
    open_store,
)

E = 8


def _unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=E).astype(np.float32)
    return v / np.linalg.norm(v)


def _add(store, person: str, seed: int, name: str | None = None, model: str = "m"):
    return store.add(
        model, person, name, _unit(seed), request_id=f"r{seed}", views=("front", "side"),
        model_version="1",
    )  # fmt: skip


@pytest.fixture
def store(gallery_url: str):
    s = open_store(gallery_url)
    s.migrate()
    yield s
    s.close()


def test_enrolment_creates_the_person_and_keeps_every_embedding(store) -> None:
    first = _add(store, "alice", 1, "Alice A.")
    second = _add(store, "alice", 2)
    person, embeddings = store.get("m", "alice")
    assert (person.display_name, person.embeddings) == ("Alice A.", 2)
    assert [e.id for e in embeddings] == [first.id, second.id]
    assert [e.request_id for e in embeddings] == ["r1", "r2"]
    assert embeddings[0].views == ("front", "side") and embeddings[0].model_version == "1"
    np.testing.assert_array_equal(embeddings[1].vector, _unit(2))
    _add(store, "alice", 3, "Alice B.")  # a display name given later replaces the stored one
    assert store.get("m", "alice")[0].display_name == "Alice B."
    assert store.get("m", "bob") is None and store.get("other-model", "alice") is None


def test_people_are_listed_by_id_a_page_at_a_time(store) -> None:
    for i, person in enumerate(["carol", "alice", "bob", "dave"]):
        _add(store, person, i)
    _add(store, "bob", 9)
    page, total = store.list("m", after=None, limit=3)
    assert [p.person_id for p in page] == ["alice", "bob", "carol"] and total == 4
    assert [p.embeddings for p in page] == [1, 2, 1]
    rest, _ = store.list("m", after="carol", limit=3)
    assert [p.person_id for p in rest] == ["dave"]


def test_deletion_removes_the_person_and_every_embedding(store) -> None:
    _add(store, "alice", 1)
    _add(store, "alice", 2)
    _add(store, "bob", 3)
    assert store.delete("m", "alice") == 2
    assert store.get("m", "alice") is None
    assert set(store.vectors("m")) == {"bob"}
    assert store.delete("m", "alice") == 0  # unknown


def test_the_change_log_lists_every_write_in_order(store) -> None:
    start = store.last_change()
    _add(store, "alice", 1)
    _add(store, "bob", 2)
    store.delete("m", "alice")
    changes = store.changes(start)
    assert [c.person_id for c in changes] == ["alice", "bob", "alice"]
    assert [c.seq for c in changes] == sorted(c.seq for c in changes)
    assert store.last_change() == changes[-1].seq
    assert store.vectors("m", ["alice", "bob"])["alice"] == []


def test_two_connections_enrolling_one_person_at_once_keep_every_embedding(
    gallery_url: str,
) -> None:
    stores = [open_store(gallery_url) for _ in range(2)]
    stores[0].migrate()
    errors: list[Exception] = []

    def enrol(store, offset: int) -> None:
        try:
            for i in range(10):
                _add(store, "same", offset + i)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=enrol, args=(s, 100 * k)) for k, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert stores[0].get("m", "same")[0].embeddings == 20
    for s in stores:
        s.close()


def test_migration_is_idempotent_and_a_newer_schema_is_refused(gallery_url: str) -> None:
    store = open_store(gallery_url)
    store.migrate()
    _add(store, "alice", 1)
    store.migrate()  # again: nothing lost
    assert store.get("m", "alice") is not None
    with store._transaction(write=True) as db:
        store._run(db, "UPDATE gallery_meta SET value = ? WHERE key = 'schema_version'", ("99",))
    with pytest.raises(GallerySchemaError, match=r"schema version 99, newer than this server's"):
        store.migrate()
    assert SCHEMA_VERSION < 99
    store.close()


def test_a_file_that_is_not_a_database_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "gallery.db"
    path.write_bytes(b"this is not an SQLite database, just some bytes" * 100)
    with pytest.raises(GallerySchemaError, match="move it aside"):
        open_store(f"sqlite:///{path}").migrate()


def test_an_unknown_url_scheme_says_which_are_known() -> None:
    with pytest.raises(GalleryError, match="sqlite:///PATH"):
        open_store("mysql://localhost/db")


def test_sqlite_rows_are_written_durably(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'g.db'}")
    store.migrate()
    _add(store, "alice", 1)
    store.close()
    db = sqlite3.connect(tmp_path / "g.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT COUNT(*) FROM gallery_embeddings").fetchone()[0] == 1


def test_an_unreachable_postgres_is_unavailable_not_a_crash() -> None:
    from live_server import free_port

    from mplstm.service.gallery.store import GalleryUnavailableError

    store = open_store(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")
    with pytest.raises(GalleryUnavailableError, match="gallery database"):
        store.migrate()
    assert "***" in open_store("postgresql://u:secret@127.0.0.1:1/db").url
