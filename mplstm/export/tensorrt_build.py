"""Build TensorRT engines for a model package (DESIGN.md §5–§6); GPU host with TensorRT only.

`add_engine` (`mplstm export --tensorrt`) builds one for this host's GPU into a
package, beside model.onnx, and records it (with its sha256) in the manifest.
`build_engine` parses a package's ONNX model with the MP-LSTM plugin registered, so
every `mplstm::MPLSTM` node becomes the AOT plugin layer (its Triton kernel compiled
into the engine) instead of the node's inlined function body, builds a strongly typed
network (TRT 11: the precision is the ONNX model's, so fp16 engines come from
`model.fp16.onnx`) with one optimization profile over batch 1..max and the package's
T range, reuses a timing cache, and says which path the recurrent cell took.

Engine names, the host's GPU, engine selection and the runner are torch-free and
shared with serving: `mplstm.inference.tensorrt`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mplstm.core.package import (
    ONNX_FP16_NAME,
    ONNX_NAME,
    EngineInfo,
    ModelPackage,
    write_package_manifest,
)
from mplstm.inference.tensorrt import current_gpu, engine_file_name, tensorrt_version

if TYPE_CHECKING:  # onnx is loaded only where a model is read: the service needs none
    import onnx

log = logging.getLogger(__name__)

BATCH_DIMS = ("batch", "B")  # symbolic dims (dim_param) of the models' inputs
TIME_DIMS = ("time", "T")
# Network layer types of an inlined recurrence (Scan → TensorRT loop; LSTM op likewise).
_LOOP_LAYERS = frozenset({"LOOP_OUTPUT", "RECURRENCE", "TRIP_LIMIT", "ITERATOR"})
_PLUGIN_LAYERS = frozenset({"PLUGIN", "PLUGIN_V2", "PLUGIN_V3"})


class EngineBuildError(RuntimeError):
    """TensorRT could not parse the ONNX model or build the engine."""


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
    _check_precision(model, onnx_path, precision)
    shapes = profile_shapes(onnx_input_dims(model), max_batch, frames_range, frames_opt, batch_opt)
    trt, _ = trt_plugin.import_tensorrt()  # after the checks: they need no TensorRT
    if use_plugin:
        trt_plugin.register()
    nodes = mplstm_node_count(model)
    plugin_nodes = prepare_for_parser(model, use_plugin)

    parsed = _parse_network(trt, model, onnx_path, nodes, echo)
    if use_plugin and plugin_nodes and not parsed.path.plugin:
        log.warning("the plugin was registered but the parser inlined the function body")
    config = _builder_config(trt, parsed.builder, shapes, timing_cache, progress, echo)

    gpu_arch, gpu_name = current_gpu()
    plan, seconds = _build_plan(parsed, config, onnx_path)
    version = str(trt.__version__)
    out_dir.mkdir(parents=True, exist_ok=True)
    engine_path = out_dir / engine_file_name(gpu_arch, version, precision)
    _write_plan_and_cache(engine_path, plan, timing_cache, config)
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
        plugin=parsed.path.plugin,
        max_batch=max_batch,
        frames_range=(int(frames_range[0]), int(frames_range[1])),
    )


def _check_precision(model: onnx.ModelProto, onnx_path: Path, precision: str) -> None:
    """Refuse an engine precision other than the model's (TensorRT networks are typed)."""
    if onnx_precision(model) != precision:
        raise EngineBuildError(
            f"{onnx_path} holds {onnx_precision(model)} weights but a {precision} engine was "
            "asked for: TensorRT networks are strongly typed, so build fp16 engines from "
            "model.fp16.onnx (mplstm export --fp16) and fp32 engines from model.onnx"
        )


@dataclass(frozen=True)
class _ParsedNetwork:
    """A parsed network and the TensorRT objects behind it.

    Held together until the engine is built: the ONNX parser owns the network's weights.
    """

    logger: Any
    builder: Any
    network: Any
    parser: Any
    path: CellPath


def _parse_network(
    trt: Any, model: onnx.ModelProto, onnx_path: Path, nodes: int, echo: Callable[[str], None]
) -> _ParsedNetwork:
    """Parse the (prepared) model into a strongly typed network; say which path the cell took."""
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
    return _ParsedNetwork(logger=logger, builder=builder, network=network, parser=parser, path=path)


def _builder_config(
    trt: Any,
    builder: Any,
    shapes: dict[str, tuple[Shape, Shape, Shape]],
    timing_cache: Path | None,
    progress: bool,
    echo: Callable[[str], None],
) -> Any:
    """The builder config: no TF32, one optimization profile, the timing cache, progress."""
    config = builder.create_builder_config()
    if hasattr(trt.BuilderFlag, "TF32"):
        # fp32 means fp32: TF32 rounds matmul inputs to 10 mantissa bits, which the
        # fp32 engine's parity tolerance (mplstm.inference.parity) is not meant to absorb.
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
    return config


def _build_plan(parsed: _ParsedNetwork, config: Any, onnx_path: Path) -> tuple[Any, float]:
    """The serialized engine and the seconds the build took."""
    started = time.perf_counter()
    plan = parsed.builder.build_serialized_network(parsed.network, config)
    if plan is None:
        raise EngineBuildError(f"TensorRT could not build an engine from {onnx_path} (see log)")
    return plan, time.perf_counter() - started


def _write_plan_and_cache(
    engine_path: Path, plan: Any, timing_cache: Path | None, config: Any
) -> None:
    """Write the engine, then (when one is kept) the config's updated timing cache."""
    _write_atomic(engine_path, bytes(plan))
    if timing_cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def add_engine(
    package: ModelPackage,
    *,
    fp16: bool = True,
    max_batch: int | None = None,
    use_plugin: bool = True,
    log: Callable[[str], None] = print,
) -> EngineInfo:
    """Build an engine for this host's GPU into `package` and record it in the manifest."""
    manifest = package.manifest
    source = ONNX_FP16_NAME if fp16 else ONNX_NAME
    arch, _ = current_gpu()
    info = build_engine(
        package.file(source),
        package.path,
        fp16=fp16,
        max_batch=max_batch or manifest.max_batch,
        frames_range=manifest.frames_range,
        frames_opt=manifest.preprocess.frames,
        timing_cache=default_timing_cache(arch, tensorrt_version()),
        use_plugin=use_plugin,
        progress=True,
        echo=log,
    )
    manifest.engines = (*(e for e in manifest.engines if e.file != info.file), info)
    write_package_manifest(package.path, manifest)
    log(f"{info.file}: {'plugin' if info.plugin else 'inlined function body'} for the cell")
    return info
