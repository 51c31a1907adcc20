"""Camera checks over HTTP: a failed camera is masked and reported with the accuracy to
expect from the cameras left, or refused where the model needs it; the switches; the
accuracy floor; the per-camera counters."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from live_server import Server
from prometheus_client.parser import text_string_to_metric_families
from service_helpers import DROPOUT_MODEL, FULL_MODEL, LABELS, SHARED_ENV, VIEWS, upload, write_clip

from mplstm.core.camera_checks import REASONS
from mplstm.core.manifest import ClipRecord, write_manifest
from mplstm.core.package import ONNX_NAME, load_package, write_package_manifest
from mplstm.core.preprocess import load_clip
from mplstm.core.synth.camera_failures import FAILURE_KINDS, expected_failures
from mplstm.core.view_subsets import SubsetAccuracy, ViewSubsetTable, view_subsets
from mplstm.inference.view_accuracy import add_view_accuracy

PLACEMENTS = ("workers", "main")
TWO_AT_ONCE = {VIEWS[0]: "black", VIEWS[2]: "frozen"}


@pytest.fixture(scope="module")
def measured_repo(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared packages, each with its view-subset table measured on 8 labelled clips."""
    work = tmp_path_factory.mktemp("measured")
    records = [
        ClipRecord(
            f"c{i}", LABELS[i % len(LABELS)], "s1", "test", write_clip(work / f"c{i}", 10 + i)
        )
        for i in range(8)
    ]
    manifest = write_manifest(records, work / "held-out.jsonl")
    models = Path(shutil.copytree(repo, work / "models"))
    for name in (DROPOUT_MODEL, FULL_MODEL):
        add_view_accuracy(models / name, manifest, "test")
    return models


@pytest.fixture(scope="module", params=PLACEMENTS)
def cameras_server(
    request: pytest.FixtureRequest, measured_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """Camera checks on (the default), inference in the workers or through the batcher."""
    env = {**SHARED_ENV, "MPLSTM_VIDEO_INFERENCE": request.param}
    srv = Server(measured_repo, tmp_path_factory.mktemp("cameras") / "server.log", env)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def failed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """A clip per failure kind on one camera, and one with two cameras failed at once."""
    root = tmp_path_factory.mktemp("failed")
    clips = {
        kind: write_clip(root / kind, k, failures={VIEWS[1]: kind})
        for k, kind in enumerate(FAILURE_KINDS)
    }
    clips["black+frozen"] = write_clip(root / "two", 7, failures=TWO_AT_ONCE)
    return clips


def _predict(server: Server, model: str, clip: dict[str, Path], query: str = "") -> httpx.Response:
    url = f"{server.url}/v1/models/{model}/predict?top_k={len(LABELS)}{query}"
    return httpx.post(url, files=upload(clip), timeout=60)


def _direct_probabilities(package: Path, views: dict[str, Path | None]) -> np.ndarray:
    loaded = load_package(package)
    config = dataclasses.replace(loaded.manifest.preprocess_config(), allow_missing_views=True)
    clip = load_clip(views, config)
    session = ort.InferenceSession(str(loaded.file(ONNX_NAME)), providers=["CPUExecutionProvider"])
    return session.run(
        ["probabilities"], {"clip": clip.frames[None], "view_mask": clip.view_mask[None]}
    )[0][0]


def _counters(server: Server) -> dict[tuple[str, ...], float]:
    """(sample name, *label values) -> value of the camera-check counters."""
    out = {}
    for family in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text):
        for sample in family.samples:
            if sample.name.startswith("mplstm_") and sample.name.endswith("_total"):
                labels = [
                    sample.labels[k] for k in ("model", "view", "reason") if k in sample.labels
                ]
                out[(sample.name, *labels)] = sample.value
    return out


def test_a_good_clip_drops_nothing_and_expects_the_all_view_accuracy(
    cameras_server: Server, measured_repo: Path, clips: list[dict[str, Path]]
) -> None:
    r = _predict(cameras_server, DROPOUT_MODEL, clips[0])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["views_used"] == list(VIEWS) and body["views_dropped"] == []
    manifest = load_package(measured_repo / DROPOUT_MODEL / "1").manifest
    assert body["expected_accuracy"] == manifest.expected_accuracy(VIEWS)


def test_a_failed_camera_is_masked_named_and_costs_the_accuracy_of_the_views_left(
    cameras_server: Server, measured_repo: Path, failed: dict[str, dict[str, Path]]
) -> None:
    package = measured_repo / DROPOUT_MODEL / "1"
    manifest = load_package(package).manifest
    for kind in [*FAILURE_KINDS, "black+frozen"]:
        clip = failed[kind]
        r = _predict(cameras_server, DROPOUT_MODEL, clip)
        assert r.status_code == 200, (kind, r.text)
        body = r.json()
        cases = TWO_AT_ONCE if kind == "black+frozen" else {VIEWS[1]: kind}
        expected = expected_failures(VIEWS, cases)
        assert {d["view"]: d["reason"] for d in body["views_dropped"]} == expected, kind
        assert all(d["detail"] for d in body["views_dropped"])
        used = [v for v in VIEWS if v not in expected]
        assert body["views_used"] == used
        assert body["expected_accuracy"] == manifest.expected_accuracy(used)
        # Answered as if the failed cameras had not been sent.
        scores = {p["label"]: p["score"] for p in body["predictions"]}
        direct = _direct_probabilities(
            package, {v: (clip[v] if v in used else None) for v in VIEWS}
        )
        np.testing.assert_allclose([scores[label] for label in LABELS], direct, atol=1e-5)


def test_a_failed_camera_is_refused_with_422_camera_failed_where_every_view_is_needed(
    cameras_server: Server, failed: dict[str, dict[str, Path]]
) -> None:
    r = _predict(cameras_server, FULL_MODEL, failed["frozen"])
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "camera_failed"
    assert f"view {VIEWS[1]!r}: frozen" in body["detail"]
    assert [(d["view"], d["reason"]) for d in body["views_failed"]] == [(VIEWS[1], "frozen")]


def test_camera_checks_off_for_one_request_keep_the_failed_camera(
    cameras_server: Server, failed: dict[str, dict[str, Path]]
) -> None:
    for query in ("&camera_checks=off", "&camera_checks=false"):
        r = _predict(cameras_server, FULL_MODEL, failed["black"], query)
        assert r.status_code == 200, r.text
        assert r.json()["views_used"] == list(VIEWS) and r.json()["views_dropped"] == []
    as_field = httpx.post(
        f"{cameras_server.url}/v1/models/{FULL_MODEL}/predict",
        files=upload(failed["black"]),
        data={"camera_checks": "off"},
        timeout=60,
    )
    assert as_field.status_code == 200 and as_field.json()["views_dropped"] == []
    bad = httpx.post(
        f"{cameras_server.url}/v1/predict",
        files=upload(failed["black"]),
        data={"camera_checks": "maybe"},
        timeout=60,
    )
    assert (bad.status_code, bad.json()["error"]) == (400, "bad_request")
    assert "camera_checks" in bad.json()["detail"]
    bad_query = _predict(cameras_server, DROPOUT_MODEL, failed["black"], "&camera_checks=maybe")
    assert (bad_query.status_code, bad_query.json()["error"]) == (422, "invalid_request")


def test_model_description_shows_the_view_subset_table(
    cameras_server: Server, measured_repo: Path
) -> None:
    one = httpx.get(f"{cameras_server.url}/v1/models/{DROPOUT_MODEL}").json()
    table = load_package(measured_repo / DROPOUT_MODEL / "1").manifest.view_accuracy
    assert table is not None and one["view_accuracy"] == table.to_dict()
    assert len(one["view_accuracy"]["subsets"]) == len(view_subsets(len(VIEWS)))


def test_dropped_views_are_counted_per_model_camera_and_reason(
    cameras_server: Server, failed: dict[str, dict[str, Path]], clips: list[dict[str, Path]]
) -> None:
    before = _counters(cameras_server)
    # Every camera of both models has its series from the start.
    for model in (DROPOUT_MODEL, FULL_MODEL):
        assert ("mplstm_camera_checked_clips_total", model) in before
        for view in VIEWS:
            for reason in REASONS:
                assert ("mplstm_view_dropped_total", model, view, reason) in before
    assert _predict(cameras_server, DROPOUT_MODEL, failed["frozen"]).status_code == 200
    assert _predict(cameras_server, DROPOUT_MODEL, failed["frozen"]).status_code == 200
    assert _predict(cameras_server, FULL_MODEL, failed["snow"]).status_code == 422
    assert _predict(cameras_server, DROPOUT_MODEL, clips[1]).status_code == 200
    assert (
        _predict(cameras_server, DROPOUT_MODEL, failed["frozen"], "&camera_checks=off").status_code
        == 200
    )
    after = _counters(cameras_server)
    changed = {
        key: after[key] - before.get(key, 0.0)
        for key in after
        if after[key] != before.get(key, 0.0)
    }
    assert changed == {
        ("mplstm_view_dropped_total", DROPOUT_MODEL, VIEWS[1], "frozen"): 2.0,
        ("mplstm_view_dropped_total", FULL_MODEL, VIEWS[1], "no_signal"): 1.0,
        ("mplstm_camera_checked_clips_total", DROPOUT_MODEL): 3.0,
        ("mplstm_camera_checked_clips_total", FULL_MODEL): 1.0,
    }


def test_predict_cli_reports_dropped_cameras_and_the_expected_accuracy(
    cameras_server: Server, failed: dict[str, dict[str, Path]]
) -> None:
    views = [arg for name, path in failed["blank"].items() for arg in ("--view", f"{name}={path}")]
    base = [sys.executable, "-m", "mplstm", "predict", "--url", cameras_server.url, *views]
    out = subprocess.run(base, capture_output=True, text=True, check=True).stdout
    assert f"dropped {VIEWS[1]}: blank" in out and "expected accuracy on these views" in out
    off = subprocess.run([*base, "--no-camera-checks"], capture_output=True, text=True, check=True)
    assert "dropped" not in off.stdout


# -- a server with the checks off by default and an accuracy floor ---------------------------


def _floor_table(names: tuple[str, ...], without: str) -> ViewSubsetTable:
    """A table in which losing `without` costs half the accuracy."""
    return ViewSubsetTable(
        data="held-out.jsonl",
        split="test",
        clips=10,
        runtime="onnxruntime",
        subsets=tuple(
            SubsetAccuracy(views, 1.0 if without in views else 0.5)
            for views in (tuple(names[v] for v in s) for s in view_subsets(len(names)))
        ),
    )


@pytest.fixture(scope="module")
def floor_server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """MPLSTM_CAMERA_CHECKS=false and MPLSTM_MIN_EXPECTED_ACCURACY=0.8 over packages whose
    table says that without the side camera they are 50% accurate."""
    work = tmp_path_factory.mktemp("floor")
    models = Path(shutil.copytree(repo, work / "models"))
    package = load_package(models / DROPOUT_MODEL / "1")
    package.manifest.view_accuracy = _floor_table(VIEWS, VIEWS[1])
    write_package_manifest(package.path, package.manifest)
    env = {**SHARED_ENV, "MPLSTM_CAMERA_CHECKS": "false", "MPLSTM_MIN_EXPECTED_ACCURACY": "0.8"}
    srv = Server(models, work / "server.log", env)
    srv.start()
    yield srv
    srv.stop()


def test_checks_off_by_setting_and_on_again_for_one_request(
    floor_server: Server, failed: dict[str, dict[str, Path]]
) -> None:
    r = _predict(floor_server, FULL_MODEL, failed["frozen"])
    assert r.status_code == 200 and r.json()["views_dropped"] == []
    again = _predict(floor_server, FULL_MODEL, failed["frozen"], "&camera_checks=on")
    assert (again.status_code, again.json()["error"]) == (422, "camera_failed")


def test_views_left_below_the_accuracy_floor_are_refused_with_too_few_cameras(
    floor_server: Server, failed: dict[str, dict[str, Path]], clips: list[dict[str, Path]]
) -> None:
    good = _predict(floor_server, DROPOUT_MODEL, clips[2])
    assert good.status_code == 200 and good.json()["expected_accuracy"] == 1.0
    # The side camera frozen and masked: 50% expected, under the 80% floor.
    r = _predict(floor_server, DROPOUT_MODEL, failed["frozen"], "&camera_checks=on")
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "too_few_cameras"
    assert "50.0%" in body["detail"] and "80.0%" in body["detail"] and VIEWS[1] in body["detail"]
    assert [(d["view"], d["reason"]) for d in body["views_failed"]] == [(VIEWS[1], "frozen")]
    # Not sending the side camera at all is held to the same floor.
    two = {v: clips[2][v] for v in VIEWS if v != VIEWS[1]}
    missing = _predict(floor_server, DROPOUT_MODEL, two)
    assert (missing.status_code, missing.json()["error"]) == (422, "too_few_cameras")
    # The other model has no table: the floor cannot apply, and the log says so.
    assert _predict(floor_server, FULL_MODEL, clips[2]).json()["expected_accuracy"] is None
    assert "has no view-subset accuracy table" in floor_server.log()
