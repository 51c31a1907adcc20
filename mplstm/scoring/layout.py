"""The output folder of a scoring run (one folder for every shard of a Job).

OUT/run.json                     what the run scores: model, manifest, shards, format
OUT/shard-00000-of-00004/        one folder per shard
    chunk-000000-1f2e3d4c.jsonl  committed chunks (all-or-nothing)
    summary.json                 written last: the shard is complete
OUT/scores.jsonl                 every row once: written by a single-shard run, or by
                                 `mplstm score merge OUT` once every shard is complete
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from mplstm.scoring.output import OutputError
from mplstm.scoring.shards import Shard

RUN_FILE = "run.json"
SUMMARY_FILE = "summary.json"
MERGED_STEM = "scores"


@dataclass(frozen=True)
class RunInfo:
    """What every shard writing to one output folder must agree on."""

    model: str  # package name
    version: str
    manifest: str  # absolute path, so `merge` can list the expected ids
    num_shards: int
    format: str

    def shard_folder(self, out: Path, index: int) -> Path:
        return out / Shard(index, self.num_shards).name

    def merged_path(self, out: Path) -> Path:
        return out / f"{MERGED_STEM}.{self.format}"


def read_run_info(out: Path) -> RunInfo | None:
    """The folder's run.json, or None when there is none yet."""
    path = out / RUN_FILE
    if not path.is_file():
        return None
    try:
        return RunInfo(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise OutputError(f"{path} is unreadable ({exc}); is {out} a scoring output?") from exc


def claim_run(out: Path, info: RunInfo) -> None:
    """Record `info` in OUT/run.json, or check it matches the run already recorded there."""
    out.mkdir(parents=True, exist_ok=True)
    found = read_run_info(out)
    if found is None:
        # Shards start together: each writes the same content, renamed into place.
        tmp = out / f".{RUN_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(asdict(info), indent=2) + "\n")
        os.replace(tmp, out / RUN_FILE)
        return
    if found != info:
        changed = [k for k, v in asdict(info).items() if asdict(found)[k] != v]
        details = ", ".join(
            f"{k} {asdict(found)[k]!r} there, {asdict(info)[k]!r} now" for k in changed
        )
        raise OutputError(
            f"{out} holds another run ({details}); use a new --out folder, or the same "
            "--model, --manifest, --num-shards and --format as that run"
        )
