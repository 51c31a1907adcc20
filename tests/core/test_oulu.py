"""OuluVS2 reader on a small tree of real video files laid out like the distributed archive."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from mplstm.core.manifest import ManifestError, read_manifest, write_manifest
from mplstm.core.oulu import read_oulu, utterance_label
from mplstm.core.video_writer import write_video

SPEAKERS = (1, 2, 3, 10)
UTTERANCES = (31, 35, 60)


def _video(path: Path) -> Path:
    return write_video(path, np.full((2, 16, 16), 100, dtype=np.uint8), 30)


@pytest.fixture()
def oulu_root(tmp_path: Path) -> Path:
    """ROOT/cropped_mouth_mp4_phrase/<speaker>/<view>/s<speaker>_v<view>_u<utt>.mp4."""
    base = tmp_path / "OuluVS2" / "cropped_mouth_mp4_phrase"
    for s in SPEAKERS:
        for v in (1, 3, 5):
            for u in UTTERANCES:
                _video(base / str(s) / str(v) / f"s{s}_v{v}_u{u}.mp4")
    return tmp_path / "OuluVS2"


def test_every_speaker_utterance_becomes_one_clip_with_a_file_per_view(oulu_root: Path) -> None:
    records = read_oulu(oulu_root, views=(1, 3, 5))
    assert len(records) == len(SPEAKERS) * len(UTTERANCES)
    first = records[0]
    assert (first.id, first.speaker) == ("s1_u31", "s1")
    assert list(first.views) == ["0deg", "45deg", "90deg"]
    assert first.views["45deg"] == oulu_root / "cropped_mouth_mp4_phrase/1/3/s1_v3_u31.mp4"
    assert all(p.is_file() for r in records for p in r.views.values())


def test_utterances_are_labelled_with_their_phrase(oulu_root: Path) -> None:
    labels = {r.id: r.label for r in read_oulu(oulu_root, views=(1, 3, 5))}
    assert labels["s2_u31"] == "Excuse me"
    assert labels["s2_u35"] == "Goodbye"
    assert labels["s2_u60"] == "You are welcome"
    assert utterance_label("digit", 1) == "1 7 3 5 1 6 2 6 6 7"


def test_splits_are_speaker_disjoint_and_can_be_given(oulu_root: Path) -> None:
    records = read_oulu(oulu_root, views=(1, 3, 5))
    split_of_speaker = {}
    for r in records:
        assert split_of_speaker.setdefault(r.speaker, r.split) == r.split
    assert set(split_of_speaker.values()) == {"train", "val", "test"}
    given = read_oulu(oulu_root, views=(1,), splits={"s10": "test", "s1": "test"})
    assert {r.speaker for r in given if r.split == "test"} >= {"s1", "s10"}


def test_clips_missing_a_view_are_skipped_or_refused(
    oulu_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (oulu_root / "cropped_mouth_mp4_phrase/2/5/s2_v5_u35.mp4").unlink()
    with caplog.at_level(logging.WARNING):
        records = read_oulu(oulu_root, views=(1, 3, 5))
    assert "s2_u35" not in {r.id for r in records}
    assert "skipped 1" in caplog.text
    with pytest.raises(ManifestError, match="speaker 2 utterance 35 has no 90deg"):
        read_oulu(oulu_root, views=(1, 3, 5), skip_incomplete=False)
    # A view that is not asked for cannot make a clip incomplete.
    assert len(read_oulu(oulu_root, views=(1, 3))) == len(SPEAKERS) * len(UTTERANCES)


def test_files_in_the_wrong_folder_or_corpus_are_refused(oulu_root: Path) -> None:
    base = oulu_root / "cropped_mouth_mp4_phrase"
    misplaced = _video(base / "3" / "1" / "s2_v1_u31.mp4")
    with pytest.raises(ManifestError, match="expected 2/1"):
        read_oulu(oulu_root, views=(1,))
    misplaced.unlink()
    _video(base / "3" / "1" / "s3_v1_u7.mp4")
    with pytest.raises(ManifestError, match="utterance 7 does not belong to the phrase corpus"):
        read_oulu(oulu_root, views=(1,))


def test_wrong_root_says_what_it_expected(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no cropped_mouth_mp4_phrase/ folder"):
        read_oulu(tmp_path)


def test_oulu_records_round_trip_through_a_manifest(oulu_root: Path, tmp_path: Path) -> None:
    records = read_oulu(oulu_root / "cropped_mouth_mp4_phrase", views=(1, 5))
    path = write_manifest(records, oulu_root / "manifest.csv")
    assert read_manifest(path) == records
