"""Scoring fixtures: one tiny exported package and one small synthetic data set per session.

The package is the session's tiny untrained MP-LSTM (3 views front/left90/right30, labels
w00..w03, 8 frames of 32x32 gray) exported with `build_package`; the clips come from
`mplstm.core.synth` with the same view names. Helpers run `mplstm score` in-process (with
one ONNX Runtime thread and no decode processes, to be kind to a shared 2-core host) or
as a subprocess in its own session, so a test can SIGKILL it with its decode workers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mplstm.cli import main
from mplstm.core.manifest import ClipRecord, read_manifest
from mplstm.core.synth import SynthConfig, generate

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def checkpoint(tiny_checkpoint: Callable[..., Path]) -> Path:
    return tiny_checkpoint("mplstm")


@pytest.fixture(scope="session")
def package_dir(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/tiny/1, exported from the tiny checkpoint; `--model` takes models/tiny."""
    from mplstm.export.package import build_package

    models = tmp_path_factory.mktemp("repo") / "models"
    build_package(checkpoint, models / "tiny" / "1")
    return models / "tiny"


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 clips (2 speakers x 4 words x 2), 3 views of 32x32, all in the test split."""
    out = tmp_path_factory.mktemp("synth")
    config = SynthConfig(
        task="lipreading",
        speakers=2,
        words=4,
        views=3,
        clips_per_pair=2,
        size=(32, 32),
        split="test",
    )
    generate(config, out, workers=1, progress=False)
    return out / "manifest.jsonl"


@pytest.fixture(scope="session")
def records(dataset: Path) -> list[ClipRecord]:
    return read_manifest(dataset)


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


def start_and_hold(
    argv: list[str], hold: str, marker: Path, timeout_s: float = 120
) -> subprocess.Popen:
    """Start `mplstm ARGV` in its own session with MPLSTM_SCORE_TEST_HOLD=hold; wait for the hold."""
    env = {**os.environ, "MPLSTM_SCORE_TEST_HOLD": hold, "MPLSTM_SCORE_TEST_HOLD_FILE": str(marker)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mplstm", *argv],
        cwd=ROOT,
        env=env,
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
