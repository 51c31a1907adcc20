"""Every ClipError kind, each produced by a real bad file: the right error, refused early."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import av
import numpy as np
import pytest

from mplstm.core.contact_sheet import write_png
from mplstm.core.decode import decode_view
from mplstm.core.errors import (
    ClipError,
    ClipTooLargeError,
    ClipTooLongError,
    CorruptVideoError,
    NoVideoStreamError,
    StillImageError,
    UnreadableContainerError,
)
from mplstm.core.limits import DecodeLimits
from mplstm.core.video_writer import write_video


def _decode(source, **limits):
    return decode_view(source, height=32, width=32, limits=DecodeLimits(**limits), view="front")


def _flat(count: int, size: int = 16, level: int = 90) -> np.ndarray:
    return np.full((count, size, size), level, np.uint8)


@pytest.fixture
def small_mp4(tmp_path: Path) -> Path:
    frames = np.random.default_rng(0).integers(0, 256, (10, 32, 32), dtype=np.uint8)
    return write_video(tmp_path / "small.mp4", frames, 25)


def test_zero_byte_file_is_unreadable(tmp_path):
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    for source in (path, b""):
        with pytest.raises(UnreadableContainerError, match="empty"):
            _decode(source)


def test_random_bytes_are_unreadable():
    data = np.random.default_rng(1).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    with pytest.raises(UnreadableContainerError, match="view 'front'"):
        _decode(data)


def test_text_file_renamed_mp4_is_unreadable(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("these are meeting notes, not a video\n" * 50)
    with pytest.raises(UnreadableContainerError):
        _decode(path)


@pytest.mark.parametrize("suffix", [".mp4", ".png"])
def test_png_image_sent_as_a_video_is_refused_as_a_still_image(tmp_path, suffix):
    image = np.random.default_rng(2).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    path = write_png(tmp_path / f"photo{suffix}", image)
    for source in (path, path.read_bytes()):
        with pytest.raises(StillImageError, match="still image") as info:
            _decode(source)
        assert info.value.http_status == 415


def test_file_object_opened_for_writing_too_is_read_not_overwritten(small_mp4, tmp_path):
    copy = tmp_path / "upload.mp4"
    copy.write_bytes(small_mp4.read_bytes())
    with open(copy, "r+b") as upload:  # how spooled uploads arrive
        assert _decode(upload).take().shape[0] == 10
    assert copy.read_bytes() == small_mp4.read_bytes()


def test_missing_path_is_unreadable_and_names_the_path(tmp_path):
    with pytest.raises(UnreadableContainerError, match=r"no_such\.mp4"):
        _decode(tmp_path / "no_such.mp4")


def test_mp4_cut_before_its_index_is_unreadable(small_mp4):
    # x264 MP4s put the index (moov) at the end: half a file has frames but no index.
    data = small_mp4.read_bytes()
    with pytest.raises(UnreadableContainerError):
        _decode(data[: len(data) // 2])


def test_avi_cut_inside_its_first_frame_is_corrupt(tmp_path):
    path = write_video(
        tmp_path / "v.avi",
        np.random.default_rng(2).integers(0, 256, (5, 64, 64), dtype=np.uint8),
        25,
    )
    data = path.read_bytes()
    first_frame = data.index(b"00dc", data.index(b"movi"))  # the first frame chunk
    with pytest.raises(CorruptVideoError, match="yields no frame"):
        _decode(data[: first_frame + 200])


def test_mkv_cut_midway_keeps_the_frames_before_the_cut(tmp_path):
    frames = np.random.default_rng(3).integers(0, 256, (20, 32, 32), dtype=np.uint8)
    data = write_video(tmp_path / "v.mkv", frames, 25).read_bytes()
    view = _decode(data[: len(data) // 2])
    assert 0 < view.info.frames_decoded < 20


def test_audio_only_file_has_no_video_stream(tmp_path):
    path = tmp_path / "speech.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 16000), np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate = 16000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(NoVideoStreamError, match="audio"):
        _decode(path)


def test_file_over_the_byte_limit_is_refused_for_every_source_kind(small_mp4):
    data = small_mp4.read_bytes()
    for source in (small_mp4, data, small_mp4.open("rb")):
        with pytest.raises(ClipTooLargeError, match="MiB"):
            _decode(source, max_bytes=len(data) - 1)
    assert _decode(data, max_bytes=len(data)).info.frames_decoded == 10


def test_high_frame_rate_flat_clip_is_refused_at_the_frame_after_the_limit(tmp_path):
    # 600 flat frames at 1000 fps: a few KB that decode to far more frames than allowed.
    path = write_video(tmp_path / "bomb.mp4", _flat(600), 1000)
    assert path.stat().st_size < 50_000
    with pytest.raises(ClipTooLongError, match="refused at decoded frame 101"):
        _decode(path, max_frames=100)
    assert _decode(path, max_frames=600).info.frames_decoded == 600


def test_long_low_rate_clip_is_refused_at_the_default_duration_limit(tmp_path):
    # 130 frames at 2 fps span 64.5 s; the default limit is 60 s, so frame 122 (60.5 s) is refused.
    path = write_video(tmp_path / "long.mkv", _flat(130), 2)
    with pytest.raises(ClipTooLongError, match=r"refused at 60\.50 s, decoded frame 122"):
        _decode(path)


@pytest.mark.parametrize("name", ["huge.mp4", "huge.mkv"])
def test_huge_resolution_is_refused_from_the_header_before_decoding(tmp_path, name):
    # One flat 4800x4800 frame compresses to a few KB and would decode to 35 MB of YUV.
    path = write_video(tmp_path / name, _flat(1, size=4800), 25)
    assert path.stat().st_size < 200_000
    with pytest.raises(ClipTooLargeError, match="4800x4800"):
        _decode(path)


def test_huge_resolution_refusal_keeps_memory_bounded(tmp_path):
    path = write_video(tmp_path / "huge.mp4", _flat(2, size=4800), 25)
    small = write_video(tmp_path / "small.mp4", _flat(2), 25)
    # A fresh process, warmed up on a small file, so its peak RSS measures this decode alone.
    code = textwrap.dedent(f"""
        import resource
        from mplstm.core.decode import decode_view
        from mplstm.core.errors import ClipTooLargeError
        decode_view({str(small)!r}, height=32, width=32)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            decode_view({str(path)!r}, height=32, width=32)
        except ClipTooLargeError:
            print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
    """)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    growth_mib = int(result.stdout) / 1024  # ru_maxrss is in KiB on Linux
    # One decoded 4800x4800 frame is 33 MiB of YUV 4:2:0 (and 66 MiB as RGB).
    assert growth_mib < 20, f"peak RSS grew {growth_mib:.1f} MiB while refusing the file"


def test_sliver_frames_are_refused_before_being_scaled_up(tmp_path):
    # 2048x16 fits every size limit, but covering 32x32 would scale it to 4096x32.
    path = write_video(tmp_path / "sliver.mkv", np.full((2, 16, 2048), 90, np.uint8), 25)
    with pytest.raises(ClipTooLargeError, match="2048x16, more elongated than 8:1"):
        _decode(path)


@pytest.mark.parametrize("name", ["v.mp4", "v.avi", "v.mkv", "v.webm"])
def test_damaged_files_give_a_usable_view_or_a_clip_error_and_nothing_else(tmp_path, name):
    rng = np.random.default_rng(11)
    data = np.frombuffer(
        write_video(
            tmp_path / name, rng.integers(0, 256, (8, 48, 48), dtype=np.uint8), 25
        ).read_bytes(),
        np.uint8,
    )
    outcomes = set()
    for i in range(60):
        damaged = data.copy()
        spots = rng.integers(0, len(damaged), rng.integers(1, 20))
        damaged[spots] = rng.integers(0, 256, len(spots))
        if i % 3 == 0:
            damaged = damaged[: rng.integers(1, len(damaged))]
        try:
            view = decode_view(damaged.tobytes(), height=16, width=16, channels=1 + 2 * (i % 2))
            assert view.take().shape[1:] == (1 + 2 * (i % 2), 16, 16)
            outcomes.add("usable")
        except ClipError as exc:
            outcomes.add(type(exc).__name__)
    assert "usable" in outcomes and len(outcomes) > 1  # both kinds were exercised
