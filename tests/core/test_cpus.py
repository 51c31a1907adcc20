"""CPU counts honour a cgroup CPU quota (v2 and v1) and the process's affinity."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mplstm.core.cpus import quota_cpus, threads_per_worker, usable_cpus


def _v2(root: Path, text: str) -> Path:
    root.mkdir(exist_ok=True)
    (root / "cpu.max").write_text(text)
    return root


def _v1(root: Path, quota: str, period: str = "100000") -> Path:
    (root / "cpu").mkdir(parents=True, exist_ok=True)
    (root / "cpu" / "cpu.cfs_quota_us").write_text(quota)
    (root / "cpu" / "cpu.cfs_period_us").write_text(period)
    return root


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("max 100000\n", None), ("400000 100000\n", 4), ("150000 100000\n", 1), ("5000 100000", 1)],
)
def test_cgroup_v2_quota_gives_whole_cpus_rounded_down(
    text: str, cpus: int | None, tmp_path: Path
) -> None:
    assert quota_cpus(_v2(tmp_path / "cg", text)) == cpus


@pytest.mark.parametrize(("quota", "cpus"), [("-1", None), ("200000", 2), ("250000", 2)])
def test_cgroup_v1_quota_gives_whole_cpus_and_minus_one_means_none(
    quota: str, cpus: int | None, tmp_path: Path
) -> None:
    assert quota_cpus(_v1(tmp_path / "cg", quota)) == cpus


def test_no_or_unreadable_cgroup_files_mean_no_quota(tmp_path: Path) -> None:
    assert quota_cpus(tmp_path / "missing") is None
    assert quota_cpus(_v2(tmp_path / "garbled", "")) is None


def test_usable_cpus_is_the_affinity_capped_by_the_quota(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    assert usable_cpus(tmp_path / "none") == affinity
    assert usable_cpus(_v2(tmp_path / "one", "100000 100000")) == 1
    assert usable_cpus(_v2(tmp_path / "many", f"{(affinity + 8) * 100000} 100000")) == affinity


def test_threads_per_worker_shares_the_cores_unless_given() -> None:
    cores = len(os.sched_getaffinity(0))
    assert threads_per_worker(1) == cores
    assert threads_per_worker(cores * 2) == 1
    assert threads_per_worker(2, threads=3) == 3
