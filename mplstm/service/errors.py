"""API errors: every failure is JSON `{"error": code, "detail": message}` with a stable code.

`ClipError`s from `core` keep their own code and status (415 unreadable container,
413 clip too long, 422 views out of sync, ...). Validation errors become 422 and
Starlette's own HTTP errors keep their status, in the same shape. An exception that
reaches `internal_error` is a bug: it is logged with its traceback and answered 500.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mplstm.core.errors import ClipError

log = logging.getLogger(__name__)

# Seconds a client should wait before retrying a 503.
RETRY_AFTER_S = 1


class ApiError(Exception):
    """An answer other than success; subclasses fix `code` and `status`."""

    code = "bad_request"
    status = 400

    def __init__(
        self,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        self.body = body or {}  # fields the answer carries beside error and detail


class ModelNotFoundError(ApiError):
    code, status = "model_not_found", 404


class ModelNotReadyError(ApiError):
    code, status = "model_not_ready", 503

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": str(RETRY_AFTER_S)})


class ModelLoadError(ApiError):
    """A (re)load that failed; whatever version was serving keeps serving."""

    code, status = "model_load_failed", 400


class QueueFullError(ApiError):
    code, status = "queue_full", 503

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": str(RETRY_AFTER_S)})


class DeadlineExceededError(ApiError):
    code, status = "deadline_exceeded", 503

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": str(RETRY_AFTER_S)})


class QueueTimeoutError(DeadlineExceededError):
    """The request's own `timeout` (schedule policy) passed while it waited; it never ran."""

    code = "queue_timeout"


class ShuttingDownError(ApiError):
    code, status = "shutting_down", 503

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": str(RETRY_AFTER_S)})


class BodyTooLargeError(ApiError):
    code, status = "body_too_large", 413


class ServerBusyError(ApiError):
    """No room for the request's body under MPLSTM_MAX_INFLIGHT_BYTES in time."""

    code, status = "server_busy", 503

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": str(RETRY_AFTER_S)})


class ClientDisconnectedError(ApiError):
    """The client went away (or the server cut its upload off) before the answer.

    Nobody reads the answer; `status` and `code` are what the client got, if anything
    (499: nothing, nginx's "client closed request"), for the access log and the metrics.
    """

    code, status = "client_disconnected", 499


class TooManyPartsError(ApiError):
    code, status = "too_many_parts", 413


class UnsupportedMediaTypeError(ApiError):
    code, status = "unsupported_media_type", 415


class BadParameterError(ApiError):
    """A request parameter (`priority`, `timeout`, ...) with an unusable value."""

    code, status = "bad_parameter", 400


class BadTensorError(ApiError):
    """An Open Inference Protocol request whose tensors do not fit the model."""

    code, status = "bad_tensor", 400


def model_shutting_down(model: str) -> ShuttingDownError:
    """A model that is being unloaded or reloaded refuses new work (batcher and workers)."""
    return ShuttingDownError(f"model {model!r} is shutting down; retry on another replica")


def model_queue_full(model: str, bound: int) -> QueueFullError:
    """`bound` requests of `model` wait already (batcher and workers)."""
    return QueueFullError(f"model {model!r} has {bound} requests waiting; retry shortly")


def no_answer_in_time(model: str, timeout_s: float) -> DeadlineExceededError:
    """`model` did not answer within the request deadline (batcher and workers)."""
    return DeadlineExceededError(
        f"no answer from model {model!r} within {timeout_s:.1f} s; the server is overloaded, "
        "retry later"
    )


class InferenceFailedError(ApiError):
    """The backend failed on a batch that passed every check: a server fault, not the input."""

    code, status = "inference_failed", 500


class UnauthorizedError(ApiError):
    code, status = "unauthorized", 401

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class ForbiddenError(ApiError):
    """A valid key without the scope the route needs (admin: gallery enrolment, deletion)."""

    code, status = "forbidden", 403


def error_body(code: str, detail: str) -> dict[str, str]:
    """The JSON every error answer carries."""
    return {"error": code, "detail": detail}


def error_response(
    status: int,
    code: str,
    detail: str,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    body = {**error_body(code, detail), **(extra or {})}
    return JSONResponse(body, status_code=status, headers=headers)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.detail, exc.headers, exc.body)


async def _clip_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ClipError)
    # camera_failed: which views failed their camera check, and why, as data.
    failures = getattr(exc, "failures", None)
    extra = {"views_failed": [dataclasses.asdict(f) for f in failures]} if failures else None
    return error_response(exc.http_status, exc.code, str(exc), extra=extra)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, "invalid_request", _describe_validation(exc.errors()))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
    return error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error(
        "unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path, exc_info=exc
    )
    return error_response(500, "internal_error", "internal server error (a bug; see the log)")


def _describe_validation(errors: Any) -> str:
    parts = []
    for err in errors:
        where = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error in the `{error, detail}` shape."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(ClipError, _clip_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
