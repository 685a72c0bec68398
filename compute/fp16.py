"""fp16 copies of ONNX graphs for GPUs: fp16 everywhere except fp32 islands where fp16 breaks.

Callers feed and read float32 exactly as with the fp32 graph. Inside, weights and
activations are float16 (half the memory traffic, tensor cores), except the parts that
overflow or underflow in fp16 on CUDA, which stay float32:

- every reduction (ReduceMean, ReduceSum, ...): CUDA sums in the output type, and an
  instance norm's mean of x^2 over 256x256 pixels passes fp16's 65,504 on its way;
- the element-wise ops whose every consumer is such a reduction (the x*x or x^2 before it:
  |x| > 256 already overflows when squared in fp16);
- every element-wise op all of whose data inputs come from the islands (the "+ 1e-8",
  Sqrt and Reciprocal after the reduction: 1e-8 is 0 in fp16, and x / sqrt(0) is NaN);
- any op with a scalar constant that fp16 cannot hold (an epsilon below fp16's smallest
  normal number, or a number above its largest).

onnxconverter-common's converter left the reductions in fp16 (NaN on CUDA; CPUs upcast, so
it looked fine there) and emitted invalid graphs when told to block them. `fp16_ranges`
in compute/fp16_check.py verifies a converted graph on the CPU, where fp16 problems hide.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FP16_MAX = 65504.0
FP16_TINY = 6.104e-05  # smallest normal fp16 number
REDUCTIONS = {"ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum",
              "ReduceLogSumExp", "ReduceProd", "GlobalAveragePool", "GlobalLpPool", "LpNormalization",
              "InstanceNormalization", "LayerNormalization", "GroupNormalization", "BatchNormalization",
              "Softmax", "LogSoftmax"}
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Reciprocal", "Abs", "Neg", "Exp", "Log", "Max", "Min",
               "Clip", "Identity", "Cast", "Unsqueeze", "Squeeze", "Reshape", "Expand", "Transpose", "Tile"}
# Inputs that the ONNX standard types as float32 whatever the data's type: never cast to fp16.
FLOAT32_INPUTS = {("Resize", 1), ("Resize", 2), ("Upsample", 1)}
# Ops that read only their input's shape or pass it on untouched: no cast in front of them.
SHAPE_ONLY = {"Shape", "Size"}
FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16)


def to_fp16(model_bytes: bytes, keep_fp32: frozenset[str] = frozenset()) -> bytes:
    """An fp16 copy of a float32 ONNX graph with fp32 inputs, outputs and islands (see above).
    `keep_fp32` names more nodes to keep in float32."""
    model = onnx.load_from_string(model_bytes)
    nested = sorted({n.op_type for n in model.graph.node if any(a.type in (onnx.AttributeProto.GRAPH,
                                                                         onnx.AttributeProto.GRAPHS)
                                                              for a in n.attribute)})
    if nested:
        raise ValueError(f"fp16 conversion does not handle graphs with subgraphs ({', '.join(nested)})")
    _hoist_constants(model.graph)
    types = _float_types(model)
    islands = fp32_nodes(model, types) | {n.name for n in model.graph.node if n.name in keep_fp32}
    _convert(model, types, islands)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _node_names(graph: onnx.GraphProto) -> None:
    for i, node in enumerate(graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"


def _hoist_constants(graph: onnx.GraphProto) -> None:
    """Constant nodes become initializers, so one rule converts every constant."""
    _node_names(graph)
    kept = []
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name in (
                "value", "value_float", "value_floats"):
            attr = node.attribute[0]
            if attr.name == "value":
                tensor = onnx.TensorProto()
                tensor.CopyFrom(attr.t)
            else:
                values = attr.f if attr.name == "value_float" else list(attr.floats)
                tensor = numpy_helper.from_array(np.asarray(values, dtype=np.float32))
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)


def _float_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor whose type ONNX shape inference can tell."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.type.HasField("tensor_type"):
            types[value.name] = value.type.tensor_type.elem_type
    return types


def _consumers(graph: onnx.GraphProto) -> dict[str, list]:
    users: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def _bad_scalar(tensor: onnx.TensorProto) -> bool:
    """A small float constant (an epsilon, a scale) that fp16 flushes to 0 or to inf."""
    if tensor.data_type != TensorProto.FLOAT or np.prod(tensor.dims, dtype=np.int64) > 16:
        return False
    values = np.abs(numpy_helper.to_array(tensor).astype(np.float64)).ravel()
    values = values[values > 0]
    return bool(len(values) and (values.min() < FP16_TINY or values.max() > FP16_MAX))


def fp32_nodes(model: onnx.ModelProto, types: dict[str, int]) -> set[str]:
    """Names of the nodes that stay float32 (the islands described in the module doc)."""
    graph = model.graph
    constants = {t.name for t in graph.initializer}
    bad_constants = {t.name for t in graph.initializer if _bad_scalar(t)}
    producer = {out: node for node in graph.node for out in node.output}
    users = _consumers(graph)
    floats = lambda names: [n for n in names if n and types.get(n) == TensorProto.FLOAT]  # noqa: E731
    outputs_of_graph = {v.name for v in graph.output}
    islands = {n.name for n in graph.node if n.op_type in REDUCTIONS or bad_constants & set(n.input)}
    changed = True
    while changed:  # a fixed point: each pass only adds nodes
        changed = False
        for node in graph.node:
            if node.name in islands or node.op_type not in ELEMENTWISE:
                continue
            data = [n for n in floats(node.input) if n not in constants]
            outputs = floats(node.output)
            readers = [u for o in outputs for u in users.get(o, [])]
            feeds_islands = bool(readers) and all(u.name in islands for u in readers) and not outputs_of_graph & set(outputs)
            fed_by_islands = bool(data) and all(n in producer and producer[n].name in islands for n in data)
            if feeds_islands or fed_by_islands:
                islands.add(node.name)
                changed = True
    return islands


def _convert(model: onnx.ModelProto, types: dict[str, int], islands: set[str]) -> None:
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    outputs = {v.name for v in graph.output}
    half: dict[str, str] = {}     # float32 tensor -> its fp16 twin
    single: dict[str, str] = {}   # fp16 tensor -> its float32 twin
    casts: list = []

    def is_float(name: str, dtype=TensorProto.FLOAT) -> bool:
        return bool(name) and types.get(name) == dtype

    # Which tensors each node produces in fp16: every float output of a node outside the islands.
    produced16 = {o for n in graph.node if n.name not in islands for o in n.output if is_float(o)}

    def as16(name: str) -> str:
        if name in produced16:
            return name
        if name not in half:
            if name in initializers:
                tensor = numpy_helper.from_array(numpy_helper.to_array(initializers[name]).astype(np.float16),
                                                 f"{name}__fp16")
                graph.initializer.append(tensor)
            else:
                casts.append(helper.make_node("Cast", [name], [f"{name}__fp16"], to=TensorProto.FLOAT16,
                                              name=f"{name}__to_fp16"))
            half[name] = f"{name}__fp16"
        return half[name]

    def as32(name: str) -> str:
        if name not in produced16:
            return name
        if name not in single:
            casts.append(helper.make_node("Cast", [name], [f"{name}__fp32"], to=TensorProto.FLOAT,
                                          name=f"{name}__to_fp32"))
            single[name] = f"{name}__fp32"
        return single[name]

    renamed_outputs = {o: f"{o}__fp16_out" for o in outputs if o in produced16}
    for node in graph.node:
        in_fp16 = node.name not in islands
        for i, name in enumerate(node.input):
            if not is_float(name) or node.op_type in SHAPE_ONLY:
                continue
            keep32 = not in_fp16 or (node.op_type, i) in FLOAT32_INPUTS
            node.input[i] = as32(name) if keep32 else as16(name)
        if in_fp16:
            for attr in node.attribute:
                if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.FLOAT16
                if node.op_type == "ConstantOfShape" and attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                    attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16)))
        # fp32 consumers of this node's fp16 outputs read them through as32; the graph's
        # outputs keep their names and types behind a final cast.
        for i, name in enumerate(node.output):
            if name in renamed_outputs:
                node.output[i] = renamed_outputs[name]
    for node in graph.node:  # consumers of renamed graph outputs inside the graph
        for i, name in enumerate(node.input):
            if name in renamed_outputs:
                node.input[i] = renamed_outputs[name]
    for casted in casts:
        if casted.input[0] in renamed_outputs:
            casted.input[0] = renamed_outputs[casted.input[0]]
    for original, inner in renamed_outputs.items():
        casts.append(helper.make_node("Cast", [inner], [original], to=TensorProto.FLOAT, name=f"{original}__out"))
    graph.node.extend(casts)
    _sort_topologically(graph)
    used = {n for node in graph.node for n in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.value_info[:]


def _sort_topologically(graph: onnx.GraphProto) -> None:
    """Casts were appended at the end; ONNX wants every node after its inputs' producers."""
    available = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ValueError("the graph has a cycle or an input nobody produces")
        ready_ids = {id(n) for n in ready}
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [n for n in pending if id(n) not in ready_ids]
    copies = [onnx.NodeProto() for _ in ordered]
    for copy, node in zip(copies, ordered):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)
