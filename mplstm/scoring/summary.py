"""The end-of-run summary: counts, accuracy where labels are known, throughput, time per stage."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from mplstm.scoring.pipeline import StageTimes
from mplstm.scoring.rows import ScoreRow


@dataclass(frozen=True)
class ScoreSummary:
    """A shard's results (every committed row) and this run's speed."""

    model: str
    shard: str
    clips: int  # rows committed for the shard, earlier runs included
    ok: int
    errors: int
    errors_by_code: dict[str, int]
    # Views that failed a camera check, camera -> reason -> clips (masked or refused).
    views_dropped: dict[str, dict[str, int]]
    labelled: int  # ok rows whose label is one of the model's labels
    accuracy: float | None  # over `labelled`; None when there is none
    resumed: int  # rows an earlier run had committed
    scored: int  # rows this run committed
    wall_s: float
    clips_per_s: float  # this run: scored / wall
    decode_s: float  # summed over decode workers
    inference_s: float
    decode_wait_s: float  # inference idle, waiting for decoded clips
    batches: int
    inference_in: str  # "main process", or "N decode workers" (each inferring its own batches)

    @property
    def exit_code(self) -> int:
        """0: every clip scored; 1: some clips have error rows."""
        return 1 if self.errors else 0

    def write(self, path: Path) -> Path:
        """As JSON, renamed into place (its presence marks the shard complete)."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, path)
        return path


def summarize(
    rows: Sequence[ScoreRow],
    labels: Sequence[str],
    *,
    model: str,
    shard: str,
    resumed: int,
    scored: int,
    wall_s: float,
    times: StageTimes,
    inference_in: str = "main process",
) -> ScoreSummary:
    """Counts and accuracy over `rows`, speed from this run's `times`."""
    known = set(labels)
    ok = [r for r in rows if r.ok]
    labelled = [r for r in ok if r.label in known]
    correct = sum(r.prediction == r.label for r in labelled)
    return ScoreSummary(
        model=model,
        shard=shard,
        clips=len(rows),
        ok=len(ok),
        errors=len(rows) - len(ok),
        errors_by_code=dict(Counter(r.error_code or "unknown" for r in rows if not r.ok)),
        views_dropped=dropped_by_camera(rows),
        labelled=len(labelled),
        accuracy=correct / len(labelled) if labelled else None,
        resumed=resumed,
        scored=scored,
        wall_s=wall_s,
        clips_per_s=scored / wall_s if wall_s > 0 else 0.0,
        decode_s=times.decode_s,
        inference_s=times.inference_s,
        decode_wait_s=times.decode_wait_s,
        batches=times.batches,
        inference_in=inference_in,
    )


def dropped_by_camera(rows: Sequence[ScoreRow]) -> dict[str, dict[str, int]]:
    """Camera -> reason -> how many rows had that camera fail its check that way."""
    counts: dict[str, Counter[str]] = {}
    for row in rows:
        for view, reason, _ in row.views_dropped:
            counts.setdefault(view, Counter())[reason] += 1
    return {view: dict(sorted(c.items())) for view, c in sorted(counts.items())}


def format_summary(s: ScoreSummary) -> str:
    """A few lines for the terminal."""
    lines = [f"{s.model} {s.shard}: {s.clips} clips, {s.ok} ok, {s.errors} error(s)"]
    if s.errors_by_code:
        codes = ", ".join(f"{code} {n}" for code, n in sorted(s.errors_by_code.items()))
        lines.append(f"  errors: {codes}")
    if s.views_dropped:
        dropped = ", ".join(
            f"{view} {reason} {n}"
            for view, reasons in s.views_dropped.items()
            for reason, n in reasons.items()
        )
        lines.append(f"  cameras failed: {dropped}")
    if s.accuracy is not None:
        lines.append(f"  accuracy: {s.accuracy:.1%} over {s.labelled} labelled clips")
    if s.resumed:
        lines.append(f"  resumed: {s.resumed} rows from an earlier run kept, {s.scored} scored now")
    stage_total = s.decode_s + s.inference_s
    share = f"{s.decode_s / stage_total:.0%} decode" if stage_total > 0 else "n/a"
    where = (
        f"decode {s.decode_s:.1f} s (workers, summed), inference {s.inference_s:.1f} s "
        f"in {s.batches} batches ({share}); waited for decode {s.decode_wait_s:.1f} s"
        if s.inference_in == "main process"
        else f"decode {s.decode_s:.1f} s, inference {s.inference_s:.1f} s in {s.batches} "
        f"batches ({share}), both in the {s.inference_in}, summed"
    )
    lines.append(
        f"  throughput: {s.clips_per_s:.1f} clips/s ({s.scored} in {s.wall_s:.1f} s); {where}"
    )
    return "\n".join(lines)
