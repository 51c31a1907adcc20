"""Pydantic schemas of the /v1 routes (the v2 ones live in `oip`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ModelRef(BaseModel):
    name: str
    version: str


class Prediction(BaseModel):
    label: str
    score: float = Field(description="Probability, 0..1")


class Timings(BaseModel):
    decode: float
    queue: float
    inference: float
    total: float


class DroppedView(BaseModel):
    view: str
    reason: str = Field(description="black, blank, no_signal, frozen or duplicate")
    detail: str = Field(description="What the camera check measured")


class PredictResponse(BaseModel):
    model: ModelRef
    task: str
    predictions: list[Prediction] = Field(description="Best first")
    views_used: list[str] = Field(description="Views that were sent and used, in model order")
    views_dropped: list[DroppedView] = Field(
        default_factory=list,
        description="Views sent but masked because they failed a camera check; empty when "
        "every camera is good or the checks are off",
    )
    expected_accuracy: float | None = Field(
        None,
        description="The model's measured accuracy with exactly views_used present, from the "
        "package's view-subset table (null where the package has none)",
    )
    timings_ms: Timings
    request_id: str


class ViewSummary(BaseModel):
    name: str
    yaw: float | None


class SubsetAccuracy(BaseModel):
    views: list[str]
    accuracy: float


class ViewAccuracy(BaseModel):
    data: str = Field(description="The clip manifest it was measured on")
    split: str
    clips: int
    runtime: str
    subsets: list[SubsetAccuracy]


class ModelSummary(BaseModel):
    name: str
    version: str
    task: str
    labels: list[str]
    views: list[ViewSummary]
    allows_missing_views: bool
    frames: int
    channels: int
    height: int
    width: int
    max_batch: int
    backend: str
    view_accuracy: ViewAccuracy | None = Field(
        None, description="Accuracy of every view subset on held-out clips (null: not measured)"
    )
    video_inference: Literal["workers", "main"] = Field(
        description="Where /v1 requests run inference: in the decode worker that decoded "
        "the clip (CPU backends), or in the main process through the dynamic batcher"
    )


class ModelList(BaseModel):
    models: list[ModelSummary]


class ErrorResponse(BaseModel):
    error: str = Field(description="Stable machine-readable code")
    detail: str = Field(description="What went wrong and what to do about it")
    views_failed: list[DroppedView] | None = Field(
        None, description="camera_failed, too_few_cameras: the views that failed a camera check"
    )


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelReady(BaseModel):
    name: str
    ready: bool


class RepositoryEntry(BaseModel):
    name: str
    version: str | None = None
    state: str
    reason: str = ""


class Health(BaseModel):
    live: bool = True
    ready: bool
