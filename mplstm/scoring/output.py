"""Result files: JSONL, CSV or Parquet, committed in chunks that survive a SIGKILL.

A shard's rows go to chunk files in its own folder. Each chunk is written to a hidden
temporary file, fsync'ed, renamed into place and the folder fsync'ed, so a chunk is
either all there or absent: a scorer killed at any moment leaves no partial row, and
`--resume` skips exactly the ids of the committed chunks. Leftover temporary files are
the only trace of a kill; `ChunkStore.clean` removes them.
"""

from __future__ import annotations

import csv
import json
import os
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from mplstm.scoring.rows import COLUMNS, ScoreRow

FORMATS: tuple[str, ...] = ("jsonl", "csv", "parquet")
CHUNK_PREFIX = "chunk-"
_TMP_SUFFIX = ".tmp"
_LIST_COLUMNS = ("top_k", "views_used", "views_dropped")


class OutputError(ValueError):
    """An output folder or file that cannot be used; the message names it."""


def write_rows(path: Path, rows: Iterable[ScoreRow], fmt: str) -> Path:
    """Write rows to `path` (replacing it) as they come, then fsync.

    Not atomic by itself: `commit_file` wraps it in a temporary file and a rename.
    """
    if fmt not in FORMATS:
        raise OutputError(f"unknown output format {fmt!r}: use one of {', '.join(FORMATS)}")
    if fmt == "parquet":
        _write_parquet(path, rows)
        return path
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = _line_writer(f, fmt)
        for row in rows:
            writer(row)
        f.flush()
        os.fsync(f.fileno())
    return path


def commit_file(path: Path, rows: Iterable[ScoreRow], fmt: str) -> Path:
    """Write rows to `path` all-or-nothing: a temporary file, fsync, rename, fsync the folder."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{_TMP_SUFFIX}")
    try:
        write_rows(tmp, rows, fmt)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def read_rows(path: Path, fmt: str | None = None) -> list[ScoreRow]:
    """Rows of a result file (format from the suffix unless given)."""
    fmt = fmt or format_of(path)
    if fmt == "jsonl":
        with open(path, encoding="utf-8") as f:
            return [ScoreRow.from_dict(json.loads(line)) for line in f if line.strip()]
    if fmt == "csv":
        with open(path, encoding="utf-8", newline="") as f:
            return [ScoreRow.from_dict(_from_csv(cells)) for cells in csv.DictReader(f)]
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return [ScoreRow.from_dict(values) for values in pq.read_table(path).to_pylist()]
    raise OutputError(f"unknown output format {fmt!r}: use one of {', '.join(FORMATS)}")


def format_of(path: Path) -> str:
    """'jsonl', 'csv' or 'parquet' from a file's suffix."""
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise OutputError(f"{path}: not a result file (.jsonl, .csv or .parquet)")
    return fmt


def check_format(fmt: str) -> None:
    """OutputError unless `fmt` can be written here (Parquet needs pyarrow)."""
    if fmt not in FORMATS:
        raise OutputError(f"unknown output format {fmt!r}: use one of {', '.join(FORMATS)}")
    if fmt == "parquet":
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError as exc:
            raise OutputError(
                "--format parquet needs pyarrow (pip install pyarrow); or use jsonl or csv"
            ) from exc


class ChunkStore:
    """One shard's output folder: committed chunk files, each all-or-nothing."""

    def __init__(self, folder: Path, fmt: str) -> None:
        check_format(fmt)
        self.folder = folder
        self.fmt = fmt
        folder.mkdir(parents=True, exist_ok=True)
        self._next = 1 + max((_sequence(p) for p in self.chunks()), default=-1)

    def chunks(self) -> list[Path]:
        """Committed chunk files, oldest first."""
        return sorted(
            p for p in self.folder.glob(f"{CHUNK_PREFIX}*.{self.fmt}") if not p.name.startswith(".")
        )

    def clean(self) -> int:
        """Remove temporary files a killed run left behind; returns how many."""
        leftovers = list(self.folder.glob(f".*{_TMP_SUFFIX}"))
        for path in leftovers:
            path.unlink(missing_ok=True)
        return len(leftovers)

    def rows(self) -> list[ScoreRow]:
        """Every committed row."""
        return [row for path in self.chunks() for row in read_rows(path, self.fmt)]

    def committed_ids(self) -> set[str]:
        """Ids with a committed row (what `--resume` skips)."""
        return {row.id for row in self.rows()}

    def commit(self, rows: Iterable[ScoreRow]) -> Path:
        """Commit rows as the next chunk file."""
        # A random token besides the sequence number: two processes that were
        # mistakenly given the same shard never overwrite each other's chunks.
        name = f"{CHUNK_PREFIX}{self._next:06d}-{uuid.uuid4().hex[:8]}.{self.fmt}"
        self._next += 1
        return commit_file(self.folder / name, rows, self.fmt)


def _sequence(path: Path) -> int:
    return int(path.name[len(CHUNK_PREFIX) :].split("-", 1)[0])


def _line_writer(f, fmt: str) -> Callable[[ScoreRow], None]:
    if fmt == "jsonl":
        return lambda row: f.write(json.dumps(row.to_dict()) + "\n")
    writer = csv.DictWriter(f, fieldnames=COLUMNS)
    writer.writeheader()
    return lambda row: writer.writerow(_to_csv(row))


def _to_csv(row: ScoreRow) -> dict[str, str]:
    values = row.to_dict()
    out = {key: "" if values[key] is None else str(values[key]) for key in COLUMNS}
    for key in _LIST_COLUMNS:
        out[key] = json.dumps(values[key])
    out["score"] = "" if row.score is None else repr(row.score)
    if row.expected_accuracy is not None:
        out["expected_accuracy"] = repr(row.expected_accuracy)
    return out


def _from_csv(cells: dict[str, str]) -> dict:
    values: dict = {key: (cells.get(key) or None) for key in COLUMNS}
    for key in _LIST_COLUMNS:
        values[key] = json.loads(cells.get(key) or "[]")
    return values


def _arrow_schema():
    import pyarrow as pa

    text = pa.string()
    return pa.schema(
        [
            ("id", text),
            ("label", text),
            ("prediction", text),
            ("score", pa.float64()),
            ("top_k", pa.list_(pa.struct([("label", text), ("score", pa.float64())]))),
            ("views_used", pa.list_(text)),
            (
                "views_dropped",
                pa.list_(pa.struct([("view", text), ("reason", text), ("detail", text)])),
            ),
            ("expected_accuracy", pa.float64()),
            ("status", text),
            ("error_code", text),
            ("error", text),
        ]
    )


def _write_parquet(path: Path, rows: Iterable[ScoreRow]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _arrow_schema()
    table = pa.Table.from_pylist([r.to_dict() for r in rows], schema=schema)
    with open(path, "wb") as f:
        pq.write_table(table, f)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
