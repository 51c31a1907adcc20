"""Shared by every benchmark: the machine line, and one section of docs/benchmarks.md each.

Each benchmark owns a section between `<!-- bench:NAME -->` markers, so benchmarks
rerun independently without overwriting each other's results.
"""

from __future__ import annotations

import platform
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

from mplstm.core.cpus import usable_cpus

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "docs" / "benchmarks.md"
PLOTS_DIR = ROOT / "docs" / "plots"
_HEADER = (
    "# Benchmarks\n\n"
    "Every figure is a ratio of two things measured side by side in one run.\n"
    "Each section says the command that reruns it, the machine and the date.\n"
)


def machine() -> str:
    """A one-line description of the machine the numbers come from."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{cpu}, {cores()} cores usable, Python {sys.version.split()[0]}, {platform.system()}"


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


def write_section(name: str, markdown: str) -> Path:
    """Replace (or append) the section `name` of docs/benchmarks.md with `markdown`."""
    BENCHMARKS_MD.parent.mkdir(parents=True, exist_ok=True)
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else _HEADER
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    text = (
        pattern.sub(lambda _: block, text)
        if pattern.search(text)
        else f"{text.rstrip()}\n\n{block}\n"
    )
    BENCHMARKS_MD.write_text(text)
    return BENCHMARKS_MD


def plot_path(name: str) -> Path:
    """Where a benchmark saves its plot (linked from its section as plots/NAME.png)."""
    PLOTS_DIR.mkdir(parents=True, exist_ok=True)
    return PLOTS_DIR / f"{name}.png"


def cores() -> int:
    """CPUs this process may use (affinity, capped by a cgroup quota)."""
    return usable_cpus()
