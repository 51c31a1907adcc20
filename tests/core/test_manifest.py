"""Manifests: JSONL/CSV round trips, paths relative to the manifest, errors that name the line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mplstm.core.manifest import (
    ClipRecord,
    ManifestError,
    assign_splits,
    read_manifest,
    split_counts,
    write_manifest,
)
from mplstm.core.video_writer import write_video

VIEWS = ("front", "side")


@pytest.fixture()
def records(tmp_path: Path) -> list[ClipRecord]:
    """Three clips of two real (tiny) views each, under tmp_path/data/clips."""
    frames = np.full((2, 16, 16), 128, dtype=np.uint8)
    out = []
    for i, split in enumerate(("train", "val", "test")):
        views = {
            v: write_video(tmp_path / "data" / "clips" / f"c{i}" / f"{v}.mp4", frames, 25)
            for v in VIEWS
        }
        out.append(ClipRecord(f"c{i}", f"word{i % 2}", f"s{i}", split, views))
    return out


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_written_manifest_reads_back_the_same_records(
    records: list[ClipRecord], tmp_path: Path, suffix: str
) -> None:
    path = write_manifest(records, tmp_path / "data" / f"manifest{suffix}")
    assert read_manifest(path) == records


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_view_paths_are_written_relative_to_the_manifest_folder(
    records: list[ClipRecord], tmp_path: Path, suffix: str
) -> None:
    path = write_manifest(records, tmp_path / "data" / f"manifest{suffix}")
    text = path.read_text()
    assert "clips/c0/front.mp4" in text
    assert str(tmp_path) not in text


def test_relative_paths_resolve_against_the_manifest_not_the_working_directory(
    records: list[ClipRecord], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_manifest(records, tmp_path / "data" / "sub" / "m.jsonl")
    assert '"../clips/c1/side.mp4"' in path.read_text()
    monkeypatch.chdir(tmp_path)
    moved = tmp_path / "elsewhere"
    (tmp_path / "data").rename(moved)
    got = read_manifest(moved / "sub" / "m.jsonl")
    assert got[1].views["side"] == moved / "clips" / "c1" / "side.mp4"
    assert got[1].views["side"].is_file()


def test_csv_header_names_the_views(records: list[ClipRecord], tmp_path: Path) -> None:
    path = write_manifest(records, tmp_path / "data" / "m.csv")
    assert path.read_text().splitlines()[0] == "id,label,speaker,split,front,side"


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _jsonl_line(clip_id: str = "c0", **changes: object) -> str:
    row: dict = {
        "id": clip_id,
        "label": "word0",
        "speaker": "s0",
        "split": "train",
        "views": {"front": "clips/c0/front.mp4", "side": "clips/c0/side.mp4"},
    }
    row.update(changes)
    return json.dumps({k: v for k, v in row.items() if v is not None})


@pytest.mark.usefixtures("records")
@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        (_jsonl_line("c1", split="training"), "unknown split 'training'"),
        (_jsonl_line("c1", label=None), 'missing "label"'),
        (_jsonl_line("c1", views={"front": "clips/c0/front.mp4", "side": ""}), "'side' has no"),
        (_jsonl_line("c1", views={"front": "clips/c0/front.mp4"}), "differ from the manifest"),
        (_jsonl_line("c1", views=None), 'missing "views"'),
        (_jsonl_line("c0"), "duplicate clip id 'c0' (first on line 1)"),
        ('{"id": "c1", ', "not valid JSON"),
        (
            _jsonl_line("c1", views={"front": "clips/c0/front.mp4", "side": "clips/nope.mp4"}),
            "clips/nope.mp4 does not exist",
        ),
    ],
)
def test_malformed_jsonl_line_is_reported_with_its_line_number(
    tmp_path: Path, bad_line: str, message: str
) -> None:
    path = _write(tmp_path / "data" / "m.jsonl", [_jsonl_line("c0"), "", bad_line])
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    assert "line 3" in str(info.value)
    assert message in str(info.value)
    assert info.value.line == 3


@pytest.mark.usefixtures("records")
@pytest.mark.parametrize(
    ("lines", "line", "message"),
    [
        (["id,label,split,front,side"], 1, "missing column(s) speaker"),
        (["id,label,speaker,split"], 1, "no view columns"),
        (
            ["id,label,speaker,split,front,side", "c0,w,s0,train,clips/c0/front.mp4,"],
            2,
            "view 'side' has no video path",
        ),
        (
            ["id,label,speaker,split,front,side", "c0,w,s0,dev,clips/c0/front.mp4,x.mp4"],
            2,
            "unknown split 'dev'",
        ),
        (["id,label,speaker,split,front,side", "c0,w,s0,train,clips/c0/front.mp4"], 2, "5 cells"),
    ],
)
def test_malformed_csv_is_reported_with_its_line_number(
    tmp_path: Path, lines: list[str], line: int, message: str
) -> None:
    path = _write(tmp_path / "data" / "m.csv", lines)
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    assert f"line {line}" in str(info.value)
    assert message in str(info.value)


def test_missing_files_can_be_left_to_the_caller(tmp_path: Path) -> None:
    path = _write(tmp_path / "m.jsonl", [_jsonl_line("c0")])
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(path)
    [record] = read_manifest(path, check_files=False)
    assert record.views["front"] == tmp_path / "clips" / "c0" / "front.mp4"


def test_unknown_suffix_and_empty_manifest_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"use \.jsonl or \.csv"):
        read_manifest(tmp_path / "m.txt")
    with pytest.raises(ManifestError, match="no clips"):
        read_manifest(_write(tmp_path / "m.jsonl", [""]))


@pytest.mark.parametrize(("n", "expected"), [(1, (1, 0, 0)), (3, (1, 1, 1)), (20, (14, 3, 3))])
def test_split_counts_keep_every_split_non_empty_from_three_items(
    n: int, expected: tuple[int, int, int]
) -> None:
    assert split_counts(n) == expected


def test_assign_splits_is_a_partition_in_the_asked_proportions() -> None:
    splits = assign_splits(range(40), (0.5, 0.25, 0.25), np.random.default_rng(0))
    assert sorted(splits) == list(range(40))
    assert [list(splits.values()).count(s) for s in ("train", "val", "test")] == [20, 10, 10]
    assert splits != assign_splits(range(40), (0.5, 0.25, 0.25))  # shuffled by the rng
