"""No embedding lost: SIGTERM and SIGKILL in the middle of enrolments; bad files at start."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from pathlib import Path

import httpx
import pytest
from gallery_helpers import ADMIN_KEY, IDENTITY, auth, server_env
from live_server import Server
from service_helpers import upload, write_clip

from mplstm.service.gallery.store import open_store


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_clip(tmp_path_factory.mktemp("clip") / "c", seed=300)


async def _enrol_many(
    url: str, clip: dict[str, Path], count: int
) -> list[httpx.Response | Exception]:
    async with httpx.AsyncClient(timeout=120, headers=auth(ADMIN_KEY)) as client:
        return await asyncio.gather(
            *(
                client.post(f"{url}/v1/models/{IDENTITY}/gallery/p{i % 3}", files=upload(clip))
                for i in range(count)
            ),
            return_exceptions=True,
        )


def _stored(db: Path) -> dict[str, set[str]]:
    """person -> request ids of their embeddings, read from the file itself."""
    store = open_store(f"sqlite:///{db}")
    out = {}
    for person in ("p0", "p1", "p2"):
        found = store.get(IDENTITY, person)
        if found is not None:
            assert found[1], f"{person} exists without an embedding"
            out[person] = {e.request_id for e in found[1]}
    store.close()
    return out


def _in_flight(server: Server, clip, count: int, stop: signal.Signals, delay_s: float):
    """Send `count` enrolments at once and signal the server `delay_s` after the first
    answer (so that others are still in flight)."""

    async def scenario() -> list[httpx.Response | Exception]:
        task = asyncio.create_task(_enrol_many(server.url, clip, count))
        async with httpx.AsyncClient(timeout=120, headers=auth(ADMIN_KEY)) as client:
            first = await client.post(
                f"{server.url}/v1/models/{IDENTITY}/gallery/p0", files=upload(clip)
            )
        assert first.status_code == 201, first.text
        await asyncio.sleep(delay_s)
        server.process.send_signal(stop)
        return [first, *await task]

    return asyncio.run(scenario())


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
def test_every_acknowledged_enrolment_survives_the_server_stopping_mid_burst(
    identity_repo: Path, clip, tmp_path: Path, stop: signal.Signals
) -> None:
    db = tmp_path / "g.db"
    server = Server(identity_repo, tmp_path / "server.log", server_env(f"sqlite:///{db}"))
    server.start()
    try:
        responses = _in_flight(server, clip, 12, stop, delay_s=0.05)
    finally:
        server.process.wait(timeout=60)
    acknowledged = [r for r in responses if isinstance(r, httpx.Response) and r.status_code == 201]
    assert acknowledged, [str(r) for r in responses]
    stored = _stored(db)
    for r in acknowledged:
        person = r.json()["person_id"]
        assert r.json()["request_id"] in stored.get(person, set()), (person, stored)
    if stop is signal.SIGTERM:
        # A graceful stop answers what it had accepted: nothing is cut off mid-way.
        refused = [r for r in responses if isinstance(r, httpx.Response) and r.status_code != 201]
        assert all(r.status_code == 503 for r in refused), [r.text for r in refused]
    # The file is whole: a restarted server serves every stored embedding.
    again = Server(identity_repo, tmp_path / "again.log", server_env(f"sqlite:///{db}")).start()
    try:
        for person, request_ids in stored.items():
            got = httpx.get(
                f"{again.url}/v1/models/{IDENTITY}/gallery/{person}", headers=auth(), timeout=30
            ).json()
            assert {e["request_id"] for e in got["enrolments"]} == request_ids
    finally:
        again.stop()


def _refused_at_start(identity_repo: Path, db: Path, log: Path) -> str:
    server = Server(identity_repo, log, server_env(f"sqlite:///{db}"))
    with pytest.raises(RuntimeError, match="exited early") as exc:
        server.start()
    return str(exc.value)


def test_a_damaged_gallery_file_stops_start_up_with_the_fix(
    identity_repo: Path, tmp_path: Path
) -> None:
    db = tmp_path / "g.db"
    db.write_bytes(b"not a database at all " * 200)
    message = _refused_at_start(identity_repo, db, tmp_path / "server.log")
    assert "is not a usable SQLite gallery" in message and "move it aside" in message
    assert db.read_bytes().startswith(b"not a database")  # left as it was, for the operator


def test_a_gallery_of_a_newer_schema_stops_start_up_naming_both_versions(
    identity_repo: Path, tmp_path: Path
) -> None:
    db = tmp_path / "g.db"
    store = open_store(f"sqlite:///{db}")
    store.migrate()
    store.close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE gallery_meta SET value = '7' WHERE key = 'schema_version'")
    message = _refused_at_start(identity_repo, db, tmp_path / "server.log")
    assert "schema version 7, newer than this server's 1" in message
