"""Helpers of the scoring tests: run `mplstm score` in-process or as a killable subprocess.

In-process runs use one ONNX Runtime thread and no decode processes, to be kind to a
shared 2-core host; a subprocess runs in its own session, so a test can SIGKILL it with
its decode workers. (A module of its own, not conftest.py: `from conftest import` picks
whichever tests folder's conftest was imported first when folders run together.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from mplstm.cli import build_parser, main
from mplstm.core.manifest import ClipRecord
from mplstm.scoring.hooks import ScoringHooks

ROOT = Path(__file__).resolve().parents[2]
HELD_SCORER = Path(__file__).with_name("held_scorer.py")


def score_argv(model: Path, manifest: Path, out: Path, *extra: str) -> list[str]:
    """`mplstm score` arguments for the tests: CPU, one ORT thread, no progress bar."""
    return [
        "score", "--model", str(model), "--manifest", str(manifest), "--out", str(out),
        "--device", "cpu", "--threads", "1", "--batch-size", "4", "--no-progress", *extra,
    ]  # fmt: skip


def score_in_process(model: Path, manifest: Path, out: Path, *extra: str) -> int:
    """Run `mplstm score` here, decoding in the main process unless `extra` says otherwise."""
    workers = [] if "--decode-workers" in extra else ["--decode-workers", "0"]
    return main(score_argv(model, manifest, out, *workers, *extra))


def score_with_hooks(
    model: Path, manifest: Path, out: Path, hooks: ScoringHooks, *extra: str
) -> int:
    """`mplstm score` here, as `score_in_process` does, with `hooks` watching the run."""
    workers = [] if "--decode-workers" in extra else ["--decode-workers", "0"]
    args = build_parser().parse_args(score_argv(model, manifest, out, *workers, *extra))
    return args.func(args, hooks=hooks)


def start_and_hold(
    argv: list[str], hold: str, marker: Path, timeout_s: float = 120
) -> subprocess.Popen:
    """Start `mplstm ARGV` in its own session through held_scorer.py; wait for the hold."""
    proc = subprocess.Popen(
        [sys.executable, str(HELD_SCORER), hold, str(marker), *argv],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout_s
    while not marker.exists():
        problem = None
        if proc.poll() is not None:
            output = proc.stdout.read().decode() if proc.stdout else ""
            problem = f"scorer exited ({proc.returncode}) before holding at {hold}:\n{output}"
        elif time.monotonic() > deadline:
            problem = f"scorer did not reach {hold} in {timeout_s} s"
        if problem:
            kill_group(proc)
            pytest.fail(problem)
        time.sleep(0.05)
    return proc


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the scorer's whole process group, decode workers included, as a pod kill does."""
    with contextlib.suppress(ProcessLookupError):  # the group may be gone already
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if proc.stdout:
        proc.stdout.close()


def run_until_hold(argv: list[str], hold: str, marker: Path) -> None:
    """Run the scorer until it holds at `hold`, then SIGKILL it with its workers."""
    kill_group(start_and_hold(argv, hold, marker))


def with_views(record: ClipRecord, **views: Path) -> ClipRecord:
    """A copy of `record` with some view paths replaced."""
    return dataclasses.replace(record, views={**record.views, **views})


def crash_on(front: str, views: Mapping[str, object]) -> None:
    """A decode hook: in a worker process given the clip whose front view is `front`, die.

    As a decoder crash on a hostile file would (the main process never dies of it).
    """
    if str(views.get("front")) == front and multiprocessing.parent_process() is not None:
        os._exit(70)
