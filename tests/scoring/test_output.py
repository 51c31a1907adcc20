"""Result files read back with each format's own library, and chunks are all-or-nothing."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mplstm.scoring.output import FORMATS, ChunkStore, commit_file, read_rows
from mplstm.scoring.rows import COLUMNS, ScoreRow

ROWS = [
    ScoreRow("a/1", "w01", "w01", 0.75, (("w01", 0.75), ("w00", 0.25)), ("front", "left90"),
             "ok", None, None, (("right30", "frozen", "difference 0.00, \"left90\" moves"),),
             0.85),
    ScoreRow("b,2 \"q\"", "w00", None, None, (), (), "error", "corrupt_video",
             "view 'front': the stream stops at frame 3; re-encode it\nsecond line é"),
    ScoreRow("c", "w00", None, None, (), (), "error", "camera_failed", "view 'front' is black",
             (("front", "black", "mean level 2/255"),)),
]  # fmt: skip


def _read_native(path: Path, fmt: str) -> list[dict]:
    """Rows as the format's own reader gives them, lists decoded where CSV keeps JSON text."""
    if fmt == "jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    if fmt == "parquet":
        return pq.read_table(path).to_pylist()
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key in ("top_k", "views_used", "views_dropped"):
            row[key] = json.loads(row[key])
        for key in ("score", "expected_accuracy"):
            row[key] = float(row[key]) if row[key] else None
        for key in ("prediction", "error_code", "error"):
            row[key] = row[key] or None
    return rows


@pytest.mark.parametrize("fmt", FORMATS)
def test_rows_read_back_with_the_formats_own_library(fmt: str, tmp_path: Path) -> None:
    path = commit_file(tmp_path / f"scores.{fmt}", ROWS, fmt)
    native = _read_native(path, fmt)
    assert [list(row) for row in native] == [list(COLUMNS)] * len(ROWS)
    assert native == [row.to_dict() for row in ROWS]
    assert read_rows(path) == ROWS


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_chunk_interrupted_midway_is_never_committed(fmt: str, tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "shard", fmt)
    store.commit(ROWS[:1])

    def interrupted() -> Iterator[ScoreRow]:
        yield from ROWS[: len(ROWS) // 2]
        raise KeyboardInterrupt  # Ctrl-C with half of the rows written

    with pytest.raises(KeyboardInterrupt):
        store.commit(interrupted())
    assert store.committed_ids() == {"a/1"}
    assert [p.name for p in store.folder.iterdir() if p.name.startswith(".")] == []


def test_a_resumed_store_keeps_numbering_and_cleans_leftovers(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, "jsonl")
    first = store.commit(ROWS[:1])
    (tmp_path / ".chunk-000001-deadbeef.jsonl.0123abcd.tmp").write_text('{"id": "half')
    again = ChunkStore(tmp_path, "jsonl")
    assert again.clean() == 1
    second = again.commit(ROWS[1:2])
    assert again.chunks() == [first, second]
    assert [r.id for r in again.rows()] == [r.id for r in ROWS[:2]]


@pytest.mark.parametrize("fmt", FORMATS)
def test_rows_written_before_camera_checks_read_back_without_dropped_views(
    fmt: str, tmp_path: Path
) -> None:
    """A resumed run reads chunks an older version wrote, without the two newer columns."""
    path = commit_file(tmp_path / f"old.{fmt}", ROWS[:2], fmt)
    if fmt == "parquet":
        table = pq.read_table(path).drop_columns(["views_dropped", "expected_accuracy"])
        pq.write_table(table, path)
    elif fmt == "jsonl":
        lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        for line in lines:
            del line["views_dropped"], line["expected_accuracy"]
        path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    else:
        with path.open(newline="", encoding="utf-8") as f:
            cells = list(csv.DictReader(f))
        old = [c for c in COLUMNS if c not in ("views_dropped", "expected_accuracy")]
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=old, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(cells)
    rows = read_rows(path)
    assert [r.id for r in rows] == [r.id for r in ROWS[:2]]
    assert [(r.views_dropped, r.expected_accuracy) for r in rows] == [((), None)] * 2
    assert [r.top_k for r in rows] == [r.top_k for r in ROWS[:2]]
