"""Killed with SIGKILL at any point and run again with --resume, every clip is there exactly once."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from scoring_helpers import kill_group, run_until_hold, score_argv, score_in_process, start_and_hold

from mplstm.scoring.output import ChunkStore, read_rows
from mplstm.scoring.shards import Shard

# Where the model runs -> the hold that stops the scorer mid-decode with one chunk committed.
MID_DECODE = {
    # The 14th clip handed to the decode worker (clips go one at a time, 2 batches ahead).
    "main": "decode:14",
    # The 9th clip: the third batch handed out as the first one's rows are committed.
    "workers": "decode:9",
}


@pytest.mark.parametrize("inference", ["workers", "main"])
@pytest.mark.parametrize(
    ("hold", "what"),
    [
        ("mid-decode", "during decode"),
        # Half of the second chunk's rows written to its temporary file.
        ("write:2", "during write"),
        # The second chunk committed, the third not begun.
        ("between:2", "between chunks"),
    ],
)
def test_killed_at_any_point_then_resumed_every_id_is_there_exactly_once(
    hold: str, what: str, inference: str, package_dir: Path, dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    hold = MID_DECODE[inference] if hold == "mid-decode" else hold
    argv = score_argv(package_dir, dataset, out, "--decode-workers", "1", "--inference", inference)
    run_until_hold(argv, hold, tmp_path / "held")

    folder = out / Shard().name
    assert not (out / "scores.jsonl").exists()
    leftovers = [p for p in folder.iterdir() if p.name.startswith(".")]
    assert bool(leftovers) == hold.startswith("write"), what
    store = ChunkStore(folder, "jsonl")
    # Every committed line is a whole row: strict JSON, every column.
    kept = [json.loads(line) for chunk in store.chunks() for line in chunk.read_text().splitlines()]
    assert len(kept) == (4 if hold != "between:2" else 8), what
    assert all(row["status"] == "ok" and len(row["top_k"]) == 4 for row in kept)

    assert score_in_process(package_dir, dataset, out, "--resume") == 0
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]
    chunk_ids = [row.id for row in store.rows()]
    assert len(chunk_ids) == len(set(chunk_ids)) == 16
    final = read_rows(out / "scores.jsonl")
    assert sorted(row.id for row in final) == sorted(chunk_ids)
    # The rows committed before the kill are kept as they were, not scored again.
    assert {row["id"]: row["score"] for row in kept}.items() <= {
        row.id: row.score for row in final
    }.items()
    summary = json.loads((folder / "summary.json").read_text())
    assert (summary["resumed"], summary["scored"]) == (len(kept), 16 - len(kept))


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")
def test_decode_workers_exit_when_the_scorer_alone_is_killed(
    package_dir: Path, dataset: Path, tmp_path: Path
) -> None:
    argv = score_argv(package_dir, dataset, tmp_path / "out", "--decode-workers", "2")
    proc = start_and_hold(argv, "between:1", tmp_path / "held")
    try:
        children = [
            int(pid)
            for task in Path(f"/proc/{proc.pid}/task").iterdir()
            for pid in (task / "children").read_text().split()
        ]
        assert len(children) >= 2
        os.kill(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while any(map(_alive, children)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(map(_alive, children))
    finally:
        kill_group(proc)
