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


class PredictResponse(BaseModel):
    model: ModelRef
    task: str
    predictions: list[Prediction] = Field(description="Best first")
    views_used: list[str] = Field(description="Views that were sent and used, in model order")
    timings_ms: Timings
    request_id: str


class ViewSummary(BaseModel):
    name: str
    yaw: float | None


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
    video_inference: Literal["workers", "main"] = Field(
        description="Where /v1 requests run inference: in the decode worker that decoded "
        "the clip (CPU backends), or in the main process through the dynamic batcher"
    )


class ModelList(BaseModel):
    models: list[ModelSummary]


class ErrorResponse(BaseModel):
    error: str = Field(description="Stable machine-readable code")
    detail: str = Field(description="What went wrong and what to do about it")


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
