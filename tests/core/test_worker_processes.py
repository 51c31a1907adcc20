"""Decode worker processes: work crosses the process boundary intact, and a dead worker is replaced."""

from __future__ import annotations

import os
import pickle
from concurrent.futures.process import BrokenProcessPool

import pytest

from mplstm.core.errors import ClipError, ClipTooLongError, ViewNamesError
from mplstm.core.worker_processes import WorkerProcesses


def _raise_clip_error() -> None:
    raise ClipTooLongError("3001 frames; at most 3000", view="left30")


@pytest.mark.parametrize("error", [ClipTooLongError("long", view="front"), ViewNamesError("x")])
def test_clip_error_pickles_with_its_message_view_and_code(error: ClipError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), str(copy), copy.view, copy.code) == (
        type(error),
        str(error),
        error.view,
        error.code,
    )


def test_clip_error_raised_in_a_worker_reaches_the_parent_with_its_view() -> None:
    with WorkerProcesses(1).start() as workers, pytest.raises(ClipTooLongError) as caught:
        workers.submit(_raise_clip_error).result(timeout=60)
    assert caught.value.view == "left30"
    assert str(caught.value) == "view 'left30': 3001 frames; at most 3000"


def test_tasks_run_in_other_processes() -> None:
    with WorkerProcesses(2).start() as workers:
        pids = {workers.submit(os.getpid).result(timeout=60) for _ in range(8)}
    assert os.getpid() not in pids
    assert 1 <= len(pids) <= 2


def test_a_dead_worker_breaks_the_pool_and_restart_replaces_it() -> None:
    with WorkerProcesses(1).start() as workers:
        before = workers.submit(os.getpid).result(timeout=60)
        with pytest.raises(BrokenProcessPool):
            workers.submit(os._exit, 3).result(timeout=60)
        workers.restart()
        after = workers.submit(os.getpid).result(timeout=60)
    assert after != before


def test_restart_of_a_healthy_pool_keeps_its_workers() -> None:
    with WorkerProcesses(1).start() as workers:
        before = workers.submit(os.getpid).result(timeout=60)
        workers.restart()
        assert workers.submit(os.getpid).result(timeout=60) == before


def test_zero_workers_is_refused() -> None:
    with pytest.raises(ValueError, match="workers must be >= 1"):
        WorkerProcesses(0)
