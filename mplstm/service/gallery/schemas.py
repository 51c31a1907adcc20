"""Pydantic schemas of the gallery routes (`/v1/models/{name}/gallery`, identify, verify)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from mplstm.service.schemas import ModelRef, Timings


class EnrolResponse(BaseModel):
    model: ModelRef
    person_id: str
    display_name: str
    embedding_id: int = Field(description="The stored embedding of this clip")
    embeddings: int = Field(description="How many embeddings the person has now")
    views_used: list[str]
    timings_ms: Timings
    request_id: str


class EmbeddingInfo(BaseModel):
    id: int
    request_id: str = Field(description="The enrolling request's X-Request-ID")
    views: list[str] = Field(description="Views the clip was embedded from")
    model_version: str
    created: str


class PersonSummary(BaseModel):
    person_id: str
    display_name: str
    created: str
    embeddings: int


class PersonDetail(PersonSummary):
    model: ModelRef
    enrolments: list[EmbeddingInfo]


class GalleryPage(BaseModel):
    model: ModelRef
    people: list[PersonSummary] = Field(description="Ordered by person_id")
    total: int = Field(description="People in this model's gallery")
    next_after: str | None = Field(
        description="Pass as `after` for the next page; null on the last page"
    )


class DeleteResponse(BaseModel):
    person_id: str
    embeddings_deleted: int


class Match(BaseModel):
    person_id: str
    score: float = Field(description="Cosine similarity with the person's template, -1..1")


class IdentifyResponse(BaseModel):
    model: ModelRef
    matches: list[Match] = Field(description="Best first; empty for an empty gallery")
    decision: str = Field(description='The best match at or above the threshold, else "unknown"')
    threshold: float
    far: float | None = Field(description="False-accept rate of the threshold (null: given)")
    views_used: list[str]
    timings_ms: Timings
    request_id: str


class VerifyResponse(BaseModel):
    model: ModelRef
    person_id: str
    score: float
    accepted: bool
    threshold: float
    far: float | None
    views_used: list[str]
    timings_ms: Timings
    request_id: str
