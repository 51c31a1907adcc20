"""The event-loop worker pool and the decode pool on it: results in order, errors with
their type, a dead worker replaced without losing other workers' tasks, crash retries."""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import Callable, Coroutine
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest

from mplstm.core.errors import CorruptVideoError
from mplstm.core.limits import DecodeLimits
from mplstm.core.preprocess import PreprocessConfig
from mplstm.core.worker_processes import CRASH_ATTEMPTS
from mplstm.service.decode_pool import DecodePool
from mplstm.service.worker_pool import WorkerPool

# Tasks: module-level, so that a spawned worker can unpickle them.


def pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def fail(message: str) -> None:
    raise ValueError(message)


def die() -> None:
    os._exit(3)


def die_once(data: dict[str, bytes], config: PreprocessConfig, marker: str) -> str:
    """Kill the worker the first time (no marker file yet); answer on the retry."""
    if not os.path.exists(marker):
        Path(marker).touch()
        os._exit(3)
    return "decoded"


def always_die(data: dict[str, bytes], config: PreprocessConfig) -> None:
    os._exit(3)


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


def test_decode_pool_retries_a_clip_whose_worker_died_and_refuses_one_that_always_kills(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        pool = await DecodePool.open(2, DecodeLimits())
        try:
            config = PreprocessConfig()
            marker = str(tmp_path / "died-once")
            assert await pool.run(die_once, {"front": io.BytesIO(b"")}, config, marker) == "decoded"
            with pytest.raises(CorruptVideoError, match=f"crashed on this clip {CRASH_ATTEMPTS}"):
                await pool.run(always_die, {"front": io.BytesIO(b"")}, config)
            assert len(set(await pool.run_on_each(pid_after, 0.2))) == 2
        finally:
            await pool.close()

    asyncio.run(main())
