"""Data-set manifests: one record per clip, with one video path per view, in JSONL or CSV.

JSONL, one object a line::

    {"id": "s001_w03_0_007", "label": "w03", "speaker": "s001", "split": "train",
     "views": {"front": "clips/s001_w03_0_007/front.mp4", "left90": "..."}}

CSV, one row a clip; every column after ``id,label,speaker,split`` is a view, named by
its header::

    id,label,speaker,split,front,left90
    s001_w03_0_007,w03,s001,train,clips/s001_w03_0_007/front.mp4,...

View paths are relative to the manifest's folder (absolute paths are kept as they are).
Every record must have the same views, each with a path. Reading fails with a
`ManifestError` that names the file and line, so a user can fix the manifest.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

SPLITS: tuple[str, ...] = ("train", "val", "test")
FIELDS: tuple[str, ...] = ("id", "label", "speaker", "split")
FORMATS: tuple[str, ...] = ("jsonl", "csv")

T = TypeVar("T")


class ManifestError(ValueError):
    """A manifest that cannot be read: the message names the file and the line."""

    def __init__(self, message: str, *, path: str | Path | None = None, line: int | None = None):
        self.path = Path(path) if path is not None else None
        self.line = line
        where = f"{path}" if path is not None else "manifest"
        if line is not None:
            where += f", line {line}"
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class ClipRecord:
    """One clip of a data set: its label, speaker, split and one video file per view."""

    id: str
    label: str
    speaker: str
    split: str
    views: dict[str, Path]


def manifest_format(path: str | Path) -> str:
    """'jsonl' or 'csv', from the file's suffix."""
    suffix = Path(path).suffix.lower().lstrip(".")
    fmt = {"jsonl": "jsonl", "ndjson": "jsonl", "csv": "csv"}.get(suffix)
    if fmt is None:
        raise ManifestError(
            f"unknown manifest format {Path(path).suffix!r}: use .jsonl or .csv", path=path
        )
    return fmt


def read_manifest(path: str | Path, *, check_files: bool = True) -> list[ClipRecord]:
    """Read a .jsonl or .csv manifest; view paths come back absolute (resolved against its folder).

    With `check_files`, a view file that does not exist is an error too.
    """
    path = Path(path)
    fmt = manifest_format(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(f"cannot read the manifest ({exc.strerror})", path=path) from exc
    rows = _jsonl_rows(text, path) if fmt == "jsonl" else _csv_rows(text, path)
    records: list[ClipRecord] = []
    first_line: dict[str, int] = {}
    view_names: list[str] | None = None
    for line, row in rows:
        record = _record(row, path, line, check_files)
        if record.id in first_line:
            raise ManifestError(
                f"duplicate clip id {record.id!r} (first on line {first_line[record.id]})",
                path=path,
                line=line,
            )
        first_line[record.id] = line
        if view_names is None:
            view_names = list(record.views)
        elif set(record.views) != set(view_names):
            raise ManifestError(
                f"views {sorted(record.views)} differ from the manifest's views {sorted(view_names)}",
                path=path,
                line=line,
            )
        records.append(record)
    if not records:
        raise ManifestError("no clips in the manifest", path=path)
    return records


def write_manifest(records: Iterable[ClipRecord], path: str | Path, fmt: str | None = None) -> Path:
    """Write records as JSONL or CSV (`fmt`, default from the suffix), view paths relative to it."""
    path = Path(path)
    fmt = fmt or manifest_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    base = path.parent.resolve()
    records = list(records)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        with path.open("w", encoding="utf-8") as f:
            for r in records:
                views = {name: _relative(p, base) for name, p in r.views.items()}
                row = {"id": r.id, "label": r.label, "speaker": r.speaker, "split": r.split}
                f.write(json.dumps({**row, "views": views}) + "\n")
        return path
    view_names = list(records[0].views) if records else []
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*FIELDS, *view_names])
        for r in records:
            if list(r.views) != view_names:
                raise ValueError(f"clip {r.id!r} has views {list(r.views)}, expected {view_names}")
            paths = [_relative(r.views[name], base) for name in view_names]
            writer.writerow([r.id, r.label, r.speaker, r.split, *paths])
    return path


def split_counts(n: int, fractions: Sequence[float] = (0.7, 0.15, 0.15)) -> tuple[int, int, int]:
    """How many of `n` items go to train/val/test; at least one each when n >= 3."""
    if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) <= 0:
        raise ValueError(f"split fractions must be three non-negative numbers, got {fractions}")
    total = sum(fractions)
    val = round(n * fractions[1] / total)
    test = round(n * fractions[2] / total)
    if n >= 3:
        # A split with no item makes a useless evaluation: take one from train instead.
        val, test = max(val, 1), max(test, 1)
    val, test = min(val, n), min(test, max(n - val, 0))
    return n - val - test, val, test


def assign_splits(
    items: Sequence[T],
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    rng: np.random.Generator | None = None,
) -> dict[T, str]:
    """Give each item a split (shuffled by `rng` first when given), in the proportions asked."""
    order = list(items)
    if rng is not None:
        order = [order[i] for i in rng.permutation(len(order))]
    n_train, n_val, _ = split_counts(len(order), fractions)
    return {
        item: "train" if i < n_train else "val" if i < n_train + n_val else "test"
        for i, item in enumerate(order)
    }


def _jsonl_rows(text: str, path: Path) -> list[tuple[int, dict]]:
    rows = []
    for line, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"not valid JSON ({exc.msg})", path=path, line=line) from exc
        if not isinstance(row, dict):
            raise ManifestError("each line must be a JSON object", path=path, line=line)
        views = row.get("views")
        if not isinstance(views, dict) or not views:
            raise ManifestError(
                'missing "views": an object of view name -> video path', path=path, line=line
            )
        rows.append((line, row))
    return rows


def _csv_rows(text: str, path: Path) -> list[tuple[int, dict]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        raise ManifestError("empty CSV: expected a header row", path=path, line=1)
    header = [h.strip() for h in header]
    missing = [f for f in FIELDS if f not in header]
    if missing:
        raise ManifestError(
            f"missing column(s) {', '.join(missing)} in the header (need {', '.join(FIELDS)} "
            "and one column per view)",
            path=path,
            line=1,
        )
    view_names = [h for h in header if h not in FIELDS]
    if not view_names:
        raise ManifestError("no view columns: add one column per view", path=path, line=1)
    if len(set(header)) != len(header):
        raise ManifestError(f"duplicate column names in {header}", path=path, line=1)
    rows = []
    for cells in reader:
        line = reader.line_num  # a quoted cell may span lines
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            raise ManifestError(
                f"{len(cells)} cells for {len(header)} columns", path=path, line=line
            )
        row: dict = dict(zip(header, cells, strict=True))
        row["views"] = {name: row.pop(name) for name in view_names}
        rows.append((line, row))
    return rows


def _record(row: dict, path: Path, line: int, check_files: bool) -> ClipRecord:
    values = {}
    for field in FIELDS:
        value = row.get(field)
        if value is None:
            raise ManifestError(f'missing "{field}"', path=path, line=line)
        if not isinstance(value, str | int):
            raise ManifestError(f'"{field}" must be a string, got {value!r}', path=path, line=line)
        values[field] = str(value).strip()
    for field in ("id", "label", "split"):
        if not values[field]:
            raise ManifestError(f'empty "{field}"', path=path, line=line)
    if values["split"] not in SPLITS:
        raise ManifestError(
            f"unknown split {values['split']!r}: use one of {', '.join(SPLITS)}",
            path=path,
            line=line,
        )
    views: dict[str, Path] = {}
    for name, value in row["views"].items():
        if not isinstance(value, str) or not value.strip():
            raise ManifestError(f"view {name!r} has no video path", path=path, line=line)
        view_path = Path(os.path.normpath(path.parent.absolute() / value.strip()))
        if check_files and not view_path.is_file():
            raise ManifestError(
                f"view {name!r}: video file {view_path} does not exist", path=path, line=line
            )
        views[str(name)] = view_path
    return ClipRecord(views=views, **values)


def _relative(view_path: Path, base: Path) -> str:
    view_path = Path(os.path.normpath(Path(view_path).absolute()))
    try:
        return Path(os.path.relpath(view_path, base)).as_posix()
    except ValueError:  # another drive (Windows): keep the absolute path
        return view_path.as_posix()
