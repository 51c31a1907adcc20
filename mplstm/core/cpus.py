"""How many CPUs this process may use: its affinity, capped by a cgroup CPU quota.

`os.cpu_count()` reports the host's CPUs: in a Kubernetes pod limited to 4 CPUs on a
64-core node it says 64, and a pool sized from it would run 64 decoders on 4 CPUs'
worth of time. The quota (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us`) is what the pod
may really use.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def quota_cpus(root: Path = CGROUP_ROOT) -> int | None:
    """Whole CPUs the cgroup quota allows (at least 1), or None where no quota is set."""
    try:
        text = (root / "cpu.max").read_text().split()  # v2: "max 100000" or "QUOTA PERIOD"
        quota, period = (None if text[0] == "max" else float(text[0])), float(text[1])
    except (OSError, IndexError, ValueError):
        try:  # v1
            quota = float((root / "cpu" / "cpu.cfs_quota_us").read_text())
            period = float((root / "cpu" / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            return None
        quota = None if quota < 0 else quota
    if quota is None or period <= 0:
        return None
    # Rounded down: 1.5 CPUs of time keep one busy thread, not two half-starved ones.
    return max(1, math.floor(quota / period))


def usable_cpus(root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may run on (affinity), capped by the cgroup quota."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    quota = quota_cpus(root)
    return min(cpus or 1, quota) if quota else cpus or 1


def threads_per_worker(workers: int, threads: int = 0) -> int:
    """Intra-op threads for each of `workers` processes: `threads`, else the usable CPUs shared out."""
    if threads:
        return threads
    return max(1, usable_cpus() // workers)
