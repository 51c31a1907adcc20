"""One result row per clip: what `mplstm score` writes, in every output format."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mplstm.core import ranking
from mplstm.core.camera_checks import ViewFailure
from mplstm.core.manifest import ClipRecord

OK = "ok"
ERROR = "error"
COLUMNS: tuple[str, ...] = (
    "id",
    "label",
    "prediction",
    "score",
    "top_k",
    "views_used",
    "views_dropped",
    "expected_accuracy",
    "status",
    "error_code",
    "error",
)


@dataclass(frozen=True)
class ScoreRow:
    """A clip's result: the prediction and its top-k, or the error that stopped it."""

    id: str
    label: str | None  # the manifest's label, None where the output format lost it
    prediction: str | None  # None on error rows
    score: float | None  # probability of `prediction`
    top_k: tuple[tuple[str, float], ...]  # (label, probability), best first
    views_used: tuple[str, ...]  # views present in the clip, in the model's order
    status: str  # "ok" | "error"
    error_code: str | None  # a ClipError code, e.g. "corrupt_video"
    error: str | None  # the message, saying what to fix
    # Views that failed a camera check: (view, reason, detail). Masked on an ok row; the
    # cause of a camera_failed error row.
    views_dropped: tuple[tuple[str, str, str], ...] = ()
    # The package's measured accuracy on exactly `views_used` (None: not measured, or error).
    expected_accuracy: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == OK

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values; top_k as a list of {label, score} objects."""
        return {
            "id": self.id,
            "label": self.label,
            "prediction": self.prediction,
            "score": self.score,
            "top_k": [{"label": label, "score": score} for label, score in self.top_k],
            "views_used": list(self.views_used),
            "views_dropped": [
                {"view": view, "reason": reason, "detail": detail}
                for view, reason, detail in self.views_dropped
            ],
            "expected_accuracy": self.expected_accuracy,
            "status": self.status,
            "error_code": self.error_code,
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ScoreRow:
        """Inverse of `to_dict`."""
        score = values.get("score")
        expected = values.get("expected_accuracy")
        return cls(
            id=str(values["id"]),
            label=values.get("label"),
            prediction=values.get("prediction"),
            score=None if score is None else float(score),
            top_k=tuple((str(p["label"]), float(p["score"])) for p in values.get("top_k") or ()),
            views_used=tuple(values.get("views_used") or ()),
            status=str(values["status"]),
            error_code=values.get("error_code"),
            error=values.get("error"),
            # Rows written before camera checks have neither field.
            views_dropped=tuple(
                (str(d["view"]), str(d["reason"]), str(d.get("detail") or ""))
                for d in values.get("views_dropped") or ()
            ),
            expected_accuracy=None if expected is None else float(expected),
        )


def ok_row(
    record: ClipRecord,
    probabilities: np.ndarray,
    views_used: Sequence[str],
    labels: tuple[str, ...],
    top_k: int,
    views_dropped: Sequence[ViewFailure] = (),
    expected_accuracy: float | None = None,
) -> ScoreRow:
    """The row of a scored clip; top-k ranked exactly as the service ranks its answers."""
    # The service's own ranking rule (ties in label order): scorer and /v1 agree label for label.
    best = ranking.top_k(probabilities, labels, max(top_k, 1))
    return ScoreRow(
        id=record.id,
        label=record.label,
        prediction=best[0][0],
        score=best[0][1],
        top_k=tuple(best[:top_k]),
        views_used=tuple(views_used),
        status=OK,
        error_code=None,
        error=None,
        views_dropped=_dropped(views_dropped),
        expected_accuracy=expected_accuracy,
    )


def error_row(
    record: ClipRecord, code: str, message: str, views_dropped: Sequence[ViewFailure] = ()
) -> ScoreRow:
    """The row of a clip that could not be scored (`views_dropped`: failed cameras, if any)."""
    return ScoreRow(
        record.id,
        record.label,
        None,
        None,
        (),
        (),
        ERROR,
        code,
        message,
        views_dropped=_dropped(views_dropped),
    )


def _dropped(failures: Sequence[ViewFailure]) -> tuple[tuple[str, str, str], ...]:
    return tuple((f.view, f.reason, f.detail) for f in failures)
