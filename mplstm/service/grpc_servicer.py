"""`inference.GRPCInferenceService`: the Open Inference Protocol over gRPC, a thin translator.

Every RPC reads its message, calls the data plane (`dataplane.DataPlane`, which the REST
`/v2` routes call too) and writes the answer; errors are the same `ApiError`s, mapped to
gRPC status codes with the stable code in front of the message (`bad_tensor: input
'clip' must have shape ...`). API keys come from metadata (`authorization: Bearer KEY`
or `x-api-key`), as HTTP headers do; ServerLive and ServerReady stay open, like
`/v2/health/*`. Each call gets a request id (the client's `x-request-id` when sane),
returned in the trailing metadata and carried by every log line of the call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from mplstm.service import grpc_messages as messages
from mplstm.service.auth import check_api_key, key_from_headers
from mplstm.service.dataplane import DataPlane
from mplstm.service.errors import (
    ApiError,
    BadParameterError,
    DeadlineExceededError,
    ModelLoadError,
)
from mplstm.service.logs import new_request_id, request_id_var

log = logging.getLogger(__name__)
access_log = logging.getLogger("mplstm.service.access")

T = TypeVar("T")
SERVICE_NAME = "inference.GRPCInferenceService"
PROTOCOL = "grpc"
# HTTP status of an ApiError -> gRPC status; a few codes are told apart by name.
_BY_HTTP_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
}


def status_of(exc: ApiError) -> grpc.StatusCode:
    """The gRPC status an API error is answered with (never UNKNOWN; INTERNAL for server faults)."""
    if isinstance(exc, DeadlineExceededError):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if isinstance(exc, ModelLoadError):
        return grpc.StatusCode.FAILED_PRECONDITION
    return _BY_HTTP_STATUS.get(exc.status, grpc.StatusCode.INTERNAL)


def error_message(exc: ApiError) -> str:
    """`code: detail`, as a stream's error_message and a status' details."""
    return f"{exc.code}: {exc.detail}"


class _Call:
    """One RPC's request id, key and access log line."""

    def __init__(self, context: grpc.aio.ServicerContext, method: str) -> None:
        self.context = context
        self.method = method
        self.metadata = {k.lower(): v for k, v in context.invocation_metadata() or ()}
        self.request_id = new_request_id(_text(self.metadata.get("x-request-id")))
        self.start = time.perf_counter()
        self.trailing = (("x-request-id", self.request_id),)

    def trailing_of(self, exc: ApiError) -> tuple[tuple[str, str], ...]:
        """The trailing metadata of a refusal: the request id and the error's HTTP headers
        (`retry-after` on UNAVAILABLE, as REST's 503 carries it)."""
        return (*self.trailing, *((k.lower(), v) for k, v in exc.headers.items()))

    def api_key(self) -> str | None:
        return key_from_headers(
            _text(self.metadata.get("authorization")), _text(self.metadata.get("x-api-key"))
        )

    def done(self, code: grpc.StatusCode) -> None:
        access_log.info(
            "gRPC %s %s %.1f ms", self.method, code.name, (time.perf_counter() - self.start) * 1e3
        )


def _text(value: str | bytes | None) -> str | None:
    return value.decode("latin-1") if isinstance(value, bytes) else value


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Every RPC of the protocol this server implements, onto one DataPlane."""

    def __init__(self, plane: DataPlane, api_keys: frozenset[str]) -> None:
        self.plane = plane
        self.api_keys = api_keys

    async def _handle(
        self,
        context: grpc.aio.ServicerContext,
        method: str,
        work: Callable[[], Awaitable[T]],
        *,
        open_: bool = False,
    ) -> T:
        """Run one unary RPC: request id, key check, errors to status codes, access log."""
        call = _Call(context, method)
        token = request_id_var.set(call.request_id)
        code = grpc.StatusCode.OK
        try:
            if not open_:
                check_api_key(call.api_key(), self.api_keys)
            result = await work()
            context.set_trailing_metadata(call.trailing)
            return result
        except ApiError as exc:
            code = status_of(exc)
            await context.abort(code, error_message(exc), trailing_metadata=call.trailing_of(exc))
            raise  # abort raised already; this line is never reached
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            code = grpc.StatusCode.INTERNAL
            log.error("unhandled %s in %s", type(exc).__name__, method, exc_info=exc)
            await context.abort(
                code, "internal_error: internal server error (a bug; see the log)", call.trailing
            )
            raise
        finally:
            call.done(code)
            request_id_var.reset(token)

    # -- health and metadata --------------------------------------------------------------

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> Any:
        return await self._handle(
            context, "ServerLive", _value(pb.ServerLiveResponse(live=True)), open_=True
        )

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> Any:
        async def work() -> pb.ServerReadyResponse:
            return pb.ServerReadyResponse(ready=self.plane.ready)

        return await self._handle(context, "ServerReady", work, open_=True)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> Any:
        async def work() -> pb.ModelReadyResponse:
            try:
                self.plane.model(request.name, request.version)
            except ApiError:  # unknown, or known but not serving: not ready (no error)
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(ready=True)

        return await self._handle(context, "ModelReady", work)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> Any:
        async def work() -> pb.ServerMetadataResponse:
            meta = self.plane.server_metadata()
            return pb.ServerMetadataResponse(
                name=meta.name, version=meta.version, extensions=meta.extensions
            )

        return await self._handle(context, "ServerMetadata", work)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> Any:
        async def work() -> pb.ModelMetadataResponse:
            return messages.model_metadata(self.plane.model_metadata(request.name, request.version))

        return await self._handle(context, "ModelMetadata", work)

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> Any:
        async def work() -> pb.ModelConfigResponse:
            model = self.plane.model(request.name, request.version)
            return pb.ModelConfigResponse(
                config=messages.model_config(model, self.plane.services.settings)
            )

        return await self._handle(context, "ModelConfig", work)

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Any) -> Any:
        async def work() -> pb.ModelStatisticsResponse:
            repository = self.plane.services.repository
            # Triton's rule: no name means every model.
            models = (
                [self.plane.model(request.name, request.version)]
                if request.name
                else repository.models()
            )
            statistics = self.plane.services.metrics.statistics
            return pb.ModelStatisticsResponse(
                model_stats=[
                    messages.model_statistics(m.name, m.version, statistics.of(m.name))
                    for m in models
                ]
            )

        return await self._handle(context, "ModelStatistics", work)

    # -- inference ------------------------------------------------------------------------

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> Any:
        async def work() -> pb.ModelInferResponse:
            return await self._infer(request, context)

        return await self._handle(context, "ModelInfer", work)

    async def _infer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        with self.plane.counted(request.model_name, PROTOCOL):
            tensors = messages.tensor_request(request, context.time_remaining())
            return messages.infer_response(await self.plane.infer(tensors, PROTOCOL))

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests in, answers out as each is ready; an error answers its request only."""
        call = _Call(context, "ModelStreamInfer")
        token = request_id_var.set(call.request_id)
        code = grpc.StatusCode.OK
        try:
            try:
                check_api_key(call.api_key(), self.api_keys)
            except ApiError as exc:
                code = status_of(exc)
                await context.abort(
                    code, error_message(exc), trailing_metadata=call.trailing_of(exc)
                )
            context.set_trailing_metadata(call.trailing)
            async for answer in _answers(request_iterator, self._stream_one, self._stream_limit):
                yield answer
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            call.done(code)
            request_id_var.reset(token)

    @property
    def _stream_limit(self) -> int:
        # Requests of one stream in flight at once: beyond the queue bound they could
        # only be refused, so the stream stops reading (HTTP/2 flow control pushes back).
        return self.plane.services.settings.max_queue

    async def _stream_one(self, request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
        try:
            with self.plane.counted(request.model_name, PROTOCOL):
                tensors = messages.tensor_request(request, None)
                result = await self.plane.infer(tensors, PROTOCOL)
            return pb.ModelStreamInferResponse(infer_response=messages.infer_response(result))
        except ApiError as exc:
            failed = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
            return pb.ModelStreamInferResponse(
                error_message=error_message(exc), infer_response=failed
            )
        except Exception as exc:
            log.error("unhandled %s in ModelStreamInfer", type(exc).__name__, exc_info=exc)
            failed = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
            return pb.ModelStreamInferResponse(
                error_message="internal_error: internal server error (a bug; see the log)",
                infer_response=failed,
            )

    # -- the repository -------------------------------------------------------------------

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> Any:
        async def work() -> pb.RepositoryIndexResponse:
            _one_repository(request.repository_name)
            return messages.repository_index(self.plane.repository_index(), request.ready)

        return await self._handle(context, "RepositoryIndex", work)

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> Any:
        async def work() -> pb.RepositoryModelLoadResponse:
            _one_repository(request.repository_name)
            overrides = sorted(request.parameters)
            if overrides:
                raise BadParameterError(
                    f"load parameters {overrides} are not supported: this server loads the "
                    "newest package version from its repository folder as it is"
                )
            await self.plane.load(request.model_name)
            return pb.RepositoryModelLoadResponse()

        return await self._handle(context, "RepositoryModelLoad", work)

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> Any:
        async def work() -> pb.RepositoryModelUnloadResponse:
            _one_repository(request.repository_name)
            # `unload_dependents` (tritonclient sends it) has no meaning here: no ensembles.
            await self.plane.unload(request.model_name)
            return pb.RepositoryModelUnloadResponse()

        return await self._handle(context, "RepositoryModelUnload", work)

    # -- not offered ------------------------------------------------------------------------

    async def _unsupported(self, context: Any, what: str) -> Any:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            f"unsupported: {what} is not offered by this server; send tensors in the request",
        )

    async def SystemSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        await self._unsupported(context, "system shared memory")

    async def SystemSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        await self._unsupported(context, "system shared memory")

    async def SystemSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        await self._unsupported(context, "system shared memory")

    async def CudaSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        await self._unsupported(context, "CUDA shared memory")

    async def CudaSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        await self._unsupported(context, "CUDA shared memory")

    async def CudaSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        await self._unsupported(context, "CUDA shared memory")

    async def TraceSetting(self, request: Any, context: Any) -> Any:
        await self._unsupported(context, "trace settings")

    async def LogSettings(self, request: Any, context: Any) -> Any:
        await self._unsupported(context, "log settings (MPLSTM_LOG_LEVEL sets the level)")


def _value(value: T) -> Callable[[], Awaitable[T]]:
    async def work() -> T:
        return value

    return work


def _one_repository(name: str) -> None:
    if name:
        raise BadParameterError(
            f"repository {name!r}: this server has one repository; leave repository_name empty"
        )


async def _answers(
    requests: AsyncIterator[pb.ModelInferRequest],
    infer: Callable[[pb.ModelInferRequest], Awaitable[pb.ModelStreamInferResponse]],
    limit: int,
) -> AsyncIterator[pb.ModelStreamInferResponse]:
    """Run each request of a stream as it arrives (so they batch, and priorities apply);
    yield the answers as they are ready, at most `limit` in flight."""
    ready: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
    slots = asyncio.Semaphore(limit)
    running: set[asyncio.Task[None]] = set()

    async def one(request: pb.ModelInferRequest) -> None:
        try:
            ready.put_nowait(await infer(request))
        finally:
            slots.release()

    async def read() -> None:
        try:
            async for request in requests:
                await slots.acquire()
                task = asyncio.create_task(one(request))
                running.add(task)
                task.add_done_callback(running.discard)
            if running:
                await asyncio.wait(set(running))
        finally:
            ready.put_nowait(None)

    reader = asyncio.create_task(read())
    try:
        while (answer := await ready.get()) is not None:
            yield answer
        await reader  # the client's half-close, or its error
    finally:
        reader.cancel()
        for task in running:
            task.cancel()
