"""Pick the backend for a package: the one asked for, or under `auto` the best that works here."""

from __future__ import annotations

import logging

from mplstm.core.package import ModelPackage
from mplstm.inference.backend import Backend, BackendUnavailableError
from mplstm.inference.options import BackendChoice, BackendOptions

log = logging.getLogger(__name__)


def open_backend(package: ModelPackage, options: BackendOptions) -> Backend:
    """Native TensorRT where asked for or (under `auto`) where an engine fits, else ONNX Runtime.

    BackendUnavailableError when the backend asked for explicitly cannot serve it.
    """
    from mplstm.inference.onnxruntime import OnnxRuntimeBackend

    choice = options.backend
    if choice is BackendChoice.TENSORRT and options.device == "cpu":
        raise BackendUnavailableError("MPLSTM_BACKEND=tensorrt needs a GPU, not MPLSTM_DEVICE=cpu")
    if choice in (BackendChoice.AUTO, BackendChoice.TENSORRT) and options.device != "cpu":
        from mplstm.inference.tensorrt import TensorRTBackend

        try:
            backend: Backend = TensorRTBackend(package, options)
        except BackendUnavailableError as exc:
            if choice is BackendChoice.TENSORRT:
                raise
            log.info("%s: not using native TensorRT: %s", package.name, exc)
        else:
            log.info("%s: backend %s", package.name, backend.description)
            return backend
    backend = OnnxRuntimeBackend(package, options)
    log.info("%s: backend %s", package.name, backend.description)
    return backend
