"""Service settings: every bad value fails at start, naming its variable (no server needed)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mplstm.inference.options import BackendOptions, Placement
from mplstm.service.settings import SettingsError, load_settings


def test_bad_settings_fail_at_start_naming_each_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MPLSTM_MAX_BATCH", "0")
    monkeypatch.setenv("MPLSTM_BACKEND", "cuda-magic")
    monkeypatch.setenv("MPLSTM_DEVICE", "gpu0")
    monkeypatch.setenv("MPLSTM_VIDEO_INFERENCE", "gpu")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    for variable in (
        "MPLSTM_MAX_BATCH",
        "MPLSTM_BACKEND",
        "MPLSTM_DEVICE",
        "MPLSTM_VIDEO_INFERENCE",
    ):
        assert variable in message


def test_api_keys_come_from_the_list_and_the_file(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("# comment\nk3\n\n")
    settings = load_settings(api_keys=" k1,k2 ,", api_key_file=key_file)
    assert settings.load_api_keys() == {"k1", "k2", "k3"}
    with pytest.raises(SettingsError, match="MPLSTM_API_KEY_FILE"):
        load_settings(api_key_file=tmp_path / "missing")


def _serve(models: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    """`mplstm serve --models models` with only `variables` of the MPLSTM_* settings set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPLSTM_")}
    run = subprocess.run(
        [sys.executable, "-m", "mplstm", "serve", "--models", str(models)],
        env={**env, **variables},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return run


def test_mplstm_serve_refuses_bad_settings_with_exit_status_2(tmp_path: Path) -> None:
    run = _serve(tmp_path, MPLSTM_MAX_DELAY_MS="-1")
    assert run.returncode == 2
    assert "MPLSTM_MAX_DELAY_MS" in run.stderr


def test_old_placement_name_batcher_is_served_as_main() -> None:
    assert load_settings(video_inference="batcher").video_inference is Placement.MAIN


def test_settings_build_the_backend_options_the_scorer_builds_from_its_flags() -> None:
    settings = load_settings(
        backend="onnxruntime", device="cpu", intra_op_threads=3, ort_providers=" A, B ,"
    )
    assert settings.backend_options() == BackendOptions("onnxruntime", "cpu", 3, ("A", "B"))


def test_a_default_priority_level_beyond_the_levels_is_refused_naming_both_variables() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(priority_levels=2, default_priority_level=3)
    assert "MPLSTM_DEFAULT_PRIORITY_LEVEL" in str(caught.value)
    assert "MPLSTM_PRIORITY_LEVELS" in str(caught.value)
    with pytest.raises(SettingsError, match="MPLSTM_GRPC_PORT"):
        load_settings(grpc_port=70000)


def test_api_keys_configured_but_empty_fail_closed_naming_the_variable(tmp_path: Path) -> None:
    for blank in (" ", " , ", ",,"):
        with pytest.raises(SettingsError, match="MPLSTM_API_KEYS is set but holds no key"):
            load_settings(api_keys=blank)
    comments = tmp_path / "keys"
    comments.write_text("# no keys yet\n\n   \n# ops\n")
    with pytest.raises(SettingsError, match=re.escape(f"API_KEY_FILE: {comments} holds no key")):
        load_settings(api_key_file=comments)
    empty = tmp_path / "empty"
    empty.write_text("")
    with pytest.raises(SettingsError, match="MPLSTM_API_KEY_FILE"):
        load_settings(api_keys="k1", api_key_file=empty)  # a key elsewhere does not excuse it
    # Unset (or empty, as compose's ${MPLSTM_API_KEYS:-} makes it): auth off, by choice.
    assert load_settings(api_keys="").load_api_keys() == frozenset()


def test_mplstm_serve_refuses_to_start_with_a_key_file_of_comments_only(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# no keys: authentication is off\n")
    run = _serve(tmp_path, MPLSTM_API_KEY_FILE=str(keys))
    assert run.returncode == 2
    assert f"MPLSTM_API_KEY_FILE: {keys} holds no key" in run.stderr


def test_client_limits_are_settings_that_fail_fast() -> None:
    settings = load_settings(max_header_bytes=8192, upload_timeout_s=5, max_inflight_bytes=2**20)
    assert (settings.max_header_bytes, settings.upload_timeout_s) == (8192, 5.0)
    with pytest.raises(SettingsError, match="MPLSTM_MAX_HEADER_BYTES"):
        load_settings(max_header_bytes=10)
    with pytest.raises(SettingsError, match="MPLSTM_MAX_INFLIGHT_BYTES"):
        load_settings(max_inflight_bytes=0)


def test_a_jitter_buffer_too_small_for_the_silence_window_fails_at_start() -> None:
    with pytest.raises(SettingsError, match="MPLSTM_STREAM_BUFFER_FRAMES=96 cannot hold"):
        load_settings(stream_silence_ms=1000)
    settings = load_settings(stream_silence_ms=1000, stream_buffer_frames=242)
    limits = settings.session_limits(update_every=None, top_k=3)
    assert (limits.silence_s, limits.buffer_frames, limits.update_every) == (1.0, 242, 1)


def test_stream_limits_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPLSTM_MAX_SESSIONS", "0")
    with pytest.raises(SettingsError, match="MPLSTM_MAX_SESSIONS"):
        load_settings()
