"""A clip's shard comes from its id alone: the same in every process, every order, every pod."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import pytest

from mplstm.core.manifest import ClipRecord
from mplstm.scoring.shards import JOB_INDEX_ENV, Shard, ShardError, resolve_shard, select, shard_of

IDS = [f"s{speaker:03d}_w{word:02d}_{rep}" for speaker in range(20) for word in range(10) for rep in range(5)]  # fmt: skip


def test_shard_of_an_id_is_the_same_in_another_process_with_another_hash_seed() -> None:
    code = "import sys; from mplstm.scoring.shards import shard_of; "
    code += "print(' '.join(str(shard_of(i, 7)) for i in sys.argv[1:]))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code, *IDS[:50]], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert [int(s) for s in out] == [shard_of(i, 7) for i in IDS[:50]]


def test_shards_split_ids_evenly_and_each_id_into_exactly_one() -> None:
    records = [ClipRecord(i, "w00", "s001", "test", {}) for i in IDS]
    shards = [select(records, Shard(k, 4)) for k in range(4)]
    ids = [r.id for shard in shards for r in shard]
    assert sorted(ids) == sorted(IDS) and len(set(ids)) == len(IDS)
    counts = Counter(shard_of(i, 4) for i in IDS)
    assert min(counts.values()) > 0.8 * len(IDS) / 4


def test_job_completion_index_picks_the_shard_unless_an_index_is_given() -> None:
    assert resolve_shard(None, 5, {JOB_INDEX_ENV: "3"}) == Shard(3, 5)
    assert resolve_shard(1, 5, {JOB_INDEX_ENV: "3"}) == Shard(1, 5)
    assert resolve_shard(None, 1, {}) == Shard(0, 1)


@pytest.mark.parametrize(
    ("index", "count", "env", "message"),
    [
        (5, 5, {}, "outside 0..4"),
        (None, 0, {}, "--num-shards must be >= 1"),
        (None, 4, {JOB_INDEX_ENV: "x"}, "not a non-negative integer"),
        (None, 1, {JOB_INDEX_ENV: "2"}, "--num-shards is 1"),
    ],
)
def test_impossible_shard_options_are_refused_with_the_reason(
    index: int | None, count: int, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ShardError, match=message):
        resolve_shard(index, count, env)
