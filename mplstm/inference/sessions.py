"""Each worker process's own CPU sessions: opened on first use, kept for the next clips.

On a CPU backend the service's video route and the batch scorer infer in the worker
that decoded the clip (`Placement.WORKERS`). Opening a session takes a second or so, so
a worker keeps it. Sessions are keyed by package folder, the sha256 of its `model.onnx`
(a reloaded package at the same path opens anew) and thread count; the least recently
used beyond `keep` are closed, so a worker serving two models keeps both while a
reload, or a scorer run with another model, drops the old one.
"""

from __future__ import annotations

from collections import OrderedDict

from mplstm.core.package import ONNX_NAME, ModelPackage
from mplstm.inference.backend import Backend
from mplstm.inference.options import BackendOptions

_OPEN: OrderedDict[tuple[str, str, int], Backend] = OrderedDict()


def worker_session(package: ModelPackage, threads: int, keep: int = 1) -> Backend:
    """This process's CPU ONNX Runtime session for `package`, opened on first use."""
    from mplstm.inference.onnxruntime import OnnxRuntimeBackend

    key = (str(package.path.resolve()), package.manifest.files.get(ONNX_NAME, ""), threads)
    session = _OPEN.pop(key, None)
    while len(_OPEN) >= max(1, keep):  # closed before opening another: memory stays bounded
        _, old = _OPEN.popitem(last=False)
        old.close()
    _OPEN[key] = session or OnnxRuntimeBackend(
        package, BackendOptions(device="cpu", threads=threads)
    )
    return _OPEN[key]


def open_sessions() -> int:
    """How many sessions this process holds."""
    return len(_OPEN)
