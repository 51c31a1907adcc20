"""One data plane for every protocol: the Open Inference Protocol's operations, once.

The REST `/v2` routes (`routes.py` with `oip.py`) and the gRPC servicer
(`grpc_servicer.py`) are thin translators onto `DataPlane` (the layout of KServe's
`protocol/dataplane.py` with its rest/ and grpc/ handlers): it finds the model, checks
the tensors against its manifest, reads the request's schedule policy (Triton's
`priority` and `timeout` parameters), batches and infers, and counts the request under
its protocol. So both protocols refuse the same request with the same code and message,
and answer the same tensors with the same numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import numpy as np

from mplstm import __version__
from mplstm.core.package import EMBEDDING_OUTPUT
from mplstm.service.errors import BadParameterError
from mplstm.service.pipeline import Services, counted, infer_tensors
from mplstm.service.repository import LoadedModel, ModelState
from mplstm.service.schemas import ServerMetadata
from mplstm.service.tensors import ModelMetadata, model_inputs, select_outputs, tensor_metadata

log = logging.getLogger(__name__)

SERVER_NAME = "mplstm-serve"
# Protocol extensions both protocols implement (Triton's names).
EXTENSIONS = ("binary_tensor_data", "model_repository", "schedule_policy")
# The route label of tensor inference in the metrics, whichever the protocol.
INFER_ROUTE = "v2_infer"


@dataclass(frozen=True)
class TensorRequest:
    """An inference request once its protocol's framing is undone: arrays by name."""

    model: str
    inputs: dict[str, np.ndarray]
    version: str | None = None
    id: str | None = None
    outputs: Sequence[str] | None = None  # None or empty: every output
    # Request-level parameters; `priority` and `timeout` (microseconds) are read here.
    parameters: Mapping[str, object] = field(default_factory=dict)
    # Seconds the client still waits (a gRPC deadline); None: the server's own deadline.
    client_deadline_s: float | None = None


@dataclass(frozen=True)
class TensorResult:
    """The answer: the model and version that served it, and the asked-for outputs."""

    model: str
    version: str
    id: str | None
    outputs: dict[str, np.ndarray]


@dataclass(frozen=True)
class SchedulePolicy:
    """Where a request queues: priority level (None: the default) and queue timeout."""

    level: int | None = None
    queue_timeout_s: float | None = None


ReadinessListener = Callable[[bool], Awaitable[None]]


class DataPlane:
    """The Open Inference Protocol's operations on the shared repository and batchers."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._listeners: list[ReadinessListener] = []

    # -- health and metadata --------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Every model is loaded and warmed up."""
        return self.services.repository.ready

    def server_metadata(self) -> ServerMetadata:
        """Server name, version and protocol extensions."""
        return ServerMetadata(name=SERVER_NAME, version=__version__, extensions=list(EXTENSIONS))

    def model(self, name: str, version: str | None = None) -> LoadedModel:
        """The serving model (at `version`, when given; "" is none); 404 or 503 otherwise."""
        return self.services.repository.get(name, version or None)

    def model_metadata(self, name: str, version: str | None = None) -> ModelMetadata:
        """Inputs and outputs of a serving model (v2 metadata)."""
        model = self.model(name, version)
        return ModelMetadata(
            name=model.name,
            versions=[model.version],
            platform=f"{model.backend.name}_onnx",
            inputs=[tensor_metadata(s) for s in model.manifest.inputs],
            outputs=[tensor_metadata(s) for s in model.manifest.outputs],
        )

    # -- inference ------------------------------------------------------------------------

    def schedule_policy(self, parameters: Mapping[str, object]) -> SchedulePolicy:
        """The request's `priority` and `timeout` parameters, checked (Triton's semantics)."""
        settings = self.services.settings
        priority = _whole_number(parameters, "priority")
        timeout_us = _whole_number(parameters, "timeout")
        if priority is not None and priority > settings.priority_levels:
            raise BadParameterError(
                f"priority {priority} is out of range: this server has "
                f"{settings.priority_levels} levels (1 first; 0 or none: the default, "
                f"{settings.default_priority_level})"
            )
        return SchedulePolicy(
            level=priority or None,
            # Triton's 0: no timeout of the request's own.
            queue_timeout_s=timeout_us / 1e6 if timeout_us else None,
        )

    def counted(self, model: str, protocol: str) -> AbstractContextManager[None]:
        """Count one inference request by outcome; a translator wraps its whole handling."""
        return counted(self.services, model, INFER_ROUTE, protocol)

    def serving(self, name: str, version: str | None = None) -> AbstractContextManager[LoadedModel]:
        """The version of `name` serving now ("" is none), held until the block ends.

        A reload or unload meanwhile retires it only afterwards, so a request is answered by
        the version that served when it arrived, however long its upload.
        """
        return self.services.repository.serving(name, version or None)

    async def infer(self, request: TensorRequest, protocol: str) -> TensorResult:
        """Check, batch and infer one request on the version serving now."""
        with self.serving(request.model, request.version) as model:
            return await self.infer_on(model, request, protocol)

    async def infer_on(
        self, model: LoadedModel, request: TensorRequest, protocol: str
    ) -> TensorResult:
        """Check, batch and infer one request on `model` (held by the caller)."""
        services = self.services
        clip, mask = model_inputs(request.inputs, model.manifest)
        available = [spec.name for spec in model.manifest.outputs]
        names = select_outputs(request.outputs, available)
        policy = self.schedule_policy(request.parameters)
        timeout_s = services.settings.request_timeout_s
        if request.client_deadline_s is not None:
            timeout_s = min(timeout_s, max(request.client_deadline_s, 0.0))
        result = await infer_tensors(
            model,
            clip,
            mask,
            metrics=services.metrics,
            timeout_s=timeout_s,
            protocol=protocol,
            level=policy.level,
            queue_timeout_s=policy.queue_timeout_s,
        )
        outputs = {"logits": result.logits, "probabilities": result.probabilities}
        if result.embedding is not None:
            outputs[EMBEDDING_OUTPUT] = result.embedding
        return TensorResult(model.name, model.version, request.id, {n: outputs[n] for n in names})

    # -- the repository -------------------------------------------------------------------

    def repository_index(self) -> list[ModelState]:
        """Every model in the repository and its state."""
        return self.services.repository.states()

    async def load(self, name: str) -> LoadedModel:
        """(Re)load the newest version of `name`; the serving version keeps serving on failure."""
        try:
            return await self.services.repository.load(name)
        finally:
            await self._readiness_changed()

    async def unload(self, name: str) -> None:
        """Stop serving `name` once its queued requests are answered."""
        try:
            await self.services.repository.unload(name)
        finally:
            await self._readiness_changed()

    def on_readiness_change(self, listener: ReadinessListener) -> None:
        """Call `listener(ready)` after every load and unload (the gRPC health service)."""
        self._listeners.append(listener)

    async def _readiness_changed(self) -> None:
        for listener in self._listeners:
            await listener(self.ready)


def _whole_number(parameters: Mapping[str, object], name: str) -> int | None:
    """A non-negative integer parameter, or None when absent."""
    if name not in parameters:
        return None
    value = parameters[name]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadParameterError(f"parameter {name!r} must be a non-negative integer, not {value!r}")
    return value
