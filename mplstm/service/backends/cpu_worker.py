"""What a decode worker runs when it infers too: its CPU sessions, and the one-clip task.

On a CPU backend the service's video route (`mplstm.service.worker_inference`) and the
batch scorer (`mplstm.scoring.worker_inference`) infer in the decode worker that decoded
the clip. This module is all such a worker imports beyond decoding (no web framework).

A worker opens an ONNX Runtime session on first use, a second or so, and keeps it for
the next clips. Sessions are keyed by package folder, the sha256 of its `model.onnx`
(a reloaded package at the same path opens anew) and thread count; the least recently
used beyond `keep` are closed, so a worker serving two models keeps both while a
reload or a scorer run with another model drops the old.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from mplstm.core.package import ONNX_NAME, ModelPackage
from mplstm.core.preprocess import PreprocessConfig, load_clip
from mplstm.service.backends.base import Backend, dummy_batch

_OPEN: OrderedDict[tuple[str, str, int], Backend] = OrderedDict()


def cpu_session(package: ModelPackage, threads: int, keep: int = 1) -> Backend:
    """This process's CPU ONNX Runtime session for `package`, opened on first use."""
    from mplstm.service.backends.onnxruntime import OnnxRuntimeBackend

    key = (str(package.path.resolve()), package.manifest.files.get(ONNX_NAME, ""), threads)
    session = _OPEN.pop(key, None)
    while len(_OPEN) >= max(1, keep):  # closed before opening another: memory stays bounded
        _, old = _OPEN.popitem(last=False)
        old.close()
    _OPEN[key] = session or OnnxRuntimeBackend(package, device="cpu", intra_op_threads=threads)
    return _OPEN[key]


@dataclass(frozen=True)
class WorkerPrediction:
    """What a worker sends back for one clip: no frames, only what the answer needs."""

    view_names: tuple[str, ...]
    view_mask: np.ndarray  # bool [V]
    probabilities: np.ndarray  # float32 [classes]
    decode_s: float
    inference_s: float


class WorkerInferenceError(RuntimeError):
    """Inference failed in a worker on a clip that decoded: a server fault, not the input."""


def decode_and_infer(
    data: Mapping[str, bytes],
    config: PreprocessConfig,
    package: ModelPackage,
    threads: int,
    keep: int,
) -> WorkerPrediction:
    """In a worker: decode one clip and run it through this worker's session for `package`."""
    start = time.perf_counter()
    clip = load_clip(data, config)
    decoded = time.perf_counter()
    try:
        output = cpu_session(package, threads, keep).infer(clip.frames[None], clip.view_mask[None])
    except Exception as exc:  # whatever the runtime raises; it must pickle across
        raise WorkerInferenceError(f"{type(exc).__name__}: {exc}") from None
    return WorkerPrediction(
        clip.view_names,
        clip.view_mask,
        output.probabilities[0],
        decode_s=decoded - start,
        inference_s=time.perf_counter() - decoded,
    )


def warm_up(package: ModelPackage, threads: int, keep: int) -> None:
    """In a worker: open the session for `package` and run a dummy clip through it."""
    pre = package.manifest.preprocess
    clip, mask = dummy_batch(
        len(package.manifest.view_names), pre.frames, pre.channels, pre.height, pre.width
    )
    cpu_session(package, threads, keep).infer(clip, mask)
