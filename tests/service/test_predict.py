"""/v1: predictions on real video clips, over HTTP, against ONNX Runtime run directly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
from live_server import Server
from service_helpers import DROPOUT_MODEL, FULL_MODEL, LABELS, VIEWS, upload

from mplstm.core.package import ONNX_NAME, load_package
from mplstm.core.preprocess import load_clip


def direct_probabilities(package_dir: Path, views: dict[str, Path | None]) -> np.ndarray:
    """The package's model run by a plain ONNX Runtime session on the `core` preprocessing."""
    package = load_package(package_dir)
    clip = load_clip(views, package.manifest.preprocess_config())
    session = ort.InferenceSession(str(package.file(ONNX_NAME)), providers=["CPUExecutionProvider"])
    _, probabilities = session.run(
        None, {"clip": clip.frames[None], "view_mask": clip.view_mask[None]}
    )
    return probabilities[0]


def test_predict_answers_every_field_with_scores_equal_to_onnxruntime_on_core_preprocessing(
    server: Server, repo: Path, clips: list[dict[str, Path]]
) -> None:
    for clip in clips[:2]:
        r = httpx.post(
            f"{server.url}/v1/models/{FULL_MODEL}/predict?top_k=4",
            files=upload(clip),
            headers={"X-Request-ID": "req-123"},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == {"name": FULL_MODEL, "version": "1"}
        assert body["task"] == "lipreading"
        assert body["views_used"] == list(VIEWS)
        assert body["request_id"] == "req-123" == r.headers["x-request-id"]
        assert set(body["timings_ms"]) == {"decode", "queue", "inference", "total"}
        assert body["timings_ms"]["total"] >= body["timings_ms"]["decode"]
        scores = {p["label"]: p["score"] for p in body["predictions"]}
        assert sorted(scores) == sorted(LABELS)
        expected = direct_probabilities(repo / FULL_MODEL / "1", clip)
        np.testing.assert_allclose([scores[label] for label in LABELS], expected, rtol=0, atol=1e-5)


def test_top_k_returns_the_k_best_labels_best_first(
    server: Server, clips: list[dict[str, Path]]
) -> None:
    all4 = httpx.post(f"{server.url}/v1/predict?top_k=4", files=upload(clips[0])).json()
    top2 = httpx.post(f"{server.url}/v1/predict?top_k=2", files=upload(clips[0])).json()
    scores = [p["score"] for p in all4["predictions"]]
    assert scores == sorted(scores, reverse=True)
    assert top2["predictions"] == all4["predictions"][:2]
    assert top2["model"]["name"] == DROPOUT_MODEL  # /v1/predict serves MPLSTM_DEFAULT_MODEL
    # top_k as a form field, as an HTML form would send it.
    as_field = httpx.post(f"{server.url}/v1/predict", files=upload(clips[0]), data={"top_k": "1"})
    assert as_field.json()["predictions"] == all4["predictions"][:1]


def test_missing_view_accepted_by_a_model_trained_with_view_dropout(
    server: Server, repo: Path, clips: list[dict[str, Path]]
) -> None:
    two = {name: clips[1][name] for name in ("profile", "front")}  # order-free
    r = httpx.post(f"{server.url}/v1/models/{DROPOUT_MODEL}/predict?top_k=4", files=upload(two))
    assert r.status_code == 200, r.text
    assert r.json()["views_used"] == ["front", "profile"]
    scores = {p["label"]: p["score"] for p in r.json()["predictions"]}
    expected = direct_probabilities(repo / DROPOUT_MODEL / "1", {**two, "side": None})
    np.testing.assert_allclose([scores[label] for label in LABELS], expected, atol=1e-5)


def test_missing_view_refused_with_422_naming_it_when_the_model_needs_every_view(
    server: Server, clips: list[dict[str, Path]]
) -> None:
    two = {name: clips[0][name] for name in ("front", "profile")}
    r = httpx.post(f"{server.url}/v1/models/{FULL_MODEL}/predict", files=upload(two))
    assert r.status_code == 422
    assert r.json()["error"] == "bad_views"
    assert "'side'" in r.json()["detail"]


def test_unknown_and_duplicate_view_names_are_422(
    server: Server, clips: list[dict[str, Path]]
) -> None:
    files = upload(clips[0])
    unknown = [("top", files[0][1]), *files[1:]]
    r = httpx.post(f"{server.url}/v1/predict", files=unknown)
    assert (r.status_code, r.json()["error"]) == (422, "bad_views")
    assert "top" in r.json()["detail"]
    r = httpx.post(f"{server.url}/v1/predict", files=[*files, files[0]])
    assert (r.status_code, r.json()["error"]) == (422, "bad_views")
    assert "front" in r.json()["detail"]


def test_models_listing_describes_labels_views_and_input_size(server: Server) -> None:
    listing = httpx.get(f"{server.url}/v1/models").json()["models"]
    assert [m["name"] for m in listing] == [DROPOUT_MODEL, FULL_MODEL]
    one = httpx.get(f"{server.url}/v1/models/{DROPOUT_MODEL}").json()
    assert one == listing[0]
    assert one["labels"] == list(LABELS)
    assert [v["name"] for v in one["views"]] == list(VIEWS)
    assert (one["frames"], one["height"], one["width"], one["channels"]) == (8, 32, 32, 1)
    assert one["allows_missing_views"] is True
    assert listing[1]["allows_missing_views"] is False
    assert "CPUExecutionProvider" in one["backend"]
    missing = httpx.get(f"{server.url}/v1/models/nope")
    assert (missing.status_code, missing.json()["error"]) == (404, "model_not_found")


def test_predict_cli_prints_a_table_and_json(server: Server, clips: list[dict[str, Path]]) -> None:
    views = [arg for name, path in clips[0].items() for arg in ("--view", f"{name}={path}")]
    base = [sys.executable, "-m", "mplstm", "predict", "--url", server.url, *views]
    table = subprocess.run([*base, "--top-k", "2"], capture_output=True, text=True, check=True)
    assert table.stdout.splitlines()[0].split() == ["label", "score"]
    assert len([ln for ln in table.stdout.splitlines() if ln[:1] in LABELS]) == 2
    answer = subprocess.run([*base, "--json"], capture_output=True, text=True, check=True)
    assert '"predictions"' in answer.stdout
    bad = subprocess.run([*base, "--model", "nope"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "model_not_found" in bad.stderr


def test_service_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "from mplstm.service.app import create_app\n"
        "from mplstm.service.settings import load_settings\n"
        "import mplstm.inference.tensorrt, mplstm.inference.select, mplstm.service.client\n"
        "import mplstm.cli.serve, mplstm.cli.predict\n"
        "create_app(load_settings())\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'torch'"
        " or m.startswith(('mplstm.training', 'mplstm.export')))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
