"""Gallery benchmark: identify against 1k / 10k / 100k people, SQLite and PostgreSQL side by side.

What identify costs once a clip is embedded (decode and inference excluded): the
service's way, exact cosine over the in-memory template matrix kept in step with the
database (`mplstm.service.gallery.index.ModelIndex`), against a naive way that loads
every embedding from the database for each request and then does the same arithmetic.
Both read the same database (a SQLite file; a throwaway PostgreSQL 15 cluster on
loopback), one embedding per person, 128-d. Also: enrolment throughput (one transaction
per enrolment, through `GalleryStore.add`, as the enrol route does, a process of its
own), and the memory the matrix takes per 100k people.

Latencies are per request, p50 and p99 over `--queries` (the naive way over fewer at
100k: each takes a full table read); queries alternate between the two ways so a busy
machine slows both alike. Run: .venv/bin/python bench/gallery.py [--sizes 1000 10000
100000] [--queries 300] [--no-write]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import report
from bench.pg_cluster import ClusterUnavailable, start_cluster
from mplstm.core.openset import normalise
from mplstm.service.gallery.index import ModelIndex
from mplstm.service.gallery.store import SqlStore, now, open_store, pack, views_text

E = 128
MODEL = "bench"
TOP_K = 5


@dataclass
class Point:
    """One engine at one gallery size."""

    engine: str
    people: int
    indexed_ms: tuple[float, float]  # p50, p99
    naive_ms: tuple[float, float]
    load_s: float  # reading every embedding into the index (a replica's start-up)
    index_mb: float


def _vectors(n: int, seed: int) -> np.ndarray:
    return normalise(np.random.default_rng(seed).normal(size=(n, E)).astype(np.float32))


def bulk_insert(store: SqlStore, start: int, vectors: np.ndarray) -> None:
    """People start.. with one embedding each, in one transaction (set-up, not measured)."""
    at = now()
    people = [(MODEL, f"p{start + i:07d}", f"Person {start + i}", at) for i in range(len(vectors))]
    rows = [
        (MODEL, p[1], pack(v), "bench", views_text(("front",)), "1", at)
        for p, v in zip(people, vectors, strict=True)
    ]
    with store._transaction(write=True) as db:
        db.cursor().executemany(store._q("INSERT INTO gallery_people VALUES (?, ?, ?, ?)"), people)
        db.cursor().executemany(
            store._q(
                "INSERT INTO gallery_embeddings (model, person_id, vector, request_id, views, "
                "model_version, created) VALUES (?, ?, ?, ?, ?, ?, ?)"
            ),
            rows,
        )


def naive_identify(store: SqlStore, probe: np.ndarray) -> list[tuple[str, float]]:
    """Every embedding read from the database for this request, then the same arithmetic
    as the index, vectorised: per-person templates, cosine, top k."""
    with store._transaction() as db:
        rows = store._run(
            db, "SELECT person_id, vector FROM gallery_embeddings WHERE model = ?", (MODEL,)
        ).fetchall()
    people, owner = np.unique([r[0] for r in rows], return_inverse=True)
    vectors = np.frombuffer(b"".join(bytes(r[1]) for r in rows), "<f4").reshape(len(rows), E)
    sums = np.zeros((len(people), E), np.float32)
    np.add.at(sums, owner, vectors)
    scores = normalise(sums) @ probe
    best = np.argsort(-scores)[:TOP_K]
    return [(str(people[i]), float(scores[i])) for i in best]


def _percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.asarray(seconds) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def measure(store: SqlStore, engine: str, people: int, queries: int, naive_queries: int) -> Point:
    """Load the index from the database, then time both ways of identifying, alternating."""
    started = time.perf_counter()
    index = ModelIndex(E)
    for person_id, vectors in store.vectors(MODEL).items():
        index.set(person_id, vectors)
    load_s = time.perf_counter() - started
    probes = _vectors(queries, seed=people + 7)
    indexed, naive = [], []
    for i, probe in enumerate(probes):
        t = time.perf_counter()
        fast = index.search(probe, TOP_K)
        indexed.append(time.perf_counter() - t)
        if i < naive_queries:
            t = time.perf_counter()
            slow = naive_identify(store, probe)
            naive.append(time.perf_counter() - t)
            assert [p for p, _ in fast][:1] == [p for p, _ in slow][:1], "the two ways disagree"
    used = len(index) * E * 4 + sum(len(p) for p in index.people()) + 64 * len(index)
    return Point(engine, people, _percentiles(indexed), _percentiles(naive), load_s, used / 2**20)


def enrolment_rate(store: SqlStore, count: int) -> float:
    """Enrolments per second, one `add` (one committed transaction) each."""
    vectors = _vectors(count, seed=99)
    started = time.perf_counter()
    for i, v in enumerate(vectors):
        store.add(
            "enrol-bench", f"e{i:06d}", None, v, request_id=f"r{i}", views=("front",),
            model_version="1",
        )  # fmt: skip
    return count / (time.perf_counter() - started)


@contextlib.contextmanager
def engines(folder: Path) -> Iterator[list[tuple[str, SqlStore]]]:
    """A fresh SQLite file and, where one can start, a PostgreSQL cluster's database."""
    stores: list[tuple[str, SqlStore]] = [("SQLite", open_store(f"sqlite:///{folder / 'g.db'}"))]
    cluster = None
    try:
        cluster = start_cluster()
        stores.append(("PostgreSQL", open_store(cluster.url)))
    except ClusterUnavailable as exc:
        print(f"PostgreSQL skipped: {exc}")
    try:
        for _, store in stores:
            store.migrate()
        yield stores
    finally:
        for _, store in stores:
            store.close()
        if cluster is not None:
            cluster.remove()


def run(args: argparse.Namespace) -> tuple[list[Point], dict[str, float]]:
    points, rates = [], {}
    with tempfile.TemporaryDirectory(prefix="gallery-bench-") as tmp, engines(Path(tmp)) as stores:
        for engine, store in stores:
            rates[engine] = enrolment_rate(store, args.enrolments)
            print(f"{engine}: {rates[engine]:.0f} enrolments/s")
            have = 0
            for size in args.sizes:
                bulk_insert(store, have, _vectors(size - have, seed=size))
                have = size
                naive_queries = max(10, min(args.queries, 2_000_000 // size))
                point = measure(store, engine, size, args.queries, naive_queries)
                points.append(point)
                print(
                    f"{engine} {size:>7} people: indexed p50 {point.indexed_ms[0]:.3f} ms, "
                    f"naive p50 {point.naive_ms[0]:.1f} ms ({point.naive_ms[0] / point.indexed_ms[0]:.0f}x); "
                    f"index {point.index_mb:.1f} MiB, loaded in {point.load_s:.2f} s"
                )
    return points, rates


def plot(points: list[Point], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    for engine in dict.fromkeys(p.engine for p in points):
        mine = [p for p in points if p.engine == engine]
        sizes = [p.people for p in mine]
        ax.plot(sizes, [p.indexed_ms[0] for p in mine], "-o", label=f"{engine}: in-memory index")
        ax.plot(sizes, [p.naive_ms[0] for p in mine], "--s", label=f"{engine}: naive (load all)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("people in the gallery (one 128-d embedding each)")
    ax.set_ylabel("identify latency p50 (ms, decode excluded)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def markdown(
    points: list[Point], rates: dict[str, float], args: argparse.Namespace, load: str
) -> str:
    lines = [
        "## Gallery: identify against 1k-100k people, SQLite and PostgreSQL",
        "",
        "Identify once the clip is embedded (decode and inference excluded): exact cosine over "
        "the in-memory template matrix (`ModelIndex`, what the service does) against a naive "
        "way that loads every embedding from the database per request. One 128-d embedding "
        f"per person, top {TOP_K}; p50 / p99 over {args.queries} queries (naive: fewer at the "
        "large sizes), the two ways alternating.",
        "",
        "| engine | people | index p50 / p99 (ms) | naive p50 / p99 (ms) | naive / index (p50) | index MiB | load at start (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in points:
        lines.append(
            f"| {p.engine} | {p.people:,} | {p.indexed_ms[0]:.3f} / {p.indexed_ms[1]:.3f} | "
            f"{p.naive_ms[0]:.1f} / {p.naive_ms[1]:.1f} | **{p.naive_ms[0] / p.indexed_ms[0]:,.0f}x** | "
            f"{p.index_mb:.1f} | {p.load_s:.2f} |"
        )
    lines += [
        "",
        "Enrolment throughput (one committed transaction per enrolment, `GalleryStore.add`, "
        "one thread): "
        + ", ".join(f"{e} {r:,.0f}/s" for e, r in rates.items())
        + f" ({args.enrolments} enrolments). Memory: the matrix holds 4 x 128 bytes per "
        "person plus the id, about 50 MiB per 100k people (the index MiB column; its "
        "array grows by doubling, so up to twice that is allocated).",
        "",
        f"Load average before the run: {load}.",
        "",
        "![gallery](plots/gallery.png)",
        "",
        f"Rerun: `.venv/bin/python bench/gallery.py`. Machine: {report.machine()}. Date: {report.today()}.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--enrolments", type=int, default=300)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    points, rates = run(args)
    if not args.no_write:
        plot(points, report.plot_path("gallery"))
        print(f"wrote {report.write_section('gallery', markdown(points, rates, args, load))}")


if __name__ == "__main__":
    main()
