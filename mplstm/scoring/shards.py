"""Which shard scores a clip: a stable hash of its id, so every run and every pod agrees.

Python's `hash()` is salted per process, so the shard comes from sha256 of the id:
the same manifest split the same way on any machine, in any order, with any other
clips around it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

# Set by Kubernetes in each pod of an Indexed Job (completionMode: Indexed).
JOB_INDEX_ENV = "JOB_COMPLETION_INDEX"

T = TypeVar("T")


class ShardError(ValueError):
    """Shard options that do not make sense together; the message says which."""


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (0-based)."""

    index: int = 0
    count: int = 1

    @property
    def name(self) -> str:
        """Folder name of this shard's output, e.g. shard-00003-of-00008."""
        return f"shard-{self.index:05d}-of-{self.count:05d}"

    def holds(self, clip_id: str) -> bool:
        """Whether this shard scores `clip_id`."""
        return shard_of(clip_id, self.count) == self.index


def shard_of(clip_id: str, num_shards: int) -> int:
    """The shard (0..num_shards-1) of a clip id: sha256 of its UTF-8 bytes, modulo."""
    digest = hashlib.sha256(clip_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % num_shards


def resolve_shard(
    shard_index: int | None, num_shards: int, environ: Mapping[str, str] = os.environ
) -> Shard:
    """The shard to score from `--shard-index`, else `JOB_COMPLETION_INDEX`, with `--num-shards`."""
    if num_shards < 1:
        raise ShardError(f"--num-shards must be >= 1, got {num_shards}")
    index = shard_index
    if index is None and environ.get(JOB_INDEX_ENV, "").strip():
        raw = environ[JOB_INDEX_ENV].strip()
        if not raw.isdigit():
            raise ShardError(f"{JOB_INDEX_ENV}={raw!r} is not a non-negative integer")
        index = int(raw)
        if num_shards == 1 and index > 0:
            raise ShardError(
                f"{JOB_INDEX_ENV}={index} but --num-shards is 1: pass --num-shards equal to "
                "the Job's completions"
            )
    index = 0 if index is None else index
    if not 0 <= index < num_shards:
        raise ShardError(f"shard index {index} is outside 0..{num_shards - 1} (--num-shards)")
    return Shard(index, num_shards)


def select(items: Iterable[T], shard: Shard, key: str = "id") -> list[T]:
    """The items (records with an `id`) that belong to `shard`, in their original order."""
    return [item for item in items if shard.holds(getattr(item, key))]
