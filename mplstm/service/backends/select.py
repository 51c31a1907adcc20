"""Pick the backend for a package: `auto` takes the best that works here and logs why."""

from __future__ import annotations

import logging

from mplstm.core.package import ModelPackage
from mplstm.service.backends.base import Backend, BackendUnavailableError
from mplstm.service.settings import BackendChoice, Settings

log = logging.getLogger(__name__)


def open_backend(package: ModelPackage, settings: Settings) -> Backend:
    """A backend for `package`: the one asked for, or under `auto` native TensorRT, else ONNX Runtime.

    BackendUnavailableError when the backend asked for explicitly cannot serve it.
    """
    from mplstm.service.backends.onnxruntime import OnnxRuntimeBackend

    choice = settings.backend
    if choice in (BackendChoice.AUTO, BackendChoice.TENSORRT) and settings.device != "cpu":
        from mplstm.service.backends.tensorrt import TensorRTBackend

        try:
            backend: Backend = TensorRTBackend(package, device=settings.device)
        except BackendUnavailableError as exc:
            if choice is BackendChoice.TENSORRT:
                raise
            log.info("%s: not using native TensorRT: %s", package.name, exc)
        else:
            log.info("%s: backend %s", package.name, backend.why)
            return backend
    elif choice is BackendChoice.TENSORRT:
        raise BackendUnavailableError("MPLSTM_BACKEND=tensorrt needs a GPU, not MPLSTM_DEVICE=cpu")
    backend = OnnxRuntimeBackend(
        package, device=settings.device, intra_op_threads=settings.intra_op_threads
    )
    log.info("%s: backend %s", package.name, backend.why)
    return backend
