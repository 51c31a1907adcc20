"""The fp16 twin of an exported model, `model.fp16.onnx`, for TensorRT's strongly typed networks.

TensorRT 11 builds every network strongly typed: an engine computes in the types the
ONNX graph states, so an fp16 engine comes from an fp16 graph, not from a builder flag
(DESIGN.md §6). `to_fp16` rewrites a float32 model into that graph:

- float initializers, `Constant` values and tensor attributes become float16 (finite
  values beyond fp16's range are clipped to ±65504 rather than becoming inf); `Cast`
  to float becomes `Cast` to float16; value types in subgraphs (Scan/Loop/If bodies)
  and in model-local functions follow, so the `mplstm::MPLSTM` body type-checks with
  T = float16 and holds no float32 constant;
- the client-facing signature does not change: float32 graph inputs are cast to fp16
  on entry, float32 graph outputs are cast back at the end, and the uint8 `clip` and
  bool `view_mask` inputs are untouched;
- inputs that ONNX types as float32 whatever the data type (Resize's scales, ...) get a
  Cast back to float32 in front of them.

Written with onnx.helper and numpy only (onnxconverter-common is not a dependency).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, MutableSequence

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

log = logging.getLogger(__name__)

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
FP16_MAX = float(np.finfo(np.float16).max)  # 65504
# Default-domain ops whose `dtype` attribute sets the output's float type.
_DTYPE_OPS = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "EyeLike"}
)
# (op, input index) that ONNX types tensor(float) whatever the op's T: kept float32.
_FLOAT32_INPUTS = frozenset({("Resize", 2), ("Upsample", 1)})


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` computing in float16, with the same input and output types."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    names = set(_all_names(out.graph))
    _convert_graph(out.graph, names)
    for function in out.functions:
        _convert_nodes(function.node, names)
        _retype(function.value_info)
        for attr in function.attribute_proto:
            _convert_attribute(attr, names)
    _keep_float32_interface(out.graph, names)
    return out


def _all_names(graph: onnx.GraphProto) -> Iterator[str]:
    """Every value name in `graph` and its subgraphs, to keep new names unique."""
    yield from (v.name for v in (*graph.input, *graph.output, *graph.value_info))
    yield from (i.name for i in graph.initializer)
    for node in graph.node:
        yield from node.input
        yield from node.output
        for sub in _subgraphs(node):
            yield from _all_names(sub)


def _unique(base: str, names: set[str], suffix: str = "_fp16") -> str:
    name, k = f"{base}{suffix}", 0
    while name in names:
        k += 1
        name = f"{base}{suffix}_{k}"
    names.add(name)
    return name


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == AttributeProto.GRAPHS:
            yield from attr.graphs


def half_tensor(tensor: TensorProto) -> TensorProto:
    """A float32 tensor as float16 (same name), clipping finite values to fp16's range."""
    values = numpy_helper.to_array(tensor)
    finite = np.isfinite(values)
    overflow = finite & (np.abs(values) > FP16_MAX)
    if overflow.any():
        log.warning(
            "fp16: %d value(s) of %r beyond ±%g clipped", overflow.sum(), tensor.name, FP16_MAX
        )
        values = np.where(overflow, np.sign(values) * FP16_MAX, values)
    return numpy_helper.from_array(values.astype(np.float16), tensor.name)


def _convert_graph(graph: onnx.GraphProto, names: set[str], subgraph: bool = False) -> None:
    for i, init in enumerate(graph.initializer):
        if init.data_type == FLOAT:
            graph.initializer[i].CopyFrom(half_tensor(init))
    if any(s.values.data_type == FLOAT for s in graph.sparse_initializer):
        raise ValueError("fp16 conversion does not handle float sparse initializers")
    _convert_nodes(graph.node, names)
    _retype(graph.value_info)
    if subgraph:  # a body's inputs and outputs are internal values; the model's are not
        _retype(graph.input)
        _retype(graph.output)


def _convert_nodes(nodes: MutableSequence[onnx.NodeProto], names: set[str]) -> None:
    """Rewrite nodes in place; insert a Cast to float32 where an input must stay float32."""
    position = 0
    while position < len(nodes):
        node = nodes[position]
        for attr in node.attribute:
            _convert_attribute(attr, names)
        if node.domain in ("", "ai.onnx"):
            _convert_default_domain(node)
            for index in (i for op, i in _FLOAT32_INPUTS if op == node.op_type):
                if index < len(node.input) and node.input[index]:
                    cast = _unique(node.input[index], names, "_fp32")
                    nodes.insert(
                        position, helper.make_node("Cast", [node.input[index]], [cast], to=FLOAT)
                    )
                    position += 1
                    node.input[index] = cast
        position += 1


def _convert_default_domain(node: onnx.NodeProto) -> None:
    type_attr = "to" if node.op_type == "Cast" else "dtype" if node.op_type in _DTYPE_OPS else None
    for attr in node.attribute:
        if attr.name == type_attr and attr.i == FLOAT:
            attr.i = FLOAT16
    if node.op_type != "Constant":
        return
    # value_float(s) are float32 by definition: restate them as a float16 `value` tensor.
    for k, attr in enumerate(node.attribute):
        if attr.name in ("value_float", "value_floats"):
            value = attr.f if attr.name == "value_float" else list(attr.floats)
            tensor = numpy_helper.from_array(np.asarray(value, np.float16))
            node.attribute[k].CopyFrom(helper.make_attribute("value", tensor))


def _convert_attribute(attr: AttributeProto, names: set[str]) -> None:
    """Float tensors in an attribute to float16; subgraphs converted recursively."""
    if attr.type == AttributeProto.TENSOR and attr.t.data_type == FLOAT:
        attr.t.CopyFrom(half_tensor(attr.t))
    elif attr.type == AttributeProto.TENSORS:
        for t in attr.tensors:
            if t.data_type == FLOAT:
                t.CopyFrom(half_tensor(t))
    elif attr.type == AttributeProto.GRAPH:
        _convert_graph(attr.g, names, subgraph=True)
    elif attr.type == AttributeProto.GRAPHS:
        for g in attr.graphs:
            _convert_graph(g, names, subgraph=True)


def _retype(values: Iterable[onnx.ValueInfoProto]) -> None:
    for value in values:
        tensor = value.type.tensor_type
        if value.type.HasField("tensor_type") and tensor.elem_type == FLOAT:
            tensor.elem_type = FLOAT16


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Point every use of `old` (subgraphs included, as they read the outer scope) at `new`."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for sub in _subgraphs(node):
            _rename_uses(sub, old, new)


def _keep_float32_interface(graph: onnx.GraphProto, names: set[str]) -> None:
    """Cast float32 graph inputs to fp16 on entry and fp16 results back to float32 outputs."""
    entry = []
    for value in graph.input:
        if value.type.tensor_type.elem_type == FLOAT:
            half = _unique(value.name, names)
            _rename_uses(graph, value.name, half)
            entry.append(helper.make_node("Cast", [value.name], [half], to=FLOAT16))
    for node in reversed(entry):
        graph.node.insert(0, node)
    for value in graph.output:
        if value.type.tensor_type.elem_type != FLOAT:
            continue
        if not any(value.name in node.output for node in graph.node):
            raise ValueError(
                f"output {value.name!r} is not computed by a node (an input or initializer "
                "passed through): fp16 conversion cannot keep it float32"
            )
        half = _unique(value.name, names)
        _rename_uses(graph, value.name, half)
        for node in graph.node:
            for i, name in enumerate(node.output):
                if name == value.name:
                    node.output[i] = half
        for info in graph.value_info:
            if info.name == value.name:
                info.name = half
        graph.node.append(helper.make_node("Cast", [half], [value.name], to=FLOAT))
