"""The gallery in PostgreSQL (psycopg 3), for several replicas on one database.

Two connections per replica: one for reads and writes (a lock; reconnected when it
breaks) and one that LISTENs. Every write takes a transaction-level advisory lock just
before its change-log row, so change-log sequence numbers are in commit order (a replica
that has applied change N has seen every change before it), and NOTIFYs the channel in
the same transaction (delivered on commit): other replicas wake at once and read the
change log, or after `WAIT_S` at the latest if a notification was missed.
Connection failures are `GalleryUnavailableError` (503 at the routes).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from mplstm.service.gallery.store import (
    GalleryError,
    GalleryUnavailableError,
    SqlStore,
    schema,
)

CHANNEL = "mplstm_gallery"
WAIT_S = 1.0  # longest wait on the channel before the change log is read anyway
CONNECT_TIMEOUT_S = 3
# Advisory lock keys (any two bigints, fixed): migration, and change-log ordering.
_MIGRATE_LOCK, _CHANGE_LOCK = 0x6D706C73_74300001, 0x6D706C73_74300002
SCHEMA = schema("BYTEA", "BIGSERIAL PRIMARY KEY")


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


class PostgresStore(SqlStore):
    """`GalleryStore` on a PostgreSQL database."""

    marker = "%s"

    def __init__(self, url: str) -> None:
        self._conninfo = url
        self.url = redact(url)
        self._lock = threading.Lock()
        self._db: psycopg.Connection | None = None
        self._listener: psycopg.Connection | None = None

    def _connect(self, autocommit: bool) -> psycopg.Connection:
        try:
            return psycopg.connect(
                self._conninfo, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT_S
            )
        except psycopg.Error as exc:
            raise GalleryUnavailableError(f"gallery database {self.url}: {exc}") from exc

    @contextmanager
    def _transaction(self, write: bool = False) -> Iterator[Any]:
        with self._lock:
            if self._db is None or self._db.closed:
                self._db = self._connect(autocommit=False)
            try:
                with self._db.transaction():
                    yield self._db
            except psycopg.OperationalError as exc:
                self._drop()
                raise GalleryUnavailableError(f"gallery database {self.url}: {exc}") from exc
            except psycopg.Error as exc:
                raise GalleryError(f"gallery database {self.url}: {exc}") from exc

    def _drop(self) -> None:
        if self._db is not None:
            self._db.close()
        self._db = None

    def _before_change(self, db: Any) -> None:
        db.execute("SELECT pg_advisory_xact_lock(%s)", (_CHANGE_LOCK,))
        db.execute("SELECT pg_notify(%s, '')", (CHANNEL,))

    def migrate(self) -> None:
        with self._transaction(write=True) as db:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
            has_meta = db.execute("SELECT to_regclass('gallery_meta')").fetchone()[0] is not None
            self._migrate(db, self._schema_version(db, has_meta), SCHEMA)

    def wait_for_changes(self, timeout_s: float) -> None:
        """Wait for a NOTIFY on the channel (at most `timeout_s`, capped at WAIT_S)."""
        try:
            if self._listener is None or self._listener.closed:
                self._listener = self._connect(autocommit=True)
                self._listener.execute(f"LISTEN {CHANNEL}")
            for _ in self._listener.notifies(timeout=min(timeout_s, WAIT_S), stop_after=1):
                break
        except psycopg.Error as exc:
            if self._listener is not None:
                self._listener.close()
            self._listener = None
            raise GalleryUnavailableError(f"gallery database {self.url}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._drop()
        if self._listener is not None:
            self._listener.close()
