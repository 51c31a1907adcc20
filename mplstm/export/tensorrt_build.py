"""TensorRT engines for a model package (DESIGN.md §5–§6): build, check, run.

`build_engine` parses a package's ONNX model with the MP-LSTM plugin registered, so
every `mplstm::MPLSTM` node becomes the AOT plugin layer (its Triton kernel compiled
into the engine) instead of the node's inlined function body, builds a strongly typed
network (TRT 11: the precision is the ONNX model's, so fp16 engines come from
`model.fp16.onnx`) with one optimization profile over batch 1..max and the package's
T range, reuses a timing cache, and says which path the recurrent cell took.

Engines only run where they were built: the same TensorRT version, the same GPU
architecture. `check_engine_compatible` refuses any other host with a message that
says what differs; it and `current_gpu` import nothing heavy (no torch: the service
uses them; TensorRT and the CUDA driver are loaded only when called). Building and
running need TensorRT, a GPU and torch CUDA tensors for buffers (export side only).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mplstm.core.package import EngineInfo, PackageError

if TYPE_CHECKING:  # onnx is loaded only where a model is read: the service needs none
    import onnx

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16")
BATCH_DIMS = ("batch", "B")  # symbolic dims (dim_param) of the models' inputs
TIME_DIMS = ("time", "T")
# Network layer types of an inlined recurrence (Scan → TensorRT loop; LSTM op likewise).
_LOOP_LAYERS = frozenset({"LOOP_OUTPUT", "RECURRENCE", "TRIP_LIMIT", "ITERATOR"})
_PLUGIN_LAYERS = frozenset({"PLUGIN", "PLUGIN_V2", "PLUGIN_V3"})
# Parity of an engine against model.onnx (fp32) in ONNX Runtime, on logits.
PARITY_ATOL = {"fp32": 1e-3, "fp16": 5e-2}


class EngineIncompatibleError(PackageError):
    """A TensorRT engine that cannot run here (other TensorRT version, GPU, or none)."""


class GPUUnavailableError(RuntimeError):
    """No CUDA driver or no GPU on this host."""


class EngineBuildError(RuntimeError):
    """TensorRT could not parse the ONNX model or build the engine."""


# -- naming and compatibility (torch-free) -------------------------------------------


def engine_file_name(gpu_arch: str, trt_version: str, precision: str) -> str:
    """`model.<arch>.trt<major.minor>.<precision>.plan`, e.g. model.sm_90.trt10.13.fp16.plan."""
    if not re.fullmatch(r"sm_\d+[a-z]?", gpu_arch):
        raise ValueError(f"gpu_arch must look like 'sm_90', got {gpu_arch!r}")
    version = re.match(r"(\d+)\.(\d+)", trt_version)
    if version is None:
        raise ValueError(f"TensorRT version must start with MAJOR.MINOR, got {trt_version!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return f"model.{gpu_arch}.trt{version[1]}.{version[2]}.{precision}.plan"


def current_gpu(device: int = 0) -> tuple[str, str]:
    """(arch, name) of a CUDA device, e.g. ("sm_90", "NVIDIA H100 80GB HBM3").

    Asks the CUDA driver (libcuda) directly, so it needs neither torch nor TensorRT;
    CUDA_VISIBLE_DEVICES applies as for any CUDA program.
    """
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        raise GPUUnavailableError(f"no CUDA driver on this host (libcuda.so.1: {exc})") from exc

    def call(result: int, what: str) -> None:
        if result != 0:
            raise GPUUnavailableError(f"CUDA driver call {what} failed with CUresult {result}")

    call(cuda.cuInit(0), "cuInit")
    count = ctypes.c_int()
    call(cuda.cuDeviceGetCount(ctypes.byref(count)), "cuDeviceGetCount")
    if device >= count.value:
        raise GPUUnavailableError(f"no CUDA device {device} ({count.value} visible)")
    handle = ctypes.c_int()
    call(cuda.cuDeviceGet(ctypes.byref(handle), device), "cuDeviceGet")
    major, minor = ctypes.c_int(), ctypes.c_int()
    # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR
    call(cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, handle), "cuDeviceGetAttribute")
    call(cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, handle), "cuDeviceGetAttribute")
    name = ctypes.create_string_buffer(256)
    call(cuda.cuDeviceGetName(name, len(name), handle), "cuDeviceGetName")
    return f"sm_{major.value}{minor.value}", name.value.decode(errors="replace")


def tensorrt_version() -> str:
    """The TensorRT version installed here; EngineIncompatibleError where there is none."""
    try:
        import tensorrt
    except ImportError as exc:
        raise EngineIncompatibleError(
            f"TensorRT is not installed here ({exc}): TensorRT engines run only in the GPU "
            "image; use the onnxruntime backend elsewhere"
        ) from exc
    return str(tensorrt.__version__)


def check_engine_compatible(
    info: EngineInfo,
    *,
    running_tensorrt: str | None = None,
    running_gpu: tuple[str, str] | None = None,
) -> None:
    """Raise EngineIncompatibleError unless this host's TensorRT and GPU are the engine's.

    TensorRT deserializes only engines of its own exact version, built for the same GPU
    architecture. `running_tensorrt` / `running_gpu` default to this host's. A GPU of
    the same architecture but another model is accepted with a warning (TensorRT's own
    rule: it runs, possibly with tactics tuned for the other GPU).
    """
    version = running_tensorrt if running_tensorrt is not None else tensorrt_version()
    if running_gpu is None:
        try:
            running_gpu = current_gpu()
        except GPUUnavailableError as exc:
            raise EngineIncompatibleError(
                f"engine {info.file} needs a {info.gpu_arch} GPU ({info.gpu_name}): {exc}"
            ) from exc
    arch, name = running_gpu
    problems = []
    if version != info.tensorrt_version:
        problems.append(f"TensorRT {info.tensorrt_version}, this host has TensorRT {version}")
    if arch != info.gpu_arch:
        problems.append(
            f"GPU architecture {info.gpu_arch} ({info.gpu_name}), this host has {arch} ({name})"
        )
    if problems:
        raise EngineIncompatibleError(
            f"engine {info.file} was built for {' and '.join(problems)}: TensorRT engines "
            "run only where they were built. Rebuild it on this host (mplstm export "
            "CHECKPOINT --out DIR --tensorrt) or serve with the onnxruntime backend."
        )
    if name != info.gpu_name:
        log.warning(
            "engine %s was built on a %s and runs on a %s (same %s): tactics may not be "
            "the best for this GPU",
            info.file,
            info.gpu_name,
            name,
            arch,
        )


# -- what the builder is given (pure, testable without TensorRT) ----------------------


def onnx_precision(model: onnx.ModelProto) -> str:
    """The precision of a model's float weights: "fp16" (as model.fp16.onnx) or "fp32"."""
    from onnx import TensorProto

    kinds = {i.data_type for i in model.graph.initializer}
    if TensorProto.FLOAT16 in kinds and TensorProto.FLOAT not in kinds:
        return "fp16"
    return "fp32"


def mplstm_node_count(model: onnx.ModelProto) -> int:
    """The number of mplstm::MPLSTM nodes in the model's graph."""
    from mplstm.export import onnx_cell

    key = (onnx_cell.DOMAIN, onnx_cell.OP_TYPE)
    return sum((n.domain, n.op_type) == key for n in model.graph.node)


def prepare_for_parser(model: onnx.ModelProto, use_plugin: bool) -> int:
    """Set up the model's mplstm::MPLSTM nodes (in place) for the TensorRT ONNX parser.

    With `use_plugin`, nodes the plugin covers get `aot = 1` (the parser then takes the
    plugin's AOT implementation: the kernel lives in the engine, no Python at run time);
    peephole nodes (a 7th input, which the plugin lacks) and, without `use_plugin`, all
    nodes lose `plugin_namespace`/`plugin_version`, so the parser inlines their function
    body. Returns the number of nodes meant to become plugin layers.
    """
    from onnx import helper

    from mplstm.export import onnx_cell

    plugin_nodes = 0
    for node in model.graph.node:
        if (node.domain, node.op_type) != (onnx_cell.DOMAIN, onnx_cell.OP_TYPE):
            continue
        keep = use_plugin and not onnx_cell.config_of(node).peepholes
        drop = {"aot"} if keep else {"aot", "plugin_namespace", "plugin_version"}
        kept = [a for a in node.attribute if a.name not in drop]
        del node.attribute[:]
        node.attribute.extend(kept)
        if keep:
            node.attribute.append(helper.make_attribute("aot", 1))
            plugin_nodes += 1
    return plugin_nodes


@dataclass(frozen=True)
class CellPath:
    """Which way the parser imported the model's mplstm::MPLSTM nodes."""

    nodes: int  # mplstm::MPLSTM nodes in the ONNX model
    plugin_layers: int  # plugin layers in the TensorRT network
    loop_layers: int  # loop machinery layers: an inlined Scan (or LSTM) body

    @property
    def plugin(self) -> bool:
        """Every MP-LSTM node runs as the plugin (and no body was inlined for one)."""
        return self.nodes > 0 and self.plugin_layers >= self.nodes

    def describe(self) -> str:
        if self.nodes == 0:
            return "no mplstm::MPLSTM node in the model"
        if self.plugin:
            return (
                f"MP-LSTM cell: TensorRT plugin mplstm::MPLSTM ({self.plugin_layers} plugin "
                f"layer(s) for {self.nodes} node(s); AOT kernel inside the engine)"
            )
        return (
            f"MP-LSTM cell: inlined ONNX function body ({self.plugin_layers} plugin layer(s) "
            f"for {self.nodes} node(s), {self.loop_layers} loop layer(s)); register the "
            "plugin (use_plugin=True) for the fused kernel"
        )


def cell_path(layer_types: Iterable[str], mplstm_nodes: int) -> CellPath:
    """Classify a network from its layer type names (e.g. "PLUGIN_V3" or "LayerType.LOOP")."""
    names = [str(t).rsplit(".", 1)[-1] for t in layer_types]
    return CellPath(
        nodes=mplstm_nodes,
        plugin_layers=sum(n in _PLUGIN_LAYERS for n in names),
        loop_layers=sum(n in _LOOP_LAYERS for n in names),
    )


Shape = tuple[int, ...]


def profile_shapes(
    inputs: Sequence[tuple[str, Sequence[int | str]]],
    max_batch: int,
    frames_range: tuple[int, int],
    frames_opt: int,
    batch_opt: int | None = None,
) -> dict[str, tuple[Shape, Shape, Shape]]:
    """(min, opt, max) shape of every input: `batch` over 1..max_batch, `time` over the range.

    `inputs` are (name, dims) with ints for fixed dims and dim_param names for symbolic
    ones, as in the ONNX graph. Any other symbolic dim is an error: the profile would
    not know its range.
    """
    low, high = frames_range
    if not 1 <= low <= frames_opt <= high:
        raise ValueError(
            f"frames must satisfy 1 <= A <= opt <= B, got range {frames_range}, opt {frames_opt}"
        )
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    batch_opt = max_batch if batch_opt is None else batch_opt
    if not 1 <= batch_opt <= max_batch:
        raise ValueError(f"batch_opt must be in 1..{max_batch}, got {batch_opt}")
    shapes = {}
    for name, dims in inputs:
        triple: list[list[int]] = [[], [], []]
        for axis, dim in enumerate(dims):
            if isinstance(dim, int) and dim > 0:
                values = (dim, dim, dim)
            elif dim in BATCH_DIMS:
                values = (1, batch_opt, max_batch)
            elif dim in TIME_DIMS:
                values = (low, frames_opt, high)
            else:
                raise ValueError(
                    f"input {name!r} axis {axis} is {dim!r}: only {BATCH_DIMS + TIME_DIMS} "
                    "may be dynamic in a TensorRT profile"
                )
            for shape, value in zip(triple, values, strict=True):
                shape.append(value)
        shapes[name] = (tuple(triple[0]), tuple(triple[1]), tuple(triple[2]))
    return shapes


def onnx_input_dims(model: onnx.ModelProto) -> list[tuple[str, list[int | str]]]:
    """(name, dims) of the graph inputs that are not initializers (dim_param for symbols)."""
    weights = {i.name for i in model.graph.initializer}
    return [
        (
            value.name,
            [
                d.dim_value if d.HasField("dim_value") else d.dim_param
                for d in value.type.tensor_type.shape.dim
            ],
        )
        for value in model.graph.input
        if value.name not in weights
    ]


def default_timing_cache(gpu_arch: str, trt_version: str) -> Path:
    """A per-user timing cache for one GPU architecture and TensorRT version."""
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mplstm"
    return root / f"timing.{gpu_arch}.trt{trt_version}.cache"


# -- building (TensorRT and a GPU) ----------------------------------------------------


def _progress_monitor(trt: Any, echo: Callable[[str], None]) -> Any:
    """A TensorRT IProgressMonitor that reports each build phase."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._started: dict[str, float] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self._started[phase_name] = time.perf_counter()
            depth = 1 if parent_phase else 0
            echo(f"{'  ' * depth}{phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            elapsed = time.perf_counter() - self._started.pop(phase_name, time.perf_counter())
            echo(f"  {phase_name} done in {elapsed:.1f} s")

    return Monitor()


def build_engine(
    onnx_path: str | Path,
    out_dir: str | Path,
    *,
    fp16: bool,
    max_batch: int,
    frames_range: tuple[int, int],
    frames_opt: int,
    timing_cache: Path | None,
    use_plugin: bool = True,
    progress: bool = False,
    batch_opt: int | None = None,
    echo: Callable[[str], None] = log.info,
) -> EngineInfo:
    """Build `out_dir/model.<arch>.trt<ver>.<precision>.plan` from an ONNX model.

    `fp16` must match the model (pass model.fp16.onnx for fp16: TensorRT's networks are
    strongly typed). One profile: batch 1..max_batch (opt `batch_opt`, default max),
    T over `frames_range` (opt `frames_opt`, the package's T). The timing cache is read
    if it exists and written back. Returns the EngineInfo for the manifest; its
    `plugin` says whether the MP-LSTM cell runs as the plugin or as the inlined body.
    """
    import onnx

    from mplstm.export import trt_plugin

    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    model = onnx.load(onnx_path)
    precision = "fp16" if fp16 else "fp32"
    if onnx_precision(model) != precision:
        raise EngineBuildError(
            f"{onnx_path} holds {onnx_precision(model)} weights but a {precision} engine was "
            "asked for: TensorRT networks are strongly typed, so build fp16 engines from "
            "model.fp16.onnx (mplstm export --fp16) and fp32 engines from model.onnx"
        )
    shapes = profile_shapes(onnx_input_dims(model), max_batch, frames_range, frames_opt, batch_opt)
    trt, _ = trt_plugin.import_tensorrt()  # after the checks: they need no TensorRT
    if use_plugin:
        trt_plugin.register()
    nodes = mplstm_node_count(model)
    plugin_nodes = prepare_for_parser(model, use_plugin)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):  # TRT 10; the default in 11
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model.SerializeToString(), str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {onnx_path}: {errors}")
    layers = [network.get_layer(i).type for i in range(network.num_layers)]
    path = cell_path((getattr(t, "name", str(t)) for t in layers), nodes)
    echo(f"parsed {onnx_path.name}: {network.num_layers} layers; {path.describe()}")
    if use_plugin and plugin_nodes and not path.plugin:
        log.warning("the plugin was registered but the parser inlined the function body")

    config = builder.create_builder_config()
    if hasattr(trt.BuilderFlag, "TF32"):
        # fp32 means fp32: TF32 rounds matmul inputs to 10 mantissa bits, which the
        # fp32 parity tolerance against model.onnx (PARITY_ATOL) is not meant to absorb.
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in shapes.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    if progress and hasattr(trt, "IProgressMonitor"):
        config.progress_monitor = _progress_monitor(trt, echo)

    gpu_arch, gpu_name = current_gpu()
    started = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(f"TensorRT could not build an engine from {onnx_path} (see log)")
    seconds = time.perf_counter() - started
    version = str(trt.__version__)
    out_dir.mkdir(parents=True, exist_ok=True)
    engine_path = out_dir / engine_file_name(gpu_arch, version, precision)
    _write_atomic(engine_path, bytes(plan))
    if timing_cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))
    echo(
        f"built {engine_path.name} ({engine_path.stat().st_size / 1e6:.1f} MB) in "
        f"{seconds:.1f} s on {gpu_name} ({gpu_arch}), TensorRT {version}; profile batch "
        f"1..{max_batch}, T {frames_range[0]}..{frames_range[1]} (opt {frames_opt}); "
        f"timing cache {timing_cache or 'not kept'}"
    )
    return EngineInfo(
        file=engine_path.name,
        gpu_arch=gpu_arch,
        gpu_name=gpu_name,
        tensorrt_version=version,
        precision=precision,
        plugin=path.plugin,
        max_batch=max_batch,
        frames_range=(int(frames_range[0]), int(frames_range[1])),
    )


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# -- running (TensorRT, torch CUDA buffers) -------------------------------------------


class EngineRunner:
    """A deserialized engine with one execution context; call it with numpy inputs."""

    def __init__(self, engine_path: str | Path) -> None:
        from mplstm.export import trt_plugin

        trt, _ = trt_plugin.import_tensorrt()
        self._trt = trt
        self.path = Path(engine_path)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise EngineIncompatibleError(
                f"TensorRT {trt.__version__} could not load {self.path} (see its log): "
                "rebuild the engine on this host"
            )
        self.context = self.engine.create_execution_context()
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        trt = self._trt
        inputs = [n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        missing = set(inputs) - set(feeds)
        if missing:
            raise ValueError(f"{self.path.name} needs inputs {sorted(missing)}")
        buffers = {}
        for name in inputs:
            buffers[name] = torch.from_numpy(np.ascontiguousarray(feeds[name])).cuda()
            if not self.context.set_input_shape(name, tuple(buffers[name].shape)):
                raise ValueError(
                    f"{name} of shape {tuple(buffers[name].shape)} is outside the engine's "
                    f"profile {self.engine.get_tensor_profile_shape(name, 0)} (min, opt, max)"
                )
        for name in self.names:
            if name not in buffers:
                numpy_dtype = trt.nptype(self.engine.get_tensor_dtype(name))
                dtype = torch.from_numpy(np.empty(0, numpy_dtype)).dtype
                shape = tuple(self.context.get_tensor_shape(name))
                buffers[name] = torch.empty(shape, dtype=dtype, device="cuda")
            self.context.set_tensor_address(name, buffers[name].data_ptr())
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())  # the input copies ran there
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT failed to run {self.path.name}")
        stream.synchronize()
        return {n: buffers[n].cpu().numpy() for n in self.names if n not in inputs}


@functools.lru_cache(maxsize=4)
def _runner(path: str, mtime_ns: int) -> EngineRunner:
    return EngineRunner(path)


def run_engine(
    engine_path: str | Path, clip: np.ndarray, view_mask: np.ndarray
) -> dict[str, np.ndarray]:
    """Run a package engine on one batch: {"logits": ..., "probabilities": ...} as numpy.

    The deserialized engine is kept (keyed on path and mtime) for the next call.
    """
    path = Path(engine_path)
    runner = _runner(str(path.resolve()), path.stat().st_mtime_ns)
    return runner({"clip": clip, "view_mask": view_mask})


def engine_parity(
    package_dir: str | Path,
    engine_info: EngineInfo,
    clips: Sequence[tuple[np.ndarray, np.ndarray]],
) -> dict[str, Any]:
    """ONNX Runtime (model.onnx, fp32, CPU) vs the TensorRT engine on `clips` batches.

    Returns max |diff| on logits and probabilities, argmax agreement, the tolerance for
    the engine's precision (PARITY_ATOL) and whether it passed: logits within it, and
    no argmax flip where the top two fp32 logits are more than twice it apart.
    """
    import onnxruntime as ort

    from mplstm.core.package import ONNX_NAME

    check_engine_compatible(engine_info)
    package_dir = Path(package_dir)
    session = ort.InferenceSession(str(package_dir / ONNX_NAME), providers=["CPUExecutionProvider"])
    runner = EngineRunner(package_dir / engine_info.file)
    tolerance = PARITY_ATOL[engine_info.precision]
    worst = {"logits": 0.0, "probabilities": 0.0}
    agree = samples = clear_disagree = 0
    for clip, mask in clips:
        feeds = {"clip": clip, "view_mask": mask}
        expected = dict(zip(worst, session.run(list(worst), feeds), strict=True))
        got = runner(feeds)
        for name in worst:
            diff = np.abs(got[name].astype(np.float32) - expected[name]).max()
            worst[name] = max(worst[name], float(diff))
        same = got["logits"].argmax(-1) == expected["logits"].argmax(-1)
        # A flip between two logits closer than the tolerance is precision, not a bug.
        top2 = np.sort(expected["logits"], axis=-1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 2 * tolerance
        agree += int(same.sum())
        clear_disagree += int((clear & ~same).sum())
        samples += len(clip)
    agreement = agree / samples if samples else 1.0
    return {
        "engine": engine_info.file,
        "precision": engine_info.precision,
        "plugin": engine_info.plugin,
        "samples": samples,
        "max_abs_diff_logits": worst["logits"],
        "max_abs_diff_probabilities": worst["probabilities"],
        "argmax_agreement": agreement,
        "tolerance": tolerance,
        "argmax_flips_beyond_tolerance": clear_disagree,
        "passed": worst["logits"] <= tolerance and clear_disagree == 0,
    }
