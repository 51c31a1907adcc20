"""The gallery's database: people and their embeddings, behind one narrow interface.

Per model (its repository name), people (id, display name, created) with one or more
embeddings each (the vector, the enrolling request's id, the views it used, the model
version, the time). One implementation per engine: `SqliteStore` (the embedded default, a
file) and `PostgresStore` (several replicas on one database); `open_store(url)` picks by
`MPLSTM_GALLERY_URL`. Every write is one transaction, so an enrolment or a deletion is
whole or absent after a crash, never half done. Each also appends to a change log
(`gallery_changes`, in commit order), which is how every replica keeps its in-memory
search matrix in step with the database (`mplstm.service.gallery.gallery`).

The schema is versioned (`gallery_meta.schema_version`) and migrated at start; a database
written by a newer version, or a file that is not a database, is refused with the fix.
Calls block: the service makes them off the event loop.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

SCHEMA_VERSION = 1
DEFAULT_URL = "sqlite:///gallery.db"
SCHEMES = ("sqlite:///", "postgresql://", "postgres://")


class GalleryError(RuntimeError):
    """A gallery database that cannot be used; the message says why and what to do."""


class GalleryUnavailableError(GalleryError):
    """The database cannot be reached now (down, unreachable): retry later."""


class GallerySchemaError(GalleryError):
    """A database this version cannot use: a newer schema, or not a gallery database."""


@dataclass(frozen=True)
class Embedding:
    """One enrolled clip of a person."""

    id: int
    person_id: str
    vector: np.ndarray  # float32 [E], unit length
    request_id: str
    views: tuple[str, ...]
    model_version: str
    created: str  # ISO 8601, UTC


@dataclass(frozen=True)
class Person:
    """A person of one model's gallery and their embeddings' metadata."""

    model: str
    person_id: str
    display_name: str
    created: str
    embeddings: int


@dataclass(frozen=True)
class Change:
    """One row of the change log: `person_id` of `model` was enrolled or deleted."""

    seq: int
    model: str
    person_id: str


class GalleryStore(Protocol):
    """What the gallery needs of a database; every method is one transaction."""

    url: str  # for messages, without a password

    def migrate(self) -> None:
        """Create or upgrade the schema; GallerySchemaError for a newer or foreign one."""
        ...

    def add(
        self,
        model: str,
        person_id: str,
        display_name: str | None,
        vector: np.ndarray,
        *,
        request_id: str,
        views: Sequence[str],
        model_version: str,
    ) -> Embedding:
        """Add an embedding, creating the person first if new (a display name given
        replaces the stored one)."""
        ...

    def get(self, model: str, person_id: str) -> tuple[Person, list[Embedding]] | None:
        """The person and their embeddings, or None."""
        ...

    def list(self, model: str, *, after: str | None, limit: int) -> tuple[list[Person], int]:
        """People ordered by id after `after` (keyset paging), at most `limit`, and the total."""
        ...

    def delete(self, model: str, person_id: str) -> int:
        """Remove a person and every embedding of theirs; the embeddings removed (0: none)."""
        ...

    def vectors(
        self, model: str, person_ids: Sequence[str] | None = None
    ) -> dict[str, list[np.ndarray]]:
        """Every embedding vector of `person_ids` (None: of everyone) by person."""
        ...

    def changes(self, after: int) -> list[Change]:
        """Change-log rows after sequence number `after`, in order."""
        ...

    def last_change(self) -> int:
        """The newest change's sequence number (0: none)."""
        ...

    def wait_for_changes(self, timeout_s: float) -> None:
        """Block until another process may have written, or `timeout_s` passed."""
        ...

    def close(self) -> None:
        """Close the connections."""
        ...


def now() -> str:
    """The current time as stored: ISO 8601 in UTC, microseconds."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")


def pack(vector: np.ndarray) -> bytes:
    """An embedding as stored: little-endian float32."""
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def unpack(data: bytes) -> np.ndarray:
    """A stored embedding as float32 [E]."""
    return np.frombuffer(bytes(data), dtype="<f4").astype(np.float32)


def views_text(views: Sequence[str]) -> str:
    return json.dumps(list(views))


def views_tuple(text: str) -> tuple[str, ...]:
    return tuple(json.loads(text))


def check_version(found: int | None, url: str) -> None:
    """Refuse a schema newer than this code's."""
    if found is not None and found > SCHEMA_VERSION:
        raise GallerySchemaError(
            f"gallery database {url} has schema version {found}, newer than this server's "
            f"{SCHEMA_VERSION}: run a newer mplstm-serve, or point MPLSTM_GALLERY_URL at "
            "another database"
        )


class Cursor(Protocol):
    """What the shared SQL needs of a DB-API cursor (sqlite3 and psycopg alike)."""

    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class SqlStore:
    """The queries every engine shares; an engine supplies connections and its dialect.

    Queries are written with `?` markers; `_q` turns them into the engine's (psycopg: %s).
    """

    url: str
    marker = "?"

    def _transaction(self, write: bool = False) -> AbstractContextManager[Any]:
        """A transaction on a connection whose `execute(sql, params)` returns a `Cursor`."""
        raise NotImplementedError

    def _before_change(self, db: Any) -> None:
        """Engine hook inside a write, before its change-log row (ordering, notification)."""

    def _q(self, query: str) -> str:
        return query if self.marker == "?" else query.replace("?", self.marker)

    def _run(self, db: Any, query: str, params: Sequence[Any] = ()) -> Cursor:
        return db.execute(self._q(query), tuple(params))

    def _log_change(self, db: Any, model: str, person_id: str, at: str) -> None:
        self._before_change(db)
        self._run(
            db, "INSERT INTO gallery_changes (model, person_id, at) VALUES (?, ?, ?)",
            (model, person_id, at),
        )  # fmt: skip

    def add(
        self,
        model: str,
        person_id: str,
        display_name: str | None,
        vector: np.ndarray,
        *,
        request_id: str,
        views: Sequence[str],
        model_version: str,
    ) -> Embedding:
        created = now()
        with self._transaction(write=True) as db:
            self._run(
                db, "INSERT INTO gallery_people VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (model, person_id, display_name or person_id, created),
            )  # fmt: skip
            if display_name:
                self._run(
                    db,
                    "UPDATE gallery_people SET display_name = ? WHERE model = ? AND person_id = ?",
                    (display_name, model, person_id),
                )
            (new_id,) = self._run(
                db,
                "INSERT INTO gallery_embeddings (model, person_id, vector, request_id, views, "
                "model_version, created) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    model,
                    person_id,
                    pack(vector),
                    request_id,
                    views_text(views),
                    model_version,
                    created,
                ),
            ).fetchone()
            self._log_change(db, model, person_id, created)
        vector = np.asarray(vector, np.float32)
        return Embedding(
            int(new_id), person_id, vector, request_id, tuple(views), model_version, created
        )

    def get(self, model: str, person_id: str) -> tuple[Person, list[Embedding]] | None:
        with self._transaction() as db:
            row = self._run(
                db,
                "SELECT display_name, created FROM gallery_people WHERE model = ? AND person_id = ?",
                (model, person_id),
            ).fetchone()
            if row is None:
                return None
            rows = self._run(
                db,
                "SELECT id, vector, request_id, views, model_version, created FROM "
                "gallery_embeddings WHERE model = ? AND person_id = ? ORDER BY id",
                (model, person_id),
            ).fetchall()
        embeddings = [
            Embedding(int(i), person_id, unpack(v), r, views_tuple(w), mv, c)
            for i, v, r, w, mv, c in rows
        ]
        return Person(model, person_id, row[0], row[1], len(embeddings)), embeddings

    def list(self, model: str, *, after: str | None, limit: int) -> tuple[list[Person], int]:
        with self._transaction() as db:
            rows = self._run(
                db,
                "SELECT p.person_id, p.display_name, p.created, (SELECT COUNT(*) FROM "
                "gallery_embeddings e WHERE e.model = p.model AND e.person_id = p.person_id) "
                "FROM gallery_people p WHERE p.model = ? AND p.person_id > ? "
                "ORDER BY p.person_id LIMIT ?",
                (model, after or "", limit),
            ).fetchall()
            (total,) = self._run(
                db, "SELECT COUNT(*) FROM gallery_people WHERE model = ?", (model,)
            ).fetchone()
        return [Person(model, p, d, c, int(n)) for p, d, c, n in rows], int(total)

    def delete(self, model: str, person_id: str) -> int:
        with self._transaction(write=True) as db:
            (count,) = self._run(
                db,
                "SELECT COUNT(*) FROM gallery_embeddings WHERE model = ? AND person_id = ?",
                (model, person_id),
            ).fetchone()
            # Embeddings first, so no engine depends on ON DELETE CASCADE being enforced.
            self._run(
                db, "DELETE FROM gallery_embeddings WHERE model = ? AND person_id = ?",
                (model, person_id),
            )  # fmt: skip
            gone = self._run(
                db, "DELETE FROM gallery_people WHERE model = ? AND person_id = ?",
                (model, person_id),
            ).rowcount  # fmt: skip
            if gone:
                self._log_change(db, model, person_id, now())
        return int(count) if gone else 0

    def vectors(
        self, model: str, person_ids: Sequence[str] | None = None
    ) -> dict[str, list[np.ndarray]]:
        query = "SELECT person_id, vector FROM gallery_embeddings WHERE model = ?"
        params: list[Any] = [model]
        if person_ids is not None:
            if not person_ids:
                return {}
            query += f" AND person_id IN ({', '.join('?' for _ in person_ids)})"
            params += list(person_ids)
        with self._transaction() as db:
            rows = self._run(db, query + " ORDER BY id", params).fetchall()
        out: dict[str, list[np.ndarray]] = {p: [] for p in person_ids or ()}
        for person_id, vector in rows:
            out.setdefault(person_id, []).append(unpack(vector))
        return out

    def changes(self, after: int) -> list[Change]:
        with self._transaction() as db:
            rows = self._run(
                db,
                "SELECT seq, model, person_id FROM gallery_changes WHERE seq > ? ORDER BY seq",
                (after,),
            ).fetchall()
        return [Change(int(s), m, p) for s, m, p in rows]

    def last_change(self) -> int:
        with self._transaction() as db:
            (seq,) = self._run(db, "SELECT COALESCE(MAX(seq), 0) FROM gallery_changes").fetchone()
        return int(seq)

    @staticmethod
    def _schema_version(db: Any, has_meta: bool) -> int | None:
        """The schema version a database records (None: no gallery_meta table or row)."""
        if not has_meta:
            return None
        row = db.execute("SELECT value FROM gallery_meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else None

    def _migrate(self, db: Any, found: int | None, schema: Sequence[str]) -> None:
        """Bring a database at schema `found` (None: empty) to SCHEMA_VERSION."""
        check_version(found, self.url)
        if found == SCHEMA_VERSION:
            return
        for statement in schema:  # version 1; a later version appends its steps
            self._run(db, statement)
        self._run(db, "DELETE FROM gallery_meta WHERE key = 'schema_version'")
        self._run(
            db, "INSERT INTO gallery_meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
        )


def schema(blob: str, serial: str) -> tuple[str, ...]:
    """Version 1 of the schema in an engine's types (binary column, auto-increment key)."""
    return (
        "CREATE TABLE IF NOT EXISTS gallery_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE IF NOT EXISTS gallery_people (
            model TEXT NOT NULL, person_id TEXT NOT NULL, display_name TEXT NOT NULL,
            created TEXT NOT NULL, PRIMARY KEY (model, person_id))""",
        f"""CREATE TABLE IF NOT EXISTS gallery_embeddings (
            id {serial}, model TEXT NOT NULL, person_id TEXT NOT NULL,
            vector {blob} NOT NULL, request_id TEXT NOT NULL, views TEXT NOT NULL,
            model_version TEXT NOT NULL, created TEXT NOT NULL,
            FOREIGN KEY (model, person_id) REFERENCES gallery_people (model, person_id)
                ON DELETE CASCADE)""",
        "CREATE INDEX IF NOT EXISTS gallery_embeddings_person "
        "ON gallery_embeddings (model, person_id)",
        f"""CREATE TABLE IF NOT EXISTS gallery_changes (
            seq {serial}, model TEXT NOT NULL, person_id TEXT NOT NULL, at TEXT NOT NULL)""",
    )


def open_store(url: str) -> GalleryStore:
    """The store of `MPLSTM_GALLERY_URL`: sqlite:///PATH (a file) or postgresql://..."""
    if url.startswith("sqlite:///"):
        from mplstm.service.gallery.sqlite import SqliteStore

        return SqliteStore(url.removeprefix("sqlite:///"))
    if url.startswith(("postgresql://", "postgres://")):
        from mplstm.service.gallery.postgres import PostgresStore

        return PostgresStore(url)
    raise GalleryError(
        f"MPLSTM_GALLERY_URL {url!r}: use sqlite:///PATH (a file; sqlite:////abs/path) or "
        "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
    )
