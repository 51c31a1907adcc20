"""`mplstm score merge OUT`: join the shards' outputs into one file, and say what is wrong.

Reports shards that never started or did not finish (no summary.json), ids that have
more than one row, ids of the manifest with no row and rows whose id is not in it.
The merged file holds each id once and is written only when the run is complete
(or when asked to write a partial result).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mplstm.core.manifest import read_manifest
from mplstm.scoring.layout import SUMMARY_FILE, RunInfo, read_run_info
from mplstm.scoring.output import ChunkStore, OutputError, commit_file
from mplstm.scoring.rows import ScoreRow

_SHOWN = 10  # ids listed per problem in the message; the report holds them all


@dataclass(frozen=True)
class MergeReport:
    """What `merge` found, and where it wrote the merged rows (None: not written)."""

    out: Path
    num_shards: int
    missing_shards: tuple[int, ...]  # no folder, or no committed chunk
    incomplete_shards: tuple[int, ...]  # rows there, but no summary.json: running or killed
    rows: int  # distinct ids written
    ok: int
    errors: int
    duplicate_ids: tuple[str, ...]
    missing_ids: tuple[str, ...]  # in the manifest, without a row
    unexpected_ids: tuple[str, ...]  # with a row, not in the manifest
    path: Path | None

    @property
    def complete(self) -> bool:
        """Every shard finished and every manifest id has exactly one row."""
        return not (
            self.missing_shards
            or self.incomplete_shards
            or self.duplicate_ids
            or self.missing_ids
            or self.unexpected_ids
        )

    def problems(self) -> list[str]:
        """One line per kind of problem, naming the first few shards or ids."""
        out = []
        for what, items in (
            ("missing shards (never ran, or committed nothing)", self.missing_shards),
            (
                "incomplete shards (running, or killed: rerun them with --resume)",
                self.incomplete_shards,
            ),
            ("ids with more than one row", self.duplicate_ids),
            ("manifest ids with no row", self.missing_ids),
            ("ids not in the manifest", self.unexpected_ids),
        ):
            if items:
                shown = ", ".join(str(i) for i in items[:_SHOWN])
                more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
                out.append(f"{len(items)} {what}: {shown}{more}")
        return out


def merge_outputs(
    out: Path, *, manifest: Path | None = None, write_partial: bool = False
) -> MergeReport:
    """Join every shard of the run in `out`; writes OUT/scores.FORMAT when complete."""
    info = read_run_info(out)
    if info is None:
        raise OutputError(f"{out} has no run.json: not the --out folder of `mplstm score`")
    rows, missing, incomplete = _shard_rows(out, info)
    counts = Counter(row.id for row in rows)
    unique: dict[str, ScoreRow] = {}
    for row in rows:
        unique.setdefault(row.id, row)
    expected = [r.id for r in read_manifest(manifest or Path(info.manifest), check_files=False)]
    expected_set = set(expected)
    report = MergeReport(
        out=out,
        num_shards=info.num_shards,
        missing_shards=tuple(missing),
        incomplete_shards=tuple(incomplete),
        rows=len(unique),
        ok=sum(row.ok for row in unique.values()),
        errors=sum(not row.ok for row in unique.values()),
        duplicate_ids=tuple(sorted(i for i, n in counts.items() if n > 1)),
        missing_ids=tuple(i for i in expected if i not in unique),
        unexpected_ids=tuple(sorted(set(unique) - expected_set)),
        path=None,
    )
    if report.complete or write_partial:
        # Manifest order first, so the merged file reads like the manifest.
        order = {clip_id: i for i, clip_id in enumerate(expected)}
        ordered = sorted(unique.values(), key=lambda r: (order.get(r.id, len(order)), r.id))
        path = commit_file(info.merged_path(out), ordered, info.format)
        report = dataclasses.replace(report, path=path)
    return report


def _shard_rows(out: Path, info: RunInfo) -> tuple[list[ScoreRow], list[int], list[int]]:
    rows: list[ScoreRow] = []
    missing, incomplete = [], []
    for index in range(info.num_shards):
        folder = info.shard_folder(out, index)
        store = ChunkStore(folder, info.format) if folder.is_dir() else None
        chunks = store.chunks() if store else []
        if not chunks and not (folder / SUMMARY_FILE).is_file():
            missing.append(index)
            continue
        if not (folder / SUMMARY_FILE).is_file():
            incomplete.append(index)
        if store:
            rows += store.rows()
    return rows, missing, incomplete
