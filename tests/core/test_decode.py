"""Decoding one view: containers and codecs, timestamps, offsets, crop/resize, source kinds."""

from __future__ import annotations

import io
import os
import threading

import av
import numpy as np
import pytest

from mplstm.core.decode import decode_view
from mplstm.core.video_writer import write_video

FORMATS = [
    ("view.mp4", "h264"),
    ("view.mp4", "mpeg4"),
    ("view.avi", "mjpeg"),
    ("view.mkv", "ffv1"),
    ("view.webm", "vp9"),
]


@pytest.fixture
def codes_of(read_codes):
    """Codes shown by the frames of a DecodedView."""
    return lambda view: read_codes(view.take())


@pytest.mark.parametrize(("name", "codec"), FORMATS)
def test_every_container_and_codec_decodes_each_frame_at_its_timestamp(
    coded_view, codes_of, name, codec
):
    written = coded_view(name, fps=25, count=12, codec=codec)
    view = decode_view(written.path, height=32, width=32)
    frames = view.take()
    assert frames.shape == (12, 1, 32, 32) and frames.dtype == np.uint8
    assert view.info.frames_decoded == 12
    np.testing.assert_allclose(view.timestamps, written.times, atol=1e-3)
    np.testing.assert_array_equal(codes_of(view), written.codes)
    assert view.info.fps_seen == pytest.approx(25, rel=1e-3)
    assert view.info.duration_s == pytest.approx(12 / 25, abs=1e-3)
    assert (view.info.width, view.info.height) == (64, 64)


@pytest.mark.parametrize("name", ["vfr.mkv", "vfr.mp4"])
def test_variable_frame_rate_timestamps_come_from_the_stream(coded_view, codes_of, name):
    intervals_ms = np.random.default_rng(0).integers(20, 90, size=19)
    times = np.concatenate([[0], np.cumsum(intervals_ms)]) / 1000
    written = coded_view(name, fps=25, times=times)
    view = decode_view(written.path, height=32, width=32)
    np.testing.assert_allclose(view.timestamps, times, atol=1e-3)
    np.testing.assert_array_equal(codes_of(view), written.codes)
    assert view.info.fps_seen == pytest.approx(19 / times[-1], rel=1e-3)


@pytest.mark.parametrize("name", ["late.mp4", "late.mkv"])
def test_late_start_is_reported_as_offset_and_timestamps_start_at_zero(coded_view, name):
    written = coded_view(name, fps=30, count=15, start=0.5)
    view = decode_view(written.path, height=32, width=32)
    assert view.info.offset_s == pytest.approx(0.5, abs=1e-3)
    assert view.timestamps[0] == 0
    np.testing.assert_allclose(view.timestamps, written.times, atol=1e-3)


def test_header_frame_count_is_ignored_in_favour_of_decoded_frames(coded_view, codes_of):
    # AVI counts time in frame slots: a late start adds empty slots to the header's count.
    written = coded_view("late.avi", fps=25, count=20, start=0.4)
    with av.open(str(written.path)) as container:
        header_frames = container.streams.video[0].frames
    view = decode_view(written.path, height=32, width=32)
    assert header_frames != 20
    assert view.info.frames_decoded == 20
    np.testing.assert_array_equal(codes_of(view), written.codes)


def test_rgb_frames_keep_channel_order_and_are_centre_cropped_to_aspect(tmp_path):
    # 64x128 (HxW): red, green, blue thirds. To 32x32: scale to 32x64, keep the middle 32 columns.
    image = np.zeros((64, 128, 3), np.uint8)
    image[:, :43, 0] = image[:, 43:86, 1] = image[:, 86:, 2] = 255
    path = write_video(tmp_path / "rgb.mkv", np.stack([image] * 3), 25)
    view = decode_view(path, height=32, width=32, channels=3)
    assert view.take().shape == (3, 3, 32, 32)
    frame = view.take([0])[0].astype(int)  # [C, H, W]
    assert frame[:, 16, 0].argmax() == 0 and frame[:, 16, 16].argmax() == 1
    assert frame[:, 16, 31].argmax() == 2
    # The crop keeps source columns 32..96: red ends at source column 43, i.e. crop column ~5.
    assert frame[0, 16, :4].min() > 200 and frame[1, 16, 7:14].min() > 200


@pytest.mark.parametrize("size", [20, 24, 40, 88])
def test_rgb_frames_at_widths_off_the_simd_width_are_every_pixel_the_source(tmp_path, size):
    # 88x88 is the lip-reading crop. Planar gbrp output left the columns past the last
    # multiple of swscale's SIMD width unwritten there: different pixels call to call.
    rng = np.random.default_rng(size)
    image = np.repeat(np.repeat(rng.integers(0, 256, (8, 8, 3), np.uint8), 16, 0), 16, 1)
    path = write_video(tmp_path / "rgb.mkv", np.stack([image] * 3), 25)
    first = decode_view(path, height=size, width=size, channels=3).take()
    again = decode_view(path, height=size, width=size, channels=3).take()
    np.testing.assert_array_equal(first, again)
    # The last columns are the source's last block of colour, not leftovers.
    last = image[64, -1].astype(int)
    np.testing.assert_allclose(first[0, :, size // 2, -1], last, atol=48)


def _pipe_reader(data: bytes) -> io.BufferedReader:
    """A real non-seekable file object (an OS pipe) that yields `data`."""
    read_fd, write_fd = os.pipe()

    def feed() -> None:
        with os.fdopen(write_fd, "wb") as writer:
            writer.write(data)

    threading.Thread(target=feed, daemon=True).start()
    return os.fdopen(read_fd, "rb")


def test_path_bytes_and_file_objects_decode_to_the_same_frames(coded_view):
    written = coded_view("view.mp4", count=8)
    data = written.path.read_bytes()
    reference = decode_view(written.path, height=32, width=32)
    with written.path.open("rb") as file, _pipe_reader(data) as pipe:
        for source in (str(written.path), data, bytearray(data), io.BytesIO(data), file, pipe):
            view = decode_view(source, height=32, width=32)
            np.testing.assert_array_equal(view.take(), reference.take())
            np.testing.assert_array_equal(view.timestamps, reference.timestamps)


def test_stream_without_timestamps_is_spaced_at_its_nominal_rate(
    tmp_path, coded_frames, read_codes
):
    # A raw H.264 elementary stream carries no timestamps at all: frames arrive with pts None.
    path = tmp_path / "raw.h264"
    codes = np.arange(10) * 40
    with av.open(str(path), "w", format="h264") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for i, image in enumerate(coded_frames(codes)):
            frame = av.VideoFrame.from_ndarray(
                np.repeat(image[..., None], 3, axis=-1), format="rgb24"
            )
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    view = decode_view(path, height=32, width=32)
    np.testing.assert_allclose(view.timestamps, codes / 1000, atol=1e-9)
    np.testing.assert_array_equal(read_codes(view.take()), codes)
