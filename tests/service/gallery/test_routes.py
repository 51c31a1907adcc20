"""The gallery over HTTP on a real server (SQLite file): enrol, identify, verify, delete, faults."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from gallery_helpers import ADMIN_KEY, IDENTITY, IDENTITY_B, LIPREADING, USER_KEY, auth, server_env
from live_server import Server
from service_helpers import VIEWS, upload, write_clip

from mplstm.core.package import load_package


@pytest.fixture(scope="module")
def server(identity_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("gallery-server")
    srv = Server(identity_repo, folder / "server.log", server_env(f"sqlite:///{folder / 'g.db'}"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def people(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Path]]:
    root = tmp_path_factory.mktemp("people")
    return [write_clip(root / f"person{i}", seed=200 + i) for i in range(4)]


def _url(server: Server, path: str) -> str:
    return f"{server.url}/v1/models/{IDENTITY}/{path}"


def _enrol(
    server: Server, person: str, clip: dict[str, Path], name: str | None = None
) -> httpx.Response:
    data = {"display_name": name} if name else None
    return httpx.post(
        _url(server, f"gallery/{person}"), files=upload(clip), data=data, headers=auth(ADMIN_KEY),
        timeout=60,
    )  # fmt: skip


def test_enrol_identify_verify_and_delete_over_http(server: Server, people) -> None:
    first = _enrol(server, "alice", people[0], "Alice A.")
    assert first.status_code == 201, first.text
    assert first.json()["embeddings"] == 1 and first.json()["display_name"] == "Alice A."
    assert first.json()["views_used"] == list(VIEWS)
    assert _enrol(server, "alice", people[1]).json()["embeddings"] == 2
    assert _enrol(server, "bob", people[2]).status_code == 201

    metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    assert f'mplstm_gallery_people{{model="{IDENTITY}"}} 2.0' in metrics
    assert "mplstm_gallery_available 1.0" in metrics
    page = httpx.get(_url(server, "gallery"), headers=auth(), timeout=30).json()
    assert [(p["person_id"], p["embeddings"]) for p in page["people"]] == [("alice", 2), ("bob", 1)]
    detail = httpx.get(_url(server, "gallery/alice"), headers=auth(), timeout=30).json()
    assert detail["display_name"] == "Alice A."
    assert detail["enrolments"][0]["request_id"] == first.json()["request_id"]

    # Bob's template is exactly the embedding of his one clip: the same clip matches it.
    found = httpx.post(
        _url(server, "identify?top_k=2"), files=upload(people[2]), headers=auth(), timeout=60
    ).json()
    assert found["matches"][0]["person_id"] == "bob" and found["matches"][0]["score"] > 0.9999
    assert len(found["matches"]) == 2
    best = found["matches"][0]
    assert found["decision"] == ("bob" if best["score"] >= found["threshold"] else "unknown")
    thresholds = load_package(server.models_dir / IDENTITY / "1").manifest.open_set_thresholds()
    assert found["threshold"] == thresholds[0.01] and found["far"] == 0.01

    verified = httpx.post(
        _url(server, "verify/alice?far=0.001"), files=upload(people[0]), headers=auth(), timeout=60
    ).json()
    assert verified["threshold"] == thresholds[0.001]
    assert verified["accepted"] == (verified["score"] >= verified["threshold"])
    own = httpx.post(
        _url(server, "verify/bob?threshold=0.999"),
        files=upload(people[2]),
        headers=auth(),
        timeout=60,
    ).json()
    assert own["accepted"] and own["far"] is None

    gone = httpx.delete(_url(server, "gallery/alice"), headers=auth(ADMIN_KEY), timeout=30)
    assert gone.json() == {"person_id": "alice", "embeddings_deleted": 2}
    assert httpx.get(_url(server, "gallery/alice"), headers=auth(), timeout=30).status_code == 404
    after = httpx.post(
        _url(server, "identify?top_k=5"), files=upload(people[0]), headers=auth(), timeout=60
    ).json()
    assert "alice" not in {m["person_id"] for m in after["matches"]}


def test_enrolment_and_deletion_need_an_admin_key(server: Server, people) -> None:
    user = httpx.post(
        _url(server, "gallery/carol"), files=upload(people[3]), headers=auth(USER_KEY), timeout=60
    )
    assert user.status_code == 403 and user.json()["error"] == "forbidden"
    anonymous = httpx.post(_url(server, "gallery/carol"), files=upload(people[3]), timeout=60)
    assert anonymous.status_code == 401
    assert (
        httpx.delete(_url(server, "gallery/bob"), headers=auth(USER_KEY), timeout=30).status_code
        == 403
    )
    # An admin key may do what a normal key may.
    assert (
        httpx.get(_url(server, "gallery"), headers=auth(ADMIN_KEY), timeout=30).status_code == 200
    )


def test_a_model_without_an_embedding_has_no_gallery(server: Server, people) -> None:
    base = f"{server.url}/v1/models/{LIPREADING}"
    for response in (
        httpx.get(f"{base}/gallery", headers=auth(), timeout=30),
        httpx.post(f"{base}/identify", files=upload(people[0]), headers=auth(), timeout=60),
        httpx.post(
            f"{base}/gallery/x", files=upload(people[0]), headers=auth(ADMIN_KEY), timeout=60
        ),
    ):
        assert response.status_code == 404 and response.json()["error"] == "no_gallery"
        assert "no embedding output" in response.json()["detail"]
    assert (
        httpx.get(f"{server.url}/v1/models/nope/gallery", headers=auth(), timeout=30).json()[
            "error"
        ]
        == "model_not_found"
    )


def test_unknown_people_are_404(server: Server, people) -> None:
    for response in (
        httpx.get(_url(server, "gallery/nobody"), headers=auth(), timeout=30),
        httpx.delete(_url(server, "gallery/nobody"), headers=auth(ADMIN_KEY), timeout=30),
        httpx.post(
            _url(server, "verify/nobody"), files=upload(people[0]), headers=auth(), timeout=60
        ),
    ):
        assert response.status_code == 404 and response.json()["error"] == "person_not_found"


def test_an_empty_gallery_identifies_everyone_as_unknown(server: Server, people) -> None:
    answer = httpx.post(
        f"{server.url}/v1/models/{IDENTITY_B}/identify",
        files=upload(people[0]),
        headers=auth(),
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["matches"] == [] and answer.json()["decision"] == "unknown"
    assert (
        httpx.get(
            f"{server.url}/v1/models/{IDENTITY_B}/gallery", headers=auth(), timeout=30
        ).json()["total"]
        == 0
    )


@pytest.mark.parametrize(
    "person", [".hidden", "-dash", "a%20b", "%C3%A9t%C3%A9", "x" * 129, "a;drop"]
)
def test_a_person_id_that_is_not_a_safe_identifier_is_422(
    server: Server, people, person: str
) -> None:
    response = _enrol(server, person, people[0])
    assert response.status_code == 422 and response.json()["error"] == "bad_person_id", (
        response.text
    )


def test_the_same_person_enrolled_from_many_requests_at_once_keeps_every_embedding(
    server: Server, people
) -> None:
    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120, headers=auth(ADMIN_KEY)) as client:
            return await asyncio.gather(
                *(
                    client.post(_url(server, "gallery/dave"), files=upload(people[i % 4]))
                    for i in range(8)
                )
            )

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [201] * 8, [r.text for r in responses]
    detail = httpx.get(_url(server, "gallery/dave"), headers=auth(), timeout=30).json()
    assert detail["embeddings"] == 8
    assert {e["request_id"] for e in detail["enrolments"]} == {
        r.json()["request_id"] for r in responses
    }


def test_a_failed_camera_is_handled_as_predict_handles_it(
    server: Server, people, tmp_path: Path
) -> None:
    # The model was trained with view dropout: a missing camera is masked and named.
    two = {k: v for k, v in people[3].items() if k != "side"}
    enrolled = _enrol(server, "erin", two)
    assert enrolled.status_code == 201, enrolled.text
    assert enrolled.json()["views_used"] == ["front", "profile"]
    assert httpx.get(_url(server, "gallery/erin"), headers=auth(), timeout=30).json()["enrolments"][
        0
    ]["views"] == ["front", "profile"]
    # A broken file is refused as predict refuses it, and nothing is enrolled.
    broken = dict(people[3], side=tmp_path / "side.mp4")
    broken["side"].write_bytes(b"\x00" * 1000)
    refused = _enrol(server, "frank", broken)
    assert refused.status_code in (415, 422), refused.text
    assert httpx.get(_url(server, "gallery/frank"), headers=auth(), timeout=30).status_code == 404
    unknown_view = _enrol(server, "frank", {**people[3], "top": people[3]["front"]})
    assert unknown_view.status_code == 422 and unknown_view.json()["error"] == "bad_views"
    # A camera sent but dead (a lens cap) fails its check and is masked, as in predict.
    capped = write_clip(tmp_path / "capped", seed=203, failures={"side": "black"})
    masked = _enrol(server, "grace", capped)
    assert masked.status_code == 201, masked.text
    assert masked.json()["views_used"] == ["front", "profile"]


def test_thresholds_come_from_the_package_or_the_request(server: Server, people) -> None:
    unlisted = httpx.post(
        _url(server, "identify?far=0.05"), files=upload(people[0]), headers=auth(), timeout=60
    )
    assert unlisted.status_code == 422 and unlisted.json()["error"] == "no_threshold"
    assert "0.001, 0.01" in unlisted.json()["detail"]
    both = httpx.post(
        _url(server, "identify?far=0.01&threshold=0.5"),
        files=upload(people[0]),
        headers=auth(),
        timeout=60,
    )
    assert both.status_code == 400


def test_v2_lists_and_returns_the_embedding(server: Server) -> None:
    meta = httpx.get(f"{server.url}/v2/models/{IDENTITY}", headers=auth(), timeout=30).json()
    assert {"name": "embedding", "datatype": "FP32", "shape": [-1, 8]} in meta["outputs"]
    clip = np.zeros((2, 3, 8, 1, 32, 32), np.uint8).tolist()
    body = {
        "inputs": [
            {"name": "clip", "datatype": "UINT8", "shape": [2, 3, 8, 1, 32, 32], "data": clip}
        ]
    }
    answer = httpx.post(
        f"{server.url}/v2/models/{IDENTITY}/infer", json=body, headers=auth(), timeout=60
    )
    outputs = {o["name"]: o for o in answer.json()["outputs"]}
    assert outputs["embedding"]["shape"] == [2, 8]
    vectors = np.asarray(outputs["embedding"]["data"]).reshape(2, 8)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_clips_embed_alike_through_the_decode_workers_and_the_batcher(
    server: Server, identity_repo: Path, people, tmp_path: Path
) -> None:
    # The same database, a second server whose video route infers through the batcher.
    url = f"sqlite:///{Path(server.env['MPLSTM_GALLERY_URL'].removeprefix('sqlite:///'))}"
    env = server_env(url, MPLSTM_VIDEO_INFERENCE="main")
    batcher = Server(identity_repo, tmp_path / "batcher.log", env).start()
    try:
        assert _enrol(server, "gina", people[1]).status_code == 201

        def verify(s: Server) -> httpx.Response:
            return httpx.post(
                f"{s.url}/v1/models/{IDENTITY}/verify/gina?threshold=0.5",
                files=upload(people[1]), headers=auth(), timeout=60,
            )  # fmt: skip

        # The second server's index follows the database's change log (about a second).
        deadline = time.monotonic() + 30
        while (late := verify(batcher)).status_code == 404 and time.monotonic() < deadline:
            time.sleep(0.2)
        answers = [verify(server).json(), late.json()]
        assert all("score" in a for a in answers), answers
        assert answers[0]["score"] == pytest.approx(answers[1]["score"], abs=1e-4)
        assert answers[1]["score"] > 0.9999
    finally:
        batcher.stop()
