"""Auth, model (re)loading, tampered packages and graceful shutdown, on real servers."""

from __future__ import annotations

import json
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from live_server import Server
from raw_http import RawClient, RawResponse, request_head, stalled_upload, wait_for_metric
from service_helpers import DROPOUT_MODEL, upload, write_clip


def test_api_keys_guard_every_route_but_health_and_metrics(
    repo: Path, tmp_path: Path, clips: list[dict[str, Path]]
) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("# ops team\nfile-key\n\n")
    env = {
        "MPLSTM_API_KEYS": "env-key-1, env-key-2",
        "MPLSTM_API_KEY_FILE": str(key_file),
        "MPLSTM_LOG_FORMAT": "json",
        "MPLSTM_DEFAULT_MODEL": DROPOUT_MODEL,
    }
    server = Server(repo, tmp_path / "server.log", env).start()
    try:
        models = f"{server.url}/v1/models"
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "env-key"}):
            r = httpx.get(models, headers=headers)
            assert (r.status_code, r.json()["error"]) == (401, "unauthorized")
            assert r.headers["www-authenticate"] == "Bearer"
        for headers in (
            {"Authorization": "Bearer env-key-2"},
            {"authorization": "bearer file-key"},
            {"X-API-Key": "env-key-1"},
        ):
            assert httpx.get(models, headers=headers).status_code == 200
        r = httpx.post(f"{server.url}/v1/models/{DROPOUT_MODEL}/predict", files=upload(clips[0]))
        assert r.status_code == 401
        r = httpx.post(
            f"{server.url}/v1/predict",
            files=upload(clips[0]),
            headers={"X-API-Key": "file-key", "X-Request-ID": "trace-42"},
        )
        assert r.status_code == 200
        for open_path in ("/v2/health/live", "/v2/health/ready", "/metrics"):
            assert httpx.get(server.url + open_path).status_code == 200
    finally:
        server.stop()
    lines = [json.loads(ln) for ln in server.log().splitlines() if ln.startswith("{")]
    assert lines and {"time", "level", "logger", "request_id", "message"} <= lines[0].keys()
    assert not any("authentication is OFF" in ln["message"] for ln in lines)
    predict_lines = [ln for ln in lines if ln["request_id"] == "trace-42"]
    assert predict_lines and "POST /v1/predict 200" in predict_lines[-1]["message"]


def test_auth_is_off_with_a_warning_when_no_key_is_configured(server: Server) -> None:
    assert httpx.get(f"{server.url}/v1/models").status_code == 200
    assert "authentication is OFF" in server.log()


def _tamper(folder: Path) -> None:
    """Change one byte of the package's model.onnx (its manifest keeps the old sha256)."""
    onnx_path = folder / "model.onnx"
    data = bytearray(onnx_path.read_bytes())
    data[len(data) // 2] ^= 0x01
    onnx_path.write_bytes(bytes(data))


def _version(server: Server) -> str:
    return httpx.get(f"{server.url}/v2/models/{DROPOUT_MODEL}").json()["versions"][0]


def test_tampered_package_refused_at_load_and_failed_reload_keeps_the_old_version(
    repo_copy: Path, tmp_path: Path, clips: list[dict[str, Path]]
) -> None:
    shutil.copytree(repo_copy / DROPOUT_MODEL, repo_copy / "broken")
    _tamper(repo_copy / "broken" / "1")
    server = Server(repo_copy, tmp_path / "server.log").start(wait_ready=False)
    try:
        # Refused at start-up with a log line naming the file; the server is not ready.
        server.wait("/v2/models/tiny/ready")
        assert "model broken: refusing to load" in server.log()
        assert "model.onnx does not match its sha256" in server.log()
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 503
        broken = httpx.get(f"{server.url}/v2/models/broken/ready")
        assert (broken.status_code, broken.json()["error"]) == (503, "model_not_ready")
        assert "tampered" in broken.json()["detail"]
        # Unloading the broken model leaves every wanted model serving: ready.
        assert httpx.post(f"{server.url}/v2/repository/models/broken/unload").status_code == 200
        assert server.healthy()

        # Reload picks up a new version without a restart.
        shutil.copytree(repo_copy / DROPOUT_MODEL / "1", repo_copy / DROPOUT_MODEL / "2")
        r = httpx.post(f"{server.url}/v2/repository/models/{DROPOUT_MODEL}/load")
        assert r.status_code == 200 and r.json()["version"] == "2"
        assert _version(server) == "2"

        # A tampered version 3: the load fails, version 2 keeps serving.
        shutil.copytree(repo_copy / DROPOUT_MODEL / "1", repo_copy / DROPOUT_MODEL / "3")
        _tamper(repo_copy / DROPOUT_MODEL / "3")
        r = httpx.post(f"{server.url}/v2/repository/models/{DROPOUT_MODEL}/load")
        assert (r.status_code, r.json()["error"]) == (400, "model_load_failed")
        assert "version 2 keeps serving" in r.json()["detail"]
        assert _version(server) == "2"
        predicted = httpx.post(
            f"{server.url}/v1/models/{DROPOUT_MODEL}/predict", files=upload(clips[0])
        )
        assert predicted.status_code == 200 and predicted.json()["model"]["version"] == "2"
        assert server.healthy()

        # Unload, then the model is known but not serving.
        r = httpx.post(f"{server.url}/v2/repository/models/{DROPOUT_MODEL}/unload")
        assert r.status_code == 200
        r = httpx.post(f"{server.url}/v1/models/{DROPOUT_MODEL}/predict", files=upload(clips[0]))
        assert (r.status_code, r.json()["error"]) == (503, "model_not_ready")
        index = httpx.post(f"{server.url}/v2/repository/index").json()
        assert {e["name"]: e["state"] for e in index}[DROPOUT_MODEL] == "UNLOADED"
    finally:
        server.stop()


@pytest.mark.parametrize("placement", ["batcher", "workers"])
def test_sigterm_answers_every_in_flight_request_before_exit(
    placement: str, repo: Path, tmp_path: Path, clips: list[dict[str, Path]]
) -> None:
    env = {"MPLSTM_DEFAULT_MODEL": DROPOUT_MODEL, "MPLSTM_VIDEO_INFERENCE": placement}
    if placement == "batcher":
        # A long batching delay holds the 10 requests in the batcher when SIGTERM arrives.
        env["MPLSTM_MAX_DELAY_MS"] = "1500"
        sent, held = clips, 10
    else:
        # One worker and long clips (about 0.1 s each to decode) hold them in its queue;
        # the first may be answered before the last has arrived.
        env["MPLSTM_DECODE_WORKERS"] = "1"
        sent, held = [write_clip(tmp_path / "long", seed=5, frames=1500, fps=50.0)], 8
    server = Server(repo, tmp_path / "server.log", env, command="mplstm").start()
    url = f"{server.url}/v1/predict"
    with ThreadPoolExecutor(10) as pool:
        futures = [
            pool.submit(httpx.post, url, files=upload(sent[i % len(sent)]), timeout=60)
            for i in range(10)
        ]
        _wait_in_flight(server, held)
        status = server.stop()
        answers = [f.result() for f in futures]
    assert [r.status_code for r in answers] == [200] * 10, [r.text for r in answers]
    # A clean drain exits 0 (uvicorn re-raises SIGTERM after it; `mplstm serve` handles it).
    assert status == 0, server.log()
    # The lifespan ran to its end: batchers drained after the last answer went out.
    assert "shutting down: draining batchers" in server.log()
    assert " shut down" in server.log()


def _wait_in_flight(server: Server, count: int) -> None:
    """Wait until `count` requests wait for inference (the pending-request gauge)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = httpx.get(f"{server.url}/metrics").text
        depth = re.findall(r"^nv_inference_pending_request_count\{[^}]*\} (\S+)$", text, re.M)
        if sum(float(d) for d in depth) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{count} requests never waited for inference:\n{server.log()}")


def _upload_parts(route: str, folder: Path) -> tuple[str, dict[str, str], bytes]:
    """(path, headers, body) of one request for the tiny model, on /v1 or /v2, over 150 KiB:
    past the first 64 KiB the route holds its room in the body budget (a visible signal)."""
    if route == "v1":
        clip = write_clip(folder, seed=7, frames=200)
        request = httpx.Request("POST", "http://x/v1/predict", files=upload(clip))
        headers = {"Content-Type": request.headers["content-type"]}
        return "/v1/predict", headers, request.read()
    clip_tensor = np.zeros((4, 3, 16, 1, 32, 32), np.uint8)
    tensor = triton.InferInput("clip", list(clip_tensor.shape), "UINT8")
    tensor.set_data_from_numpy(clip_tensor, binary_data=True)
    body, header_length = triton.InferenceServerClient.generate_request_body([tensor])
    headers = {"Inference-Header-Content-Length": str(header_length)}
    return f"/v2/models/{DROPOUT_MODEL}/infer", headers, body


def _answered_version(route: str, answer: RawResponse | httpx.Response) -> str:
    content = answer.body if isinstance(answer, RawResponse) else answer.content
    # A binary /v2 answer: its JSON header first, then the output tensors.
    length = int(answer.headers.get("inference-header-content-length", len(content)))
    body = json.loads(content[:length])
    return body["model"]["version"] if route == "v1" else body["model_version"]


@pytest.mark.parametrize("route", ["v1", "v2"])
def test_a_reload_during_an_upload_answers_it_with_the_version_it_arrived_at(
    route: str, repo_copy: Path, tmp_path: Path
) -> None:
    env = {"MPLSTM_DEFAULT_MODEL": DROPOUT_MODEL, "MPLSTM_DECODE_WORKERS": "1"}
    server = Server(repo_copy, tmp_path / "server.log", env, command="mplstm").start()
    path, headers, body = _upload_parts(route, tmp_path / "clip")
    sent = 100 * 1024
    try:
        with RawClient(server.port) as uploading, ThreadPoolExecutor(1) as pool:
            uploading.send(request_head("POST", path, headers, length=len(body)) + body[:sent])
            wait_for_metric(server.url, "mplstm_http_body_bytes_in_flight", len(body))
            shutil.copytree(repo_copy / DROPOUT_MODEL / "1", repo_copy / DROPOUT_MODEL / "2")
            url = f"{server.url}/v2/repository/models/{DROPOUT_MODEL}/load"
            load = pool.submit(httpx.post, url, timeout=60)
            _wait_for_log(server, "retires once its 1 requests in flight are answered")
            # Version 2 serves new requests while version 1 finishes the upload.
            fresh = httpx.post(server.url + path, content=body, headers=headers, timeout=30)
            assert fresh.status_code == 200 and _answered_version(route, fresh) == "2"
            uploading.send(body[sent:])
            answer = uploading.response()
            assert answer.status == 200, answer.body
            assert _answered_version(route, answer) == "1"
            loaded = load.result(timeout=60)
        assert loaded.status_code == 200 and loaded.json()["version"] == "2"
    finally:
        server.stop()


def test_sigterm_answers_a_stalled_upload_503_shutting_down_and_exits_0(
    repo: Path, tmp_path: Path
) -> None:
    server = Server(repo, tmp_path / "server.log", command="mplstm").start()
    path = f"/v2/models/{DROPOUT_MODEL}/infer"
    stalled, _ = stalled_upload(server.url, server.port, path, 200_000)
    with stalled, RawClient(server.port) as half_head:
        half_head.send(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
        status = server.stop()
        for client in (stalled, half_head):
            answer = client.response()
            assert (answer.status, answer.json()["error"]) == (503, "shutting_down")
            assert int(answer.headers["retry-after"]) >= 1
    assert status == 0, server.log()
    assert "Traceback" not in server.log()


def _wait_for_log(server: Server, text: str) -> None:
    deadline = time.monotonic() + 30
    while text not in server.log():
        assert time.monotonic() < deadline, f"never logged {text!r}:\n{server.log()}"
        time.sleep(0.05)
