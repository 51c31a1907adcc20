"""A data set's cameras checked before training on it: `mplstm manifest check --cameras`.

Every clip of a manifest goes through `load_clip` with the camera checks on (in worker
processes of `core.worker_pool`), and the failures are gathered by camera and reason,
with the clips they hit: a training run masks those views (`data.camera_checks`), and
this says beforehand how many and where, so that a broken camera can be fixed or its
clips left out.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from mplstm.core.camera_checks import ViewFailure
from mplstm.core.errors import CameraFailedError, ClipError
from mplstm.core.manifest import ClipRecord
from mplstm.core.preprocess import PreprocessConfig, load_clip
from mplstm.core.worker_pool import PoolThread, WorkerCrashedError


@dataclass
class CameraSurvey:
    """What checking every clip found."""

    clips: int = 0
    failed: dict[str, tuple[ViewFailure, ...]] = field(default_factory=dict)  # clip id -> views
    unreadable: dict[str, str] = field(default_factory=dict)  # clip id -> the ClipError

    def by_camera(self) -> dict[str, Counter[str]]:
        """Camera -> reason -> clips."""
        counts: dict[str, Counter[str]] = {}
        for failures in self.failed.values():
            for f in failures:
                counts.setdefault(f.view, Counter())[f.reason] += 1
        return dict(sorted(counts.items()))


def check_clip(views: dict[str, str], config: PreprocessConfig) -> tuple[ViewFailure, ...] | str:
    """In a worker: one clip's failed views, or the message of the error that stopped it."""
    try:
        return load_clip(views, config).views_dropped
    except CameraFailedError as exc:  # every view failed: all of them are the answer
        return exc.failures
    except ClipError as exc:
        return f"{exc.code}: {exc}"


def survey_cameras(
    records: Sequence[ClipRecord], config: PreprocessConfig, workers: int = 2
) -> Iterator[tuple[ClipRecord, tuple[ViewFailure, ...] | str]]:
    """Each record with its failed views (or its decoding error), in completion order."""
    config = dataclasses.replace(config, camera_checks=True, allow_missing_views=True)
    jobs = [(r, {name: str(path) for name, path in r.views.items()}) for r in records]
    if workers < 1:
        for record, views in jobs:
            yield record, check_clip(views, config)
        return
    with PoolThread(workers).start() as pool:
        # A few clips per worker in flight, in manifest order: memory stays bounded.
        pending: deque[tuple[ClipRecord, Future]] = deque()
        for record, views in jobs:
            pending.append((record, pool.submit(check_clip, views, config)))
            if len(pending) >= 4 * workers:
                yield _result(*pending.popleft())
        while pending:
            yield _result(*pending.popleft())


def _result(record: ClipRecord, future: Future) -> tuple[ClipRecord, tuple[ViewFailure, ...] | str]:
    try:
        return record, future.result()
    except WorkerCrashedError:
        return record, "corrupt_video: the video decoder crashed on this clip"


def collect(results: Iterator[tuple[ClipRecord, tuple[ViewFailure, ...] | str]]) -> CameraSurvey:
    """Gather `survey_cameras`' results."""
    survey = CameraSurvey()
    for record, outcome in results:
        survey.clips += 1
        if isinstance(outcome, str):
            survey.unreadable[record.id] = outcome
        elif outcome:
            survey.failed[record.id] = outcome
    return survey
