"""Every HTTP route of the service, thin: parse, call the pipeline, shape the answer.

/v1: multi-view video in (multipart, one file per view), predictions out.
/v2: the Open Inference Protocol (KServe / Triton REST) for tensors, so that
`tritonclient.http` and KServe clients work unchanged.
Health, readiness and /metrics are open; everything else needs an API key when keys
are configured.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel

from mplstm.service.auth import require_api_key
from mplstm.service.dataplane import DataPlane, TensorRequest
from mplstm.service.errors import (
    ApiError,
    ModelNotReadyError,
    UnsupportedMediaTypeError,
)
from mplstm.service.metrics import CONTENT_TYPE
from mplstm.service.oip import (
    HEADER_LENGTH,
    InferRequest,
    InferResponse,
    encode_infer_response,
    parse_infer_request,
    response_outputs,
    wants_binary,
)
from mplstm.service.pipeline import CameraPolicy, Services, counted, predict_views
from mplstm.service.repository import LoadedModel
from mplstm.service.schemas import (
    ErrorResponse,
    Health,
    ModelList,
    ModelReady,
    ModelSummary,
    PredictResponse,
    RepositoryEntry,
    ServerMetadata,
    ViewSummary,
)
from mplstm.service.tensors import ModelMetadata
from mplstm.service.uploads import read_upload


async def services(request: Request) -> Services:
    """The app's shared services (built by the lifespan)."""
    # async: FastAPI runs a sync dependency in its thread pool, a thread hop per request.
    return request.app.state.services


async def data_plane(request: Request) -> DataPlane:
    """The protocol-neutral data plane that /v2 translates onto (gRPC does too)."""
    return request.app.state.dataplane


ServicesDep = Annotated[Services, Depends(services)]
PlaneDep = Annotated[DataPlane, Depends(data_plane)]
TopK = Annotated[int, Query(ge=1, le=10_000, description="How many labels to return")]
CameraChecks = Annotated[
    bool | None,
    Query(
        description="Check the cameras (black, blank, frozen, no signal, duplicate) and mask "
        "a failed one: on or off for this request (default: MPLSTM_CAMERA_CHECKS)"
    ),
]


def _inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A model's JSON schema with its $defs inlined, for an `openapi_extra` request body."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 415, 422, 503)
}


def multipart_body(description: str, fields: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """OpenAPI for a clip upload: one file part per view, plus the form `fields`."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "description": description,
                        "properties": fields,
                        "additionalProperties": {"type": "string", "format": "binary"},
                    }
                }
            },
        }
    }


_MULTIPART_BODY = multipart_body(
    "One file part per view, named by the model's view names (GET /v1/models/{name}); "
    "optional fields top_k and camera_checks.",
    {
        "top_k": {"type": "integer", "minimum": 1},
        "camera_checks": {"type": "string", "enum": ["on", "off"]},
    },
)
_INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _inline_schema(InferRequest)},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": f"JSON header of {HEADER_LENGTH} bytes, then binary tensors",
            },
        },
    }
}

open_router = APIRouter()
router = APIRouter(dependencies=[Depends(require_api_key)], responses=_ERRORS)


# -- health and metrics (open) ------------------------------------------------------------


@open_router.get("/v2/health/live", response_model=Health, tags=["health"])
async def live(svc: ServicesDep) -> Health:
    """The process is up and answering."""
    return Health(live=True, ready=svc.repository.ready)


@open_router.get(
    "/v2/health/ready",
    response_model=Health,
    tags=["health"],
    responses={503: {"model": ErrorResponse}},
)
async def ready(svc: ServicesDep) -> Health:
    """200 once every model is loaded and warmed up, else 503."""
    if not svc.repository.ready:
        states = [f"{s.name}: {s.state} {s.reason}".strip() for s in svc.repository.states()]
        raise ModelNotReadyError(f"not every model is serving yet: {states}")
    return Health(live=True, ready=True)


@open_router.get("/metrics", tags=["health"], response_class=Response)
async def metrics(svc: ServicesDep) -> Response:
    """Prometheus metrics."""
    return Response(svc.metrics.render(), media_type=CONTENT_TYPE)


# -- /v1: video in ------------------------------------------------------------------------


def _summary(model: LoadedModel) -> ModelSummary:
    m = model.manifest
    yaws = m.view_yaws or (None,) * len(m.view_names)
    return ModelSummary(
        name=model.name,
        version=model.version,
        task=m.task,
        labels=list(m.labels),
        views=[ViewSummary(name=n, yaw=y) for n, y in zip(m.view_names, yaws, strict=True)],
        allows_missing_views=m.allows_missing_views,
        frames=m.preprocess.frames,
        channels=m.preprocess.channels,
        height=m.preprocess.height,
        width=m.preprocess.width,
        max_batch=model.batcher.max_batch,
        backend=model.backend.description,
        view_accuracy=None if m.view_accuracy is None else m.view_accuracy.to_dict(),
        video_inference=model.placement.value,
    )


@router.get("/v1/models", response_model=ModelList, tags=["v1"])
async def list_models(svc: ServicesDep) -> ModelList:
    """Every serving model: labels, views, T, H, W, task."""
    return ModelList(models=[_summary(m) for m in svc.repository.models()])


@router.get("/v1/models/{name}", response_model=ModelSummary, tags=["v1"])
async def describe_model(name: str, svc: ServicesDep) -> ModelSummary:
    """One model: labels, views, T, H, W, task."""
    return _summary(svc.repository.get(name))


async def _predict(
    request: Request,
    name: str,
    top_k: int,
    svc: Services,
    route: str,
    camera_checks: bool | None = None,
) -> PredictResponse:
    with counted(svc, name, route), svc.repository.serving(name) as model:
        async with svc.budgeted(request) as request:
            upload = await read_upload(request, svc.settings.max_parts)
            try:
                if "top_k" in upload.options:
                    top_k = _top_k(upload.options["top_k"])
                if "camera_checks" in upload.options:
                    camera_checks = _switch("camera_checks", upload.options["camera_checks"])
                return await predict_views(
                    model,
                    upload.views,
                    top_k=top_k,
                    request_id=request.state.request_id,
                    workers=svc.workers,
                    metrics=svc.metrics,
                    timeout_s=svc.settings.request_timeout_s,
                    cameras=CameraPolicy(
                        svc.settings.camera_checks if camera_checks is None else camera_checks,
                        svc.settings.min_expected_accuracy,
                    ),
                )
            finally:
                await upload.close()


def _switch(name: str, value: str) -> bool:
    """An on/off form field (the spellings a query parameter takes)."""
    word = value.strip().lower()
    if word in ("on", "true", "1", "yes"):
        return True
    if word in ("off", "false", "0", "no"):
        return False
    raise ApiError(f"{name} must be on or off, got {value!r}")


def _top_k(value: str) -> int:
    if not value.strip().isdigit() or int(value) < 1:
        raise ApiError(f"top_k must be a positive integer, got {value!r}")
    return int(value)


@router.post(
    "/v1/models/{name}/predict",
    response_model=PredictResponse,
    tags=["v1"],
    openapi_extra=_MULTIPART_BODY,
)
async def predict(
    name: str,
    request: Request,
    svc: ServicesDep,
    top_k: TopK = 5,
    camera_checks: CameraChecks = None,
) -> PredictResponse:
    """Predict from one multi-view clip: one video file per view (multipart)."""
    return await _predict(request, name, top_k, svc, "v1_predict", camera_checks)


@router.post(
    "/v1/predict", response_model=PredictResponse, tags=["v1"], openapi_extra=_MULTIPART_BODY
)
async def predict_default(
    request: Request,
    svc: ServicesDep,
    top_k: TopK = 5,
    camera_checks: CameraChecks = None,
) -> PredictResponse:
    """`POST /v1/models/{MPLSTM_DEFAULT_MODEL}/predict`."""
    return await _predict(
        request, svc.settings.default_model, top_k, svc, "v1_predict", camera_checks
    )


# -- /v2: Open Inference Protocol -----------------------------------------------------------


@router.get("/v2", response_model=ServerMetadata, tags=["v2"])
async def server_metadata(plane: PlaneDep) -> ServerMetadata:
    """Server name, version and protocol extensions."""
    return plane.server_metadata()


@router.get("/v2/models/{name}", response_model=ModelMetadata, tags=["v2"])
async def model_metadata(name: str, plane: PlaneDep) -> ModelMetadata:
    """Inputs and outputs of a model (v2 metadata)."""
    return plane.model_metadata(name)


@router.get("/v2/models/{name}/versions/{version}", response_model=ModelMetadata, tags=["v2"])
async def model_version_metadata(name: str, version: str, plane: PlaneDep) -> ModelMetadata:
    """Inputs and outputs of one version of a model."""
    return plane.model_metadata(name, version)


@router.get("/v2/models/{name}/ready", response_model=ModelReady, tags=["v2"])
async def model_ready(name: str, plane: PlaneDep) -> ModelReady:
    """200 when the model serves, 503 when it is known but not loaded, 404 when unknown."""
    return ModelReady(name=plane.model(name).name, ready=True)


@router.get("/v2/models/{name}/versions/{version}/ready", response_model=ModelReady, tags=["v2"])
async def model_version_ready(name: str, version: str, plane: PlaneDep) -> ModelReady:
    """Readiness of one version."""
    return ModelReady(name=plane.model(name, version).name, ready=True)


async def _infer(request: Request, name: str, version: str | None, plane: DataPlane) -> Response:
    # The version serving when the request arrived answers it, however long its upload;
    # an unknown model is refused before its body is read.
    with plane.counted(name, "http"), plane.serving(name, version) as model:
        encoding = request.headers.get("content-encoding", "identity").lower()
        if encoding != "identity":
            raise UnsupportedMediaTypeError(
                f"Content-Encoding {encoding!r} is not supported; send it uncompressed"
            )
        async with plane.services.infer_body(request) as body:
            infer_request, arrays = parse_infer_request(body, request.headers.get(HEADER_LENGTH))
            result = await plane.infer_on(
                model,
                TensorRequest(
                    name,
                    arrays,
                    version=version,
                    id=infer_request.id,
                    outputs=[out.name for out in infer_request.outputs or ()],
                    parameters=infer_request.parameters or {},
                ),
                protocol="http",
            )
        response = InferResponse(
            model_name=result.model,
            model_version=result.version,
            id=result.id,
            outputs=response_outputs(result.outputs, list(result.outputs)),
        )
        binary = {n for n in result.outputs if wants_binary(infer_request, n)}
        content, headers = encode_infer_response(response, result.outputs, binary)
        return Response(content, headers=headers)


@router.post(
    "/v2/models/{name}/infer", tags=["v2"], response_model=InferResponse, openapi_extra=_INFER_BODY
)
async def infer(name: str, request: Request, plane: PlaneDep) -> Response:
    """Tensors in, logits and probabilities out (JSON or binary tensors)."""
    return await _infer(request, name, None, plane)


@router.post(
    "/v2/models/{name}/versions/{version}/infer",
    tags=["v2"],
    response_model=InferResponse,
    openapi_extra=_INFER_BODY,
)
async def infer_version(name: str, version: str, request: Request, plane: PlaneDep) -> Response:
    """Inference on one version of a model."""
    return await _infer(request, name, version, plane)


@router.post("/v2/repository/index", response_model=list[RepositoryEntry], tags=["repository"])
async def repository_index(plane: PlaneDep) -> list[RepositoryEntry]:
    """Every model in the repository and its state."""
    return [RepositoryEntry(**vars(s)) for s in plane.repository_index()]


@router.post(
    "/v2/repository/models/{name}/load", response_model=RepositoryEntry, tags=["repository"]
)
async def load_model(name: str, plane: PlaneDep) -> RepositoryEntry:
    """(Re)load the newest version of a model; if that fails, the serving version keeps serving."""
    model = await plane.load(name)
    return RepositoryEntry(name=model.name, version=model.version, state="READY")


@router.post(
    "/v2/repository/models/{name}/unload", response_model=RepositoryEntry, tags=["repository"]
)
async def unload_model(name: str, plane: PlaneDep) -> RepositoryEntry:
    """Stop serving a model once its queued requests are answered."""
    await plane.unload(name)
    return RepositoryEntry(name=name, state="UNLOADED")
