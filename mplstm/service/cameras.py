"""The service's side of the camera checks: the switch, the accuracy floor, the counters.

The checks themselves run where clips are decoded (`core.preprocess.load_clip`, in the
worker processes); a failed view comes back masked (`views_dropped`) or, where the
model needs every view, as a 422 `camera_failed`. Here: which config a request decodes
with (`MPLSTM_CAMERA_CHECKS`, `?camera_checks=off`), the answer's expected accuracy
from the package's view-subset table, the 422 `too_few_cameras` below
`MPLSTM_MIN_EXPECTED_ACCURACY`, and the per-camera counters behind the alert.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Sequence

from mplstm.core.camera_checks import ViewFailure
from mplstm.core.package import PackageManifest
from mplstm.core.preprocess import PreprocessConfig
from mplstm.service.errors import ApiError
from mplstm.service.metrics import ServiceMetrics
from mplstm.service.schemas import DroppedView

log = logging.getLogger(__name__)


class TooFewCamerasError(ApiError):
    """The views left are expected to fall below MPLSTM_MIN_EXPECTED_ACCURACY."""

    code, status = "too_few_cameras", 422


@functools.lru_cache(maxsize=64)
def checked(config: PreprocessConfig, on: bool) -> PreprocessConfig:
    """`config` with the camera checks on or off (cached: one per model and switch)."""
    return dataclasses.replace(config, camera_checks=on)


def dropped_views(failures: Sequence[ViewFailure]) -> list[DroppedView]:
    """The answer's `views_dropped` entries."""
    return [DroppedView(view=f.view, reason=f.reason, detail=f.detail) for f in failures]


def expected_accuracy(
    model: str,
    manifest: PackageManifest,
    views_used: Sequence[str],
    failures: Sequence[ViewFailure],
    minimum: float | None,
) -> float | None:
    """The package's measured accuracy on exactly `views_used` (None: not measured).

    TooFewCamerasError when it is below `minimum`.
    """
    expected = manifest.expected_accuracy(views_used)
    if minimum is not None and expected is not None and expected < minimum:
        why = "; ".join(f.describe() for f in failures) or "views missing from the request"
        raise TooFewCamerasError(
            f"model {model!r} is expected to be {expected:.1%} accurate on views "
            f"{list(views_used)} ({why}), below the {minimum:.1%} this server requires "
            "(MPLSTM_MIN_EXPECTED_ACCURACY): fix the failed cameras or send more views",
            body={"views_failed": [d.model_dump() for d in dropped_views(failures)]},
        )
    return expected


def count_checked(metrics: ServiceMetrics, model: str, failures: Sequence[ViewFailure]) -> None:
    """Count one clip whose cameras were checked, and each view that failed (masked or not)."""
    metrics.camera_checked_clips.labels(model).inc()
    for failure in failures:
        metrics.views_dropped.labels(model, failure.view, failure.reason).inc()


def watch(
    metrics: ServiceMetrics, manifest: PackageManifest, model: str, minimum: float | None
) -> None:
    """At load: every camera's counters at zero (so rates exist before the first failure);
    a warning when an accuracy floor is set but the package cannot be held to it."""
    metrics.watch_cameras(model, manifest.view_names)
    if minimum is not None and manifest.view_accuracy is None:
        log.warning(
            "model %s: MPLSTM_MIN_EXPECTED_ACCURACY is set, but the package has no view-subset "
            "accuracy table, so no clip of it is refused as too_few_cameras; add one with "
            "`mplstm export --view-accuracy PACKAGE --eval-data MANIFEST`",
            model,
        )
