"""The gallery the routes use: a store (the database) and one in-memory index per model.

Writes go to the database in one transaction each, then to this replica's index at once
(read-your-writes). A sync thread follows the database's change log, so an enrolment or
deletion made by another replica (or another uvicorn worker on the same SQLite file)
reaches this one's index within about a second; on PostgreSQL a NOTIFY wakes it at once.

While the database cannot be reached the gallery is unavailable (every gallery route
answers 503): the in-memory index could miss another replica's deletion, and a person
who asked to be forgotten must not be matched. It comes back by itself when the database
does, after re-reading what changed meanwhile. Every database call runs off the event
loop, in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric

from mplstm.service.gallery.index import ModelIndex
from mplstm.service.gallery.store import (
    Change,
    Embedding,
    GalleryError,
    GallerySchemaError,
    GalleryStore,
    GalleryUnavailableError,
    Person,
    open_store,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

STALE_S = 5.0  # the index is trusted this long after the change log was last read
RETRY_S = 1.0  # between attempts to reach a database that is down


@dataclass(frozen=True)
class Match:
    """A person and their cosine score against a probe."""

    person_id: str
    score: float


class Gallery:
    """People and embeddings of every model with an embedding output, searchable in memory."""

    def __init__(self, store: GalleryStore) -> None:
        self.store = store
        self._indexes: dict[str, ModelIndex] = {}
        self._update = threading.Lock()  # one read-from-database-then-index at a time
        self._applied = 0  # the change log is applied up to this sequence number
        self._synced_at = -float("inf")  # monotonic time of the last good sync
        self._reason = "the gallery database has not been reached yet"
        self._loaded = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    async def open(cls, url: str) -> Gallery:
        """Open and migrate the database at `url`, then follow its changes.

        GallerySchemaError (a newer schema, a damaged file) is raised: the server must not
        start on it. A database that cannot be reached leaves the gallery unavailable and
        retried in the background.
        """
        gallery = cls(await asyncio.to_thread(open_store, url))
        try:
            await asyncio.to_thread(gallery._reload)
        except GalleryUnavailableError as exc:
            gallery._down(exc)
        gallery._thread = threading.Thread(target=gallery._follow, name="gallery-sync", daemon=True)
        gallery._thread.start()
        return gallery

    # -- state -------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """The database was reached and its changes applied within STALE_S."""
        return time.monotonic() - self._synced_at < STALE_S

    def check(self) -> None:
        """GalleryUnavailableError (503) unless the gallery is available."""
        if not self.available:
            raise GalleryUnavailableError(
                f"the gallery database is unavailable ({self._reason}); retry shortly"
            )

    def _down(self, exc: Exception) -> None:
        if self.available or self._reason != str(exc):
            log.error("gallery unavailable: %s", exc)
        self._reason = str(exc)
        self._synced_at = -float("inf")
        self._loaded = False

    # -- following the database ----------------------------------------------------------

    def _reload(self) -> None:
        """Migrate, then read every known model's people afresh (after start or an outage)."""
        self.store.migrate()
        last = self.store.last_change()  # before reading: later changes are applied again
        with self._update:
            for model, index in list(self._indexes.items()):  # a route may add one meanwhile
                self._load(model, index)
        self._applied, self._loaded = last, True
        self._synced_at = time.monotonic()
        log.info("gallery: %s, change log at %d", self.store.url, last)

    def _load(self, model: str, index: ModelIndex) -> None:
        vectors = self.store.vectors(model)
        for person_id in [p for p in index.people() if p not in vectors]:
            index.remove(person_id)
        for person_id, rows in vectors.items():
            index.set(person_id, rows)

    def _follow(self) -> None:
        """The sync thread: apply the change log as it grows; reconnect after an outage."""
        while not self._stop.is_set():
            try:
                if not self._loaded:
                    self._reload()
                self.store.wait_for_changes(RETRY_S)
                self._apply(self.store.changes(self._applied))
                self._synced_at = time.monotonic()
            except GalleryError as exc:  # unavailable, or a schema problem found on reconnect
                self._down(exc)
                self._stop.wait(RETRY_S if not isinstance(exc, GallerySchemaError) else 10)
            except Exception:  # a bug: keep the thread, say so, count as unavailable
                log.exception("gallery sync failed")
                self._down(RuntimeError("gallery sync failed; see the log"))
                self._stop.wait(RETRY_S)

    def _apply(self, changes: Sequence[Change]) -> None:
        if not changes:
            return
        touched: dict[str, set[str]] = {}
        for change in changes:
            touched.setdefault(change.model, set()).add(change.person_id)
        for model, people in touched.items():
            index = self._indexes.get(model)
            if index is not None:
                self._refresh(model, index, sorted(people))
        self._applied = changes[-1].seq

    def _refresh(self, model: str, index: ModelIndex, people: Sequence[str]) -> None:
        with self._update:
            vectors = self.store.vectors(model, people)
            for person_id in people:
                index.set(person_id, vectors.get(person_id, []))

    # -- what the routes call (async: the database off the event loop) --------------------

    async def index(self, model: str, dim: int) -> ModelIndex:
        """The index of `model` (embeddings of size `dim`), loaded on first use."""
        self.check()
        index = self._indexes.get(model)
        if index is None or index.dim != dim:
            index = ModelIndex(dim)

            def load() -> None:
                with self._update:
                    self._load(model, index)
                self._indexes[model] = index

            await asyncio.to_thread(load)
        return index

    async def enrol(
        self,
        model: str,
        index: ModelIndex,
        person_id: str,
        display_name: str | None,
        embedding: np.ndarray,
        *,
        request_id: str,
        views: Sequence[str],
        model_version: str,
    ) -> tuple[Embedding, int]:
        """Store one embedding of a person (one transaction) and index it; returns it and
        how many the person has now."""
        self.check()

        def write() -> tuple[Embedding, int]:
            row = self.store.add(
                model, person_id, display_name, embedding,
                request_id=request_id, views=views, model_version=model_version,
            )  # fmt: skip
            with self._update:
                vectors = self.store.vectors(model, [person_id]).get(person_id, [])
                index.set(person_id, vectors)
            return row, len(vectors)

        return await asyncio.to_thread(self._guarded, write)

    async def delete(self, model: str, index: ModelIndex, person_id: str) -> int:
        """Remove a person and all their embeddings; how many went (0: unknown person)."""
        self.check()

        def remove() -> int:
            with self._update:
                removed = self.store.delete(model, person_id)
                index.remove(person_id)
            return removed

        return await asyncio.to_thread(self._guarded, remove)

    async def get(self, model: str, person_id: str) -> tuple[Person, list[Embedding]] | None:
        self.check()
        return await asyncio.to_thread(self._guarded, self.store.get, model, person_id)

    async def list(self, model: str, after: str | None, limit: int) -> tuple[list[Person], int]:
        self.check()
        return await asyncio.to_thread(
            self._guarded, self.store.list, model, after=after, limit=limit
        )

    async def search(self, index: ModelIndex, probe: np.ndarray, top_k: int) -> list[Match]:
        """The best `top_k` people for a probe, from memory (a thread: BLAS on big galleries)."""
        self.check()
        found = await asyncio.to_thread(index.search, probe, top_k)
        return [Match(p, s) for p, s in found]

    def _guarded(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn` with an unreachable database marking the gallery unavailable at once."""
        try:
            return fn(*args, **kwargs)
        except GalleryUnavailableError as exc:
            self._down(exc)
            raise

    async def close(self) -> None:
        """Stop following the database and close it."""
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5)
        await asyncio.to_thread(self.store.close)


class GalleryHolder:
    """The app's gallery, opened at start-up where a served model has an embedding, else on
    the first gallery request (a model loaded later)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._gallery: Gallery | None = None
        self._lock = asyncio.Lock()

    @property
    def opened(self) -> Gallery | None:
        return self._gallery

    async def get(self) -> Gallery:
        """The gallery, opening it on first use."""
        if self._gallery is None:
            async with self._lock:
                if self._gallery is None:
                    self._gallery = await Gallery.open(self.url)
        return self._gallery

    async def close(self) -> None:
        if self._gallery is not None:
            await self._gallery.close()
            self._gallery = None


class GalleryCollector:
    """Prometheus gauges read at scrape time: people per model, and whether the gallery is up."""

    def __init__(self, holder: GalleryHolder) -> None:
        self.holder = holder

    def collect(self) -> Iterator[Metric]:
        gallery = self.holder.opened
        people = GaugeMetricFamily(
            "mplstm_gallery_people", "People in each model's gallery (in memory).", labels=["model"]
        )
        up = GaugeMetricFamily(
            "mplstm_gallery_available",
            "1 while the gallery database is reachable and its changes are followed.",
        )
        if gallery is not None:
            for model, index in sorted(list(gallery._indexes.items())):
                people.add_metric([model], len(index))
            up.add_metric([], 1.0 if gallery.available else 0.0)
        yield people
        yield up


async def open_gallery(
    holder: GalleryHolder, models: Sequence[Any], registry: CollectorRegistry | None = None
) -> None:
    """At start-up: open the gallery if a served model has an embedding output (and add
    its gauges to `registry`).

    A database this server cannot use (a newer schema, a damaged file) stops start-up with
    the reason; one that cannot be reached only makes the gallery routes answer 503.
    """
    if registry is not None:
        registry.register(GalleryCollector(holder))
    names = [m.name for m in models if m.manifest.embedding_size]
    if not names:
        return
    try:
        gallery = await holder.get()
    except GallerySchemaError as exc:
        log.error("cannot start: %s", exc)
        raise
    for model in models:
        if model.manifest.embedding_size:
            with contextlib.suppress(GalleryUnavailableError):
                await gallery.index(model.name, model.manifest.embedding_size)
    log.info("gallery %s for %s", holder_url(holder), names)


def holder_url(holder: GalleryHolder) -> str:
    """The gallery's URL without a password."""
    gallery = holder.opened
    return gallery.store.url if gallery is not None else holder.url.split("@")[-1]
