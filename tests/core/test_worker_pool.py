"""The one worker-process pool: results in order, errors with their type, a dead worker
replaced without losing other workers' tasks, and the one crash policy (retry alone, then
blame), from the event loop and from synchronous code alike."""

from __future__ import annotations

import asyncio
import os
import pickle
import time
from collections.abc import Callable, Coroutine
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest

from mplstm.core.errors import ClipError, ClipTooLongError, ViewNamesError
from mplstm.core.worker_pool import CRASH_ATTEMPTS, PoolThread, WorkerCrashedError, WorkerPool

# Tasks: module-level, so that a spawned worker can unpickle them.


def pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def fail(message: str) -> None:
    raise ValueError(message)


def die() -> None:
    os._exit(3)


def die_once(marker: str) -> int:
    """Kill the worker the first time (no marker file yet); answer on the retry."""
    if not os.path.exists(marker):
        Path(marker).touch()
        os._exit(3)
    return os.getpid()


def count_and_sleep(log: str, seconds: float) -> int:
    """Note a run in `log`, then take `seconds`: an innocent task beside a crashing one."""
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    return os.getpid()


def _raise_clip_error() -> None:
    raise ClipTooLongError("3001 frames; at most 3000", view="left30")


def run(test: Callable[[WorkerPool], Coroutine[Any, Any, None]], workers: int = 2) -> None:
    async def main() -> None:
        pool = await WorkerPool(workers).start()
        try:
            await test(pool)
        finally:
            await pool.close()

    asyncio.run(main())


def test_tasks_run_in_the_workers_and_answer_in_order() -> None:
    async def test(pool: WorkerPool) -> None:
        pids = await asyncio.gather(*(pool.submit(pid_after, 0.01 * (i % 3)) for i in range(12)))
        assert os.getpid() not in pids
        assert len(set(pids)) == 2  # both workers took tasks
        assert len(set(await pool.run_on_each(pid_after, 0.2))) == 2

    run(test)


def test_an_error_comes_back_with_its_type_and_the_workers_traceback() -> None:
    async def test(pool: WorkerPool) -> None:
        with pytest.raises(ValueError, match="bad clip") as caught:
            await pool.submit(fail, "bad clip")
        assert any("in fail" in note for note in caught.value.__notes__)
        assert await pool.submit(pid_after, 0) != os.getpid()  # the worker lives on

    run(test)


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
    async def test(pool: WorkerPool) -> None:
        with pytest.raises(ClipTooLongError) as caught:
            await pool.submit(_raise_clip_error)
        assert caught.value.view == "left30"
        assert str(caught.value) == "view 'left30': 3001 frames; at most 3000"

    run(test, workers=1)


def test_a_dead_worker_fails_only_its_task_and_is_replaced() -> None:
    async def test(pool: WorkerPool) -> None:
        slow = asyncio.ensure_future(pool.submit(pid_after, 1.0))  # on the other worker
        await asyncio.sleep(0.3)
        with pytest.raises(BrokenProcessPool):
            await pool.submit(die)
        survivor = await slow
        pids = await pool.run_on_each(pid_after, 0.2)
        assert len(pids) == 2 and survivor in pids  # a fresh worker beside the survivor

    run(test)


def test_a_task_given_up_on_does_not_shift_the_answers_of_the_next() -> None:
    async def test(pool: WorkerPool) -> None:
        await pool.run_on_each(pid_after, 0)  # started
        with pytest.raises(TimeoutError):  # a request past its deadline
            async with asyncio.timeout(0.1):
                await pool.submit(pid_after, 0.5)
        with pytest.raises(ValueError, match="next"):
            await pool.submit(fail, "next")  # its own answer, not the late one's

    run(test, workers=1)


def test_a_task_whose_worker_died_once_runs_again_and_answers(tmp_path: Path) -> None:
    async def test(pool: WorkerPool) -> None:
        assert await pool.submit(die_once, str(tmp_path / "died-once")) != os.getpid()

    run(test)


def test_a_task_that_kills_its_worker_alone_is_blamed_after_the_crash_attempts() -> None:
    async def test(pool: WorkerPool) -> None:
        with pytest.raises(
            WorkerCrashedError, match=f"{CRASH_ATTEMPTS} times, the last time alone"
        ):
            await pool.submit(die)
        assert len(set(await pool.run_on_each(pid_after, 0.2))) == 2  # both replaced

    run(test)


def test_an_innocent_task_queued_behind_a_crash_is_retried_not_blamed(tmp_path: Path) -> None:
    """One worker: the innocent task waits behind one that always kills it, dying with it.

    Retried beside the killer it would die a second time and be blamed; alone, it answers.
    """
    log = tmp_path / "runs"

    async def test(pool: WorkerPool) -> None:
        crash = asyncio.ensure_future(pool.submit(die))
        innocent = asyncio.ensure_future(pool.submit(count_and_sleep, str(log), 0.0))
        await asyncio.sleep(0)  # both sent to the one worker before it dies
        assert await innocent != os.getpid()
        with pytest.raises(WorkerCrashedError):
            await crash
        # The innocent task ran once, on its retry (its first copy died unstarted).
        assert len(log.read_text().split()) == 1

    run(test, workers=1)


def test_zero_workers_is_refused() -> None:
    with pytest.raises(ValueError, match="workers must be >= 1"):
        WorkerPool(0)


def test_a_closed_pool_refuses_work_saying_so() -> None:
    async def main() -> None:
        pool = await WorkerPool(1).start()
        await pool.close()
        with pytest.raises(RuntimeError, match="not running"):
            await pool.submit(pid_after, 0)

    asyncio.run(main())


def test_synchronous_code_uses_the_same_pool_through_a_thread(tmp_path: Path) -> None:
    with PoolThread(2).start() as pool:
        pids = {pool.submit(os.getpid).result(timeout=60) for _ in range(8)}
        assert os.getpid() not in pids and 1 <= len(pids) <= 2
        assert pool.submit(die_once, str(tmp_path / "died")).result(timeout=60) not in (None, 0)
        with pytest.raises(WorkerCrashedError):
            pool.submit(die).result(timeout=60)
        with pytest.raises(ClipTooLongError):
            pool.submit(_raise_clip_error).result(timeout=60)
