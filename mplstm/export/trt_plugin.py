"""The MP-LSTM layer as a TensorRT AOT plugin (`tensorrt.plugin`, TRT >= 10.9; DESIGN.md §6).

`register()` defines plugin `mplstm::MPLSTM`, version "1": the same op type, namespace
and version as the ONNX node (`onnx_cell.OP_TYPE`, `PLUGIN_NAMESPACE`, `PLUGIN_VERSION`),
so the TensorRT ONNX parser imports every such node (it carries `plugin_namespace`) as
this plugin instead of inlining its function body. The pieces:

- register: output shapes and types from the node's inputs (Y [B, T, dirs*U],
  Y_h/Y_c [dirs, B, U], X's float type) and its attributes as plugin fields;
- autotune: fp32 or fp16 floats throughout, bool view_mask, int64 lengths; one tactic;
- aot_impl: the Triton kernel (`mplstm.export.kernel`, FUSED) compiled to PTX for the
  build GPU (`mplstm.export.ptx`), its launch grid (cdiv(B, 16), dirs), block
  (32 x num_warps), shared memory, and the int32 scalars B, T, D as symbolic
  expressions. The kernel takes the node's inputs, then those scalars, then the
  outputs: the AOT calling convention. TensorRT puts the PTX in the engine, so the
  engine runs with no Python (trtexec, the C++ runtime, the serving image);
- impl: the same kernel launched from Python, for a node without `aot=1`.

TensorRT is imported lazily: this module imports anywhere, and `register()` says what
to do where TensorRT is missing (it is not on PyPI alone; the GPU image has it).
Peephole layers (a 7th node input) are not covered by this plugin: their nodes fall back
to the function body.

Nodes with an initial state (inputs initial_h, initial_c: a live package's step model,
DESIGN.md §2) are a second plugin, `mplstm_state::MPLSTM` version "1": TensorRT fixes a
plugin's inputs, so the node names that namespace (`onnx_cell.STATE_PLUGIN_NAMESPACE`).
Both register the same kernel, with h0/c0 for the second; each decorated function is a
thin shim over one shared implementation.
"""

# No `from __future__ import annotations` here: tensorrt.plugin reads the decorated
# functions' annotations as classes (TensorDesc, int, str), not strings.
from types import ModuleType
from typing import Any

import torch

from mplstm.export import onnx_cell
from mplstm.export.kernel import BLOCK_B, KernelSpec, mplstm_layer_triton
from mplstm.export.ptx import compile_ptx

PLUGIN_ID = f"{onnx_cell.PLUGIN_NAMESPACE}::{onnx_cell.OP_TYPE}"
STATE_PLUGIN_ID = f"{onnx_cell.STATE_PLUGIN_NAMESPACE}::{onnx_cell.OP_TYPE}"
# X, view_mask, lengths, W, R, bias; then Y, Y_h, Y_c. '|' ties the float positions
# together: all FP32 or all FP16 (TRT 11 networks are strongly typed: fp16 engines come
# from an fp16 ONNX).
IO_TYPES = (
    "FP32|FP16, BOOL, INT64, FP32|FP16, FP32|FP16, FP32|FP16, FP32|FP16, FP32|FP16, FP32|FP16"
)
# The state plugin: initial_h and initial_c after bias; every position after lengths is
# one float type, so two more of them.
STATE_IO_TYPES = f"{IO_TYPES}, FP32|FP16, FP32|FP16"

_registered = False


class TensorRTUnavailableError(RuntimeError):
    """TensorRT (with `tensorrt.plugin`, >= 10.9) cannot be imported here."""


def import_tensorrt() -> tuple[ModuleType, ModuleType]:
    """(tensorrt, tensorrt.plugin), or TensorRTUnavailableError saying where to get them."""
    try:
        import tensorrt as trt
        import tensorrt.plugin as trtp
    except ImportError as e:
        raise TensorRTUnavailableError(
            f"TensorRT with tensorrt.plugin (>= 10.9) is needed for the MP-LSTM plugin ({e}). "
            "It does not install from PyPI alone: build engines in the GPU image "
            "(Dockerfile.gpu, NVIDIA's TensorRT base image)."
        ) from e
    return trt, trtp


def _torch_dtype(trt: ModuleType, dtype: Any) -> torch.dtype:
    if dtype == trt.float32:
        return torch.float32
    if dtype == trt.float16:
        return torch.float16
    raise ValueError(f"the MP-LSTM plugin runs fp32 or fp16, got {dtype}")


def _constant(expr: Any, what: str) -> int:
    if not expr.is_constant:
        raise ValueError(f"the MP-LSTM plugin needs a build-time constant {what}")
    return int(expr.constant_value())


def build_spec(
    dtype: torch.dtype,
    hidden_size: int,
    num_views: int,
    direction: str,
    recurrent_activation: str,
    peepholes: int,
    input_size: int,
    initial_state: bool = False,
) -> KernelSpec:
    """The kernel specialisation for a node's attributes (the node's contract: FUSED)."""
    if peepholes:
        raise ValueError(
            "the MP-LSTM plugin has no peephole input: a peephole layer's node runs its "
            "function body instead"
        )
    if direction not in ("forward", "bidirectional"):
        raise ValueError(f"direction must be 'forward' or 'bidirectional', got {direction!r}")
    return KernelSpec(
        hidden_size=hidden_size,
        num_views=num_views,
        dtype=dtype,
        bidirectional=direction == "bidirectional",
        fused=True,
        hard_sigmoid=recurrent_activation == "hard_sigmoid",
        initial_state=initial_state,
        input_size=input_size,
    )


def _current_arch() -> int:
    major, minor = torch.cuda.get_device_capability()
    return 10 * major + minor


def register() -> None:
    """Register `mplstm::MPLSTM` and `mplstm_state::MPLSTM` with TensorRT (idempotent)."""
    global _registered
    if _registered:
        return
    trt, trtp = import_tensorrt()
    _register_plain(trt, trtp)
    _register_state(trt, trtp)
    _registered = True


def _shapes(trtp: ModuleType, X: Any, R: Any) -> tuple[Any, Any, Any]:
    """Y [B, T, dirs*U], Y_h and Y_c [dirs, B, U], all of X's float type."""
    batch, steps = X.shape_expr[0], X.shape_expr[1]
    dirs, hidden = R.shape_expr[0], R.shape_expr[1]
    y = trtp.from_shape_expr((batch, steps, dirs * hidden), dtype=X.dtype)
    h_n = trtp.from_shape_expr((dirs, batch, hidden), dtype=X.dtype)
    c_n = trtp.from_shape_expr((dirs, batch, hidden), dtype=X.dtype)
    return y, h_n, c_n


def _aot(
    trt: ModuleType, trtp: ModuleType, X: Any, W: Any, attrs: dict[str, Any], state: bool
) -> tuple[bytes, bytes, Any, Any]:
    """The Triton kernel's PTX for the build GPU, its launch and its int32 scalars."""
    dim = _constant(W.shape_expr[2], "input size D (W is [dirs, P, D, 4U])")
    spec = build_spec(_torch_dtype(trt, X.dtype), input_size=dim, initial_state=state, **attrs)
    compiled = compile_ptx(spec, _current_arch())
    batch, steps = X.shape_expr[0], X.shape_expr[1]
    launch = trtp.KernelLaunchParams()
    launch.grid_x = trtp.cdiv(batch, BLOCK_B)
    launch.grid_y = spec.dirs
    launch.block_x = compiled.threads
    launch.shared_mem = compiled.shared
    scalars = trtp.SymIntExprs.from_tuple(
        [trtp.SymInt32(batch), trtp.SymInt32(steps), trtp.SymInt32(dim)]
    )
    return compiled.name.encode(), compiled.ptx.encode(), launch, scalars


def _run(inputs: tuple[Any, ...], outputs: tuple[Any, ...], attrs: dict[str, Any], stream: int):
    """The kernel launched from Python on TensorRT's stream (a node without `aot=1`)."""
    if attrs["peepholes"]:
        raise ValueError("the MP-LSTM plugin has no peephole input")
    with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
        ins = [torch.as_tensor(t, device="cuda") for t in inputs]
        results = mplstm_layer_triton(
            *ins[:6],
            None,
            attrs["direction"] == "bidirectional",
            attrs["recurrent_activation"],
            *ins[6:],
        )
        for out, result in zip(outputs, results, strict=True):
            torch.as_tensor(out, device="cuda").copy_(result)


def _attrs(
    hidden_size: int, num_views: int, direction: str, recurrent_activation: str, peepholes: int
) -> dict[str, Any]:
    return {
        "hidden_size": hidden_size,
        "num_views": num_views,
        "direction": direction,
        "recurrent_activation": recurrent_activation,
        "peepholes": peepholes,
    }


def _register_plain(trt: ModuleType, trtp: ModuleType) -> None:
    """`mplstm::MPLSTM`: the node's six inputs (register, autotune, aot_impl, impl)."""
    desc = trtp.TensorDesc

    @trtp.register(PLUGIN_ID)
    def _plain_shapes(
        X: desc,
        view_mask: desc,
        lengths: desc,
        W: desc,
        R: desc,
        bias: desc,
        hidden_size: int,
        num_views: int,
        direction: str,
        recurrent_activation: str,
        peepholes: int,
    ) -> tuple[desc, desc, desc]:
        return _shapes(trtp, X, R)

    @trtp.autotune(PLUGIN_ID)
    def _plain_types(X, view_mask, lengths, W, R, bias, outputs) -> list[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination(IO_TYPES)]

    @trtp.aot_impl(PLUGIN_ID)
    def _plain_aot(
        X: desc,
        view_mask: desc,
        lengths: desc,
        W: desc,
        R: desc,
        bias: desc,
        hidden_size: int,
        num_views: int,
        direction: str,
        recurrent_activation: str,
        peepholes: int,
        outputs: tuple[desc, desc, desc],
        tactic: int,
    ) -> tuple[str | bytes, str | bytes, trtp.KernelLaunchParams, trtp.SymIntExprs]:
        attrs = _attrs(hidden_size, num_views, direction, recurrent_activation, peepholes)
        return _aot(trt, trtp, X, W, attrs, state=False)

    @trtp.impl(PLUGIN_ID)
    def _plain_run(
        X: trtp.Tensor,
        view_mask: trtp.Tensor,
        lengths: trtp.Tensor,
        W: trtp.Tensor,
        R: trtp.Tensor,
        bias: trtp.Tensor,
        hidden_size: int,
        num_views: int,
        direction: str,
        recurrent_activation: str,
        peepholes: int,
        outputs: tuple[trtp.Tensor, trtp.Tensor, trtp.Tensor],
        stream: int,
    ) -> None:
        attrs = _attrs(hidden_size, num_views, direction, recurrent_activation, peepholes)
        _run((X, view_mask, lengths, W, R, bias), outputs, attrs, stream)


def _register_state(trt: ModuleType, trtp: ModuleType) -> None:
    """`mplstm_state::MPLSTM`: the six inputs, then initial_h and initial_c."""
    desc = trtp.TensorDesc

    @trtp.register(STATE_PLUGIN_ID)
    def _state_shapes(
        X: desc,
        view_mask: desc,
        lengths: desc,
        W: desc,
        R: desc,
        bias: desc,
        initial_h: desc,
        initial_c: desc,
        hidden_size: int,
        num_views: int,
        direction: str,
        recurrent_activation: str,
        peepholes: int,
    ) -> tuple[desc, desc, desc]:
        return _shapes(trtp, X, R)

    @trtp.autotune(STATE_PLUGIN_ID)
    def _state_types(
        X, view_mask, lengths, W, R, bias, initial_h, initial_c, outputs
    ) -> list[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination(STATE_IO_TYPES)]

    @trtp.aot_impl(STATE_PLUGIN_ID)
    def _state_aot(
        X: desc,
        view_mask: desc,
        lengths: desc,
        W: desc,
        R: desc,
        bias: desc,
        initial_h: desc,
        initial_c: desc,
        hidden_size: int,
        num_views: int,
        direction: str,
        recurrent_activation: str,
        peepholes: int,
        outputs: tuple[desc, desc, desc],
        tactic: int,
    ) -> tuple[str | bytes, str | bytes, trtp.KernelLaunchParams, trtp.SymIntExprs]:
        attrs = _attrs(hidden_size, num_views, direction, recurrent_activation, peepholes)
        return _aot(trt, trtp, X, W, attrs, state=True)

    @trtp.impl(STATE_PLUGIN_ID)
    def _state_run(
        X: trtp.Tensor,
        view_mask: trtp.Tensor,
        lengths: trtp.Tensor,
        W: trtp.Tensor,
        R: trtp.Tensor,
        bias: trtp.Tensor,
        initial_h: trtp.Tensor,
        initial_c: trtp.Tensor,
        hidden_size: int,
        num_views: int,
        direction: str,
        recurrent_activation: str,
        peepholes: int,
        outputs: tuple[trtp.Tensor, trtp.Tensor, trtp.Tensor],
        stream: int,
    ) -> None:
        attrs = _attrs(hidden_size, num_views, direction, recurrent_activation, peepholes)
        _run((X, view_mask, lengths, W, R, bias, initial_h, initial_c), outputs, attrs, stream)
