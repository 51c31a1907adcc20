"""The gallery routes under /v1/models/{name}/: enrol, list, get, delete, identify, verify.

Thin, as the other routes: every clip goes through the same decoding and inference as
predict (`pipeline.score_views`: worker processes, limits, view names, missing views as
the model allows), and the gallery (`Gallery`) does the rest. Enrolment and deletion need
a key with the admin scope; identify and verify a normal key. Thresholds come from the
package's open-set section, at `MPLSTM_IDENTITY_FAR` unless a request asks for another
`far` (one the package lists) or gives its own `threshold`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse

from mplstm.service.auth import require_admin_key, require_api_key
from mplstm.service.errors import RETRY_AFTER_S, ApiError, error_response
from mplstm.service.gallery.gallery import Gallery, GalleryHolder
from mplstm.service.gallery.index import ModelIndex
from mplstm.service.gallery.schemas import (
    DeleteResponse,
    EmbeddingInfo,
    EnrolResponse,
    GalleryPage,
    IdentifyResponse,
    Match,
    PersonDetail,
    PersonSummary,
    VerifyResponse,
)
from mplstm.service.gallery.store import GalleryError, GalleryUnavailableError
from mplstm.service.pipeline import CameraPolicy, ScoredClip, Services, counted, score_views
from mplstm.service.repository import LoadedModel
from mplstm.service.routes import ServicesDep, multipart_body
from mplstm.service.schemas import ErrorResponse, ModelRef
from mplstm.service.uploads import read_upload

# Letters, digits and . _ @ - (not first), up to 128: safe in a URL, a log line and a file name.
PERSON_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
MAX_DISPLAY_NAME = 200


class NoGalleryError(ApiError):
    code, status = "no_gallery", 404


class PersonNotFoundError(ApiError):
    code, status = "person_not_found", 404


class BadPersonIdError(ApiError):
    code, status = "bad_person_id", 422


class NoThresholdError(ApiError):
    code, status = "no_threshold", 422


TopK = Annotated[int, Query(ge=1, le=1000, description="How many people to return")]
Far = Annotated[
    float | None,
    Query(
        gt=0, lt=1, description="False-accept rate whose threshold applies (one the package lists)"
    ),
]
Threshold = Annotated[
    float | None, Query(ge=-1, le=1, description="A cosine threshold of your own, in place of far")
]
_ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse} for s in (400, 401, 403, 404, 413, 415, 422, 503)
}
_CLIP_BODY = multipart_body(
    "One file part per view, named by the model's view names",
    {"display_name": {"type": "string"}},
)
router = APIRouter(dependencies=[Depends(require_api_key)], responses=_ERRORS, tags=["gallery"])
GALLERY = "/v1/models/{name}/gallery"


def _must_embed(model: LoadedModel) -> None:
    """`model`, or 404 `no_gallery` when it has no embedding output."""
    if not model.manifest.embedding_size:
        raise NoGalleryError(
            f"model {model.name!r} (task {model.manifest.task}) has no embedding output, so "
            "it has no gallery: use an identity model exported with an embedding head"
        )


def _person_id(person_id: str) -> str:
    if not PERSON_ID.fullmatch(person_id):
        raise BadPersonIdError(
            f"person id {person_id[:64]!r} is not a safe identifier: 1-128 letters, digits "
            "and . _ @ - (not first)"
        )
    return person_id


async def _gallery(request: Request, model: LoadedModel) -> tuple[Gallery, ModelIndex]:
    holder: GalleryHolder = request.app.state.gallery
    gallery = await holder.get()
    return gallery, await gallery.index(model.name, model.manifest.embedding_size)


async def _clip(
    request: Request, svc: Services, model: LoadedModel, options: tuple[str, ...] = ()
) -> tuple[ScoredClip, dict[str, str]]:
    """Decode and embed the request's clip on predict's path (the body budget, the server's
    camera checks); also its option fields."""
    async with svc.budgeted(request) as request:
        upload = await read_upload(request, svc.settings.max_parts, options)
        try:
            scored = await score_views(
                model, upload.views, workers=svc.workers, metrics=svc.metrics,
                timeout_s=svc.settings.request_timeout_s,
                cameras=CameraPolicy(svc.settings.camera_checks),
            )  # fmt: skip
        finally:
            await upload.close()
    assert scored.embedding is not None  # the model has an embedding output
    return scored, upload.options


def _threshold(
    svc: Services, model: LoadedModel, far: float | None, threshold: float | None
) -> tuple[float, float | None]:
    """(threshold, its FAR): given, or the package's at `far` (default MPLSTM_IDENTITY_FAR)."""
    if threshold is not None:
        if far is not None:
            raise ApiError("give far or threshold, not both")
        return threshold, None
    far = far if far is not None else svc.settings.identity_far
    known = model.manifest.open_set_thresholds()
    if far not in known:
        listed = ", ".join(f"{f:g}" for f in sorted(known)) or "none"
        raise NoThresholdError(
            f"model {model.name!r} lists thresholds at FAR {listed}, not {far:g}: ask for one of "
            "those with far=, give threshold=, or re-export the package with --open-set-data"
        )
    return known[far], far


def _ref(model: LoadedModel) -> ModelRef:
    return ModelRef(name=model.name, version=model.version)


@router.post(
    GALLERY + "/{person_id}",
    response_model=EnrolResponse,
    status_code=201,
    dependencies=[Depends(require_admin_key)],
    openapi_extra=_CLIP_BODY,
)
async def enrol(name: str, person_id: str, request: Request, svc: ServicesDep) -> EnrolResponse:
    """Enrol one clip of a person (adds an embedding; the person is created if new)."""
    with counted(svc, name, "gallery_enrol"), svc.repository.serving(name) as model:
        _must_embed(model)
        person_id = _person_id(person_id)
        gallery, index = await _gallery(request, model)
        scored, options = await _clip(request, svc, model, ("display_name",))
        display_name = options.get("display_name", "").strip() or None
        if display_name is not None and len(display_name) > MAX_DISPLAY_NAME:
            raise ApiError(f"display_name is longer than {MAX_DISPLAY_NAME} characters")
        row, count = await gallery.enrol(
            model.name, index, person_id, display_name, scored.embedding,
            request_id=request.state.request_id, views=scored.views_used,
            model_version=model.version,
        )  # fmt: skip
        person = await gallery.get(model.name, person_id)
        return EnrolResponse(
            model=_ref(model),
            person_id=person_id,
            display_name=person[0].display_name if person else display_name or person_id,
            embedding_id=row.id,
            embeddings=count,
            views_used=scored.views_used,
            timings_ms=scored.timings_ms(),
            request_id=request.state.request_id,
        )


@router.get(GALLERY, response_model=GalleryPage)
async def list_people(
    name: str,
    request: Request,
    svc: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[str | None, Query(description="Last person_id of the previous page")] = None,
) -> GalleryPage:
    """People enrolled for a model, ordered by id, a page at a time."""
    with counted(svc, name, "gallery_list"), svc.repository.serving(name) as model:
        _must_embed(model)
        gallery, _ = await _gallery(request, model)
        people, total = await gallery.list(model.name, after, limit)
        return GalleryPage(
            model=_ref(model),
            people=[PersonSummary(**_summary(p)) for p in people],
            total=total,
            next_after=people[-1].person_id if len(people) == limit else None,
        )


def _summary(person: Any) -> dict[str, Any]:
    return {
        "person_id": person.person_id,
        "display_name": person.display_name,
        "created": person.created,
        "embeddings": person.embeddings,
    }


@router.get(GALLERY + "/{person_id}", response_model=PersonDetail)
async def get_person(name: str, person_id: str, request: Request, svc: ServicesDep) -> PersonDetail:
    """A person and the metadata of each of their embeddings (not the vectors)."""
    with counted(svc, name, "gallery_get"), svc.repository.serving(name) as model:
        _must_embed(model)
        gallery, _ = await _gallery(request, model)
        found = await gallery.get(model.name, _person_id(person_id))
        if found is None:
            raise PersonNotFoundError(f"no person {person_id!r} in {model.name!r}'s gallery")
        person, embeddings = found
        return PersonDetail(
            model=_ref(model),
            **_summary(person),
            enrolments=[
                EmbeddingInfo(
                    id=e.id,
                    request_id=e.request_id,
                    views=list(e.views),
                    model_version=e.model_version,
                    created=e.created,
                )
                for e in embeddings
            ],
        )


@router.delete(
    GALLERY + "/{person_id}",
    response_model=DeleteResponse,
    dependencies=[Depends(require_admin_key)],
)
async def delete_person(
    name: str, person_id: str, request: Request, svc: ServicesDep
) -> DeleteResponse:
    """Forget a person: every embedding of theirs is deleted, in one transaction."""
    with counted(svc, name, "gallery_delete"), svc.repository.serving(name) as model:
        _must_embed(model)
        gallery, index = await _gallery(request, model)
        removed = await gallery.delete(model.name, index, _person_id(person_id))
        if not removed:
            raise PersonNotFoundError(f"no person {person_id!r} in {model.name!r}'s gallery")
        return DeleteResponse(person_id=person_id, embeddings_deleted=removed)


@router.post(
    "/v1/models/{name}/identify", response_model=IdentifyResponse, openapi_extra=_CLIP_BODY
)
async def identify(
    name: str,
    request: Request,
    svc: ServicesDep,
    top_k: TopK = 5,
    far: Far = None,
    threshold: Threshold = None,
) -> IdentifyResponse:
    """Who is this? The best-matching people, and the best one if at or above the threshold."""
    with counted(svc, name, "identify"), svc.repository.serving(name) as model:
        _must_embed(model)
        limit, at_far = _threshold(svc, model, far, threshold)
        gallery, index = await _gallery(request, model)
        scored, _ = await _clip(request, svc, model)
        matches = await gallery.search(index, scored.embedding, top_k)
        best = matches[0] if matches else None
        return IdentifyResponse(
            model=_ref(model),
            matches=[Match(person_id=m.person_id, score=round(m.score, 6)) for m in matches],
            decision=best.person_id if best and best.score >= limit else "unknown",
            threshold=limit,
            far=at_far,
            views_used=scored.views_used,
            timings_ms=scored.timings_ms(),
            request_id=request.state.request_id,
        )


@router.post(
    "/v1/models/{name}/verify/{person_id}", response_model=VerifyResponse, openapi_extra=_CLIP_BODY
)
async def verify(
    name: str,
    person_id: str,
    request: Request,
    svc: ServicesDep,
    far: Far = None,
    threshold: Threshold = None,
) -> VerifyResponse:
    """Is this person X? The clip's score against X's template, and whether it passes."""
    with counted(svc, name, "verify"), svc.repository.serving(name) as model:
        _must_embed(model)
        person_id = _person_id(person_id)
        limit, at_far = _threshold(svc, model, far, threshold)
        gallery, index = await _gallery(request, model)
        gallery.check()
        if person_id not in index:
            raise PersonNotFoundError(f"no person {person_id!r} in {model.name!r}'s gallery")
        scored, _ = await _clip(request, svc, model)
        score = index.score(person_id, scored.embedding)
        if score is None:  # deleted while the clip was decoding
            raise PersonNotFoundError(f"no person {person_id!r} in {model.name!r}'s gallery")
        return VerifyResponse(
            model=_ref(model),
            person_id=person_id,
            score=round(score, 6),
            accepted=score >= limit,
            threshold=limit,
            far=at_far,
            views_used=scored.views_used,
            timings_ms=scored.timings_ms(),
            request_id=request.state.request_id,
        )


async def _gallery_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, GalleryError)
    detail = str(exc)
    if not isinstance(exc, GalleryUnavailableError):
        detail = f"the gallery database failed: {exc}"
    return error_response(503, "gallery_unavailable", detail, {"Retry-After": str(RETRY_AFTER_S)})


def install(app: FastAPI, url: str) -> None:
    """Add the gallery routes, their database errors (503), and the lazily opened gallery."""
    app.state.gallery = GalleryHolder(url)
    app.add_exception_handler(GalleryError, _gallery_error)
    app.include_router(router)
