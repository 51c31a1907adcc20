"""The gallery in an SQLite file (the embedded default): stdlib sqlite3, WAL, full sync.

One connection, used by one thread at a time (a lock): enrolments are rare next to
searches, which never reach the database. `synchronous=FULL` makes a committed enrolment
survive a power cut as well as a killed process. Other processes on the same file (more
uvicorn workers) see each other's writes through the change log, polled.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mplstm.service.gallery.store import (
    GalleryError,
    GallerySchemaError,
    GalleryUnavailableError,
    SqlStore,
    schema,
)

POLL_S = 0.25  # how often other processes' writes are looked for
SCHEMA = schema("BLOB", "INTEGER PRIMARY KEY AUTOINCREMENT")


class SqliteStore(SqlStore):
    """`GalleryStore` on one SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{path}"
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, timeout=30, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        except OSError as exc:
            raise GalleryError(f"gallery file {self.path}: {exc}") from exc

    def _error(self, exc: sqlite3.Error) -> GalleryError:
        if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
            return GallerySchemaError(
                f"{self.path} is not a usable SQLite gallery ({exc}): move it aside (a new "
                "empty gallery is then created) or restore it from a backup"
            )
        return GalleryUnavailableError(f"gallery database {self.path}: {exc}")

    @contextmanager
    def _transaction(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise self._error(exc) from exc

    def migrate(self) -> None:
        with self._transaction(write=True) as db:
            has_meta = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'gallery_meta'"
            ).fetchone()
            self._migrate(db, self._schema_version(db, has_meta is not None), SCHEMA)

    def wait_for_changes(self, timeout_s: float) -> None:
        time.sleep(min(timeout_s, POLL_S))

    def close(self) -> None:
        with self._lock:
            self._db.close()
