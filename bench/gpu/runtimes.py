"""Part 5: the package's model.onnx on the GPU runtimes serving uses.

- ONNX Runtime's CUDAExecutionProvider (onnxruntime-gpu): parity with the CPU provider on
  the same decoded clips, clips/s at batch 1 and 32 (session.run on numpy: the times
  include the host↔device copies, as a service's would).
- TensorRT: engines built by `mplstm.export.tensorrt_build.build_engine` with the plugin
  (fp32, and fp16 from `to_fp16(model.onnx)`) and without it (fp32, the function body
  inlined), each run through TensorRT's own Python API on torch CUDA buffers: parity with
  ONNX Runtime CPU, clips/s at batch 1 and 32 (CUDA events, inputs already on the GPU).

Each half skips with the reason where its package is absent. `build_engine` is imported
lazily and guarded: the TensorRT helpers are moving to `mplstm.inference`, and a missing
name must make this part say so, not crash the kit.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.gpu.common import Context, Skip, error_text, time_ms
from bench.gpu.demo import (
    calls_per_round,
    example_clips,
    logits_parity,
    logits_tolerance,
    ort_rows,
    ort_session,
    read_manifest,
    timed_row,
)

BATCHES = (1, 32)
ORT_CUDA = "ONNX Runtime, CUDAExecutionProvider"
GPU_TIMING = {"warmup": 3, "rounds": 3}
# (label, precision, use_plugin): the plugin engines first, the budget may end the list.
ENGINES = (
    ("fp32, plugin", "fp32", True),
    ("fp32, no plugin", "fp32", False),
    ("fp16, plugin", "fp16", True),
)


@dataclass(frozen=True)
class Inputs:
    """The decoded clips both halves run, and ONNX Runtime CPU's logits on them."""

    clips: np.ndarray  # uint8 [32, V, T, C, H, W]
    masks: np.ndarray  # bool [32, V]
    reference: np.ndarray | None  # logits, None where onnxruntime is absent


def ort_cuda(ctx: Context, inputs: Inputs, tolerance: tuple[float | None, str]) -> dict[str, Any]:
    """model.onnx on ONNX Runtime's CUDA provider, TF32 off where the option exists."""
    try:
        session = ort_session(ctx.package, "CUDAExecutionProvider", {"use_tf32": "0"})
        tf32 = "off"
    except Skip:
        raise
    except Exception:  # an onnxruntime-gpu without the use_tf32 option: its default
        session = ort_session(ctx.package, "CUDAExecutionProvider")
        tf32 = "provider default"
    if session.get_providers()[0] != "CUDAExecutionProvider":
        raise Skip(f"ONNX Runtime fell back to {session.get_providers()}")
    label = f"{ctx.device_label} ({ORT_CUDA}, TF32 {tf32}; times include host↔device copies)"
    clips, masks = inputs.clips, inputs.masks
    rows = ort_rows(ctx, session, (ORT_CUDA, label), clips, masks, BATCHES, GPU_TIMING)
    logits = session.run(["logits"], {"clip": clips, "view_mask": masks})[0]
    parity: Any = "skipped: no ONNX Runtime CPU reference"
    if inputs.reference is not None:
        parity = {
            **logits_parity(logits, inputs.reference, tolerance),
            "device": f"{label} vs cpu (ONNX Runtime)",
        }
    return {"status": "ran", "rows": rows, "parity": parity}


class EngineCall:
    """A TensorRT engine, run through TensorRT's own Python API on torch CUDA buffers.

    `bind(feeds)` copies one input batch to the GPU and allocates the outputs; calling the
    object then runs the engine on `stream` (asynchronously, as a service would).
    """

    def __init__(self, trt: Any, plan: bytes, stream: torch.cuda.Stream) -> None:
        self.trt = trt
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan)
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialize the engine it just built")
        self.context = self.engine.create_execution_context()
        self.stream = stream
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.buffers: dict[str, torch.Tensor] = {}

    def bind(self, feeds: dict[str, np.ndarray]) -> None:
        """Copy one batch of inputs to the GPU, size the outputs, and give TensorRT both."""
        trt = self.trt
        self.buffers = {}
        for name in self.names:
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.buffers[name] = torch.from_numpy(np.ascontiguousarray(feeds[name])).cuda()
                self.context.set_input_shape(name, tuple(self.buffers[name].shape))
        for name in self.names:
            if name not in self.buffers:
                np_dtype = trt.nptype(self.engine.get_tensor_dtype(name))
                dtype = torch.from_numpy(np.empty(0, np_dtype)).dtype
                shape = tuple(self.context.get_tensor_shape(name))
                self.buffers[name] = torch.empty(shape, dtype=dtype, device="cuda")
            self.context.set_tensor_address(name, self.buffers[name].data_ptr())

    def __call__(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT failed to run the engine")


def engine_rows(
    ctx: Context, trt: Any, plan: bytes, label: str, clips: np.ndarray, masks: np.ndarray
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """clips/s of one engine at batch 1 and 32, and its logits on the largest batch."""
    stream = torch.cuda.Stream()
    device = f"{ctx.device_label} (TensorRT {trt.__version__}; inputs already on the GPU)"
    rows = []
    torch.cuda.synchronize()
    with torch.cuda.stream(stream):  # TensorRT on its own stream; CUDA events on that stream
        call = EngineCall(trt, plan, stream)
        for batch in BATCHES:
            call.bind({"clip": clips[:batch], "view_mask": masks[:batch]})
            reps = calls_per_round(batch, dry_run=False)
            ms = time_ms(call, cuda_events=True, reps=reps, **GPU_TIMING)
            rows.append(timed_row(f"TensorRT {label}", device, batch, ms))
            ctx.log(f"TensorRT {label} B={batch}: {ms:.2f} ms, {batch / ms * 1e3:.1f} clips/s")
        call.bind({"clip": clips, "view_mask": masks})
        call()
        stream.synchronize()
    return rows, call.buffers["logits"].float().cpu().numpy()


def tensorrt_engines(ctx: Context, manifest: dict[str, Any], inputs: Inputs) -> dict[str, Any]:
    """Build and run each engine variant in a temporary folder (engines are not kept)."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise Skip(f"TensorRT is not installed ({exc})") from exc
    try:
        from mplstm.export.tensorrt_build import build_engine
    except (ImportError, AttributeError) as exc:
        raise Skip(
            f"mplstm.export.tensorrt_build.build_engine is not importable: {error_text(exc)}"
        ) from exc
    engines = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-trt-") as tmp:
        for label, precision, use_plugin in ENGINES:
            if ctx.out_of_time(90):  # a build takes tens of seconds
                engines.append({"engine": label, "status": "skipped: time budget"})
                continue
            try:
                engines.append(
                    one_engine(
                        ctx,
                        trt,
                        build_engine,
                        manifest,
                        Path(tmp),
                        (label, precision, use_plugin),
                        inputs,
                        logits_tolerance(f"tensorrt-{precision}", manifest),
                    )
                )
            except Exception as exc:
                engines.append({"engine": label, "status": f"failed: {error_text(exc)}"})
                ctx.log(f"TensorRT {label}: failed: {error_text(exc)}")
    return {"status": "ran", "tensorrt": trt.__version__, "engines": engines}


def one_engine(
    ctx: Context,
    trt: Any,
    build_engine: Any,
    manifest: dict[str, Any],
    tmp: Path,
    variant: tuple[str, str, bool],
    inputs: Inputs,
    tolerance: tuple[float | None, str],
) -> dict[str, Any]:
    """Build one engine variant, then time it and check its logits."""
    label, precision, use_plugin = variant
    onnx_path = ctx.package / "model.onnx"
    if precision == "fp16":  # TensorRT networks are strongly typed: an fp16 graph
        import onnx

        from mplstm.export.fp16 import to_fp16

        onnx_path = tmp / "model.fp16.onnx"
        onnx.save(to_fp16(onnx.load(str(ctx.package / "model.onnx"))), str(onnx_path))
    folder = tmp / label.replace(", ", "-").replace(" ", "-")
    started = time.perf_counter()
    info = build_engine(
        onnx_path,
        folder,
        fp16=precision == "fp16",
        max_batch=max(BATCHES),
        frames_range=tuple(manifest["frames_range"]),
        frames_opt=manifest["preprocess"]["frames"],
        timing_cache=None,
        use_plugin=use_plugin,
        echo=ctx.log,
    )
    build_s = time.perf_counter() - started
    plan = (folder / info.file).read_bytes()
    rows, logits = engine_rows(ctx, trt, plan, label, inputs.clips, inputs.masks)
    parity: Any = "skipped: no ONNX Runtime CPU reference"
    if inputs.reference is not None:
        parity = {
            **logits_parity(logits, inputs.reference, tolerance),
            "device": f"{ctx.device_label} (TensorRT {label}) vs cpu (ONNX Runtime)",
        }
    return {
        "engine": label,
        "status": "ran",
        "file": info.file,
        "plugin_in_engine": bool(info.plugin),
        "build_s": round(build_s, 1),
        "rows": rows,
        "parity": parity,
    }


def availability() -> str:
    """What this host has of the two runtimes, in words (for the dry run's skip)."""
    try:
        import onnxruntime as ort

        found = f"onnxruntime {ort.__version__} providers {ort.get_available_providers()}"
    except ImportError:
        found = "onnxruntime absent"
    try:
        import tensorrt as trt

        return f"{found}; TensorRT {trt.__version__}"
    except ImportError:
        return f"{found}; TensorRT absent"


def run(ctx: Context) -> dict[str, Any]:
    """Part 5: ONNX Runtime CUDA, then TensorRT; each half skips or fails on its own."""
    if ctx.dry_run:
        raise Skip(
            f"dry run: ONNX Runtime's CUDA provider and TensorRT need a GPU ({availability()})"
        )
    if not ctx.cuda:
        raise Skip("no CUDA GPU")
    manifest = read_manifest(ctx.package)
    clips, masks, source = example_clips(manifest, max(BATCHES), manifest["preprocess"]["frames"])
    tolerance = logits_tolerance("fp32", manifest)  # ORT on the GPU: fp32 throughout
    reference = None
    try:
        cpu = ort_session(ctx.package, "CPUExecutionProvider")
        reference = cpu.run(["logits"], {"clip": clips, "view_mask": masks})[0]
    except Skip as exc:
        ctx.log(f"runtimes: no ONNX Runtime CPU reference: {exc}")
    inputs = Inputs(clips, masks, reference)
    halves: dict[str, dict[str, Any]] = {}
    steps = {
        "onnxruntime_cuda": lambda: ort_cuda(ctx, inputs, tolerance),
        "tensorrt": lambda: tensorrt_engines(ctx, manifest, inputs),
    }
    for name, step in steps.items():
        if ctx.out_of_time():
            halves[name] = {"status": "skipped: time budget"}
            continue
        try:
            halves[name] = step()
        except Skip as exc:
            halves[name] = {"status": f"skipped: {exc}"}
        except Exception as exc:
            halves[name] = {"status": f"failed: {error_text(exc)}"}
        ctx.log(f"runtimes: {name}: {halves[name]['status']}")
    if all(h["status"].startswith("skipped") for h in halves.values()):
        raise Skip(
            "; ".join(f"{n}: {h['status'].removeprefix('skipped: ')}" for n, h in halves.items())
        )
    results = {
        "clips": source,
        "parity_reference": "ONNX Runtime CPUExecutionProvider, model.onnx",
        **halves,
    }
    return {"device": ctx.device_label, "results": results}
