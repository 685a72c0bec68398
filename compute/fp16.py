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
- any op with a scalar constant that fp16 rounds to 0 or to inf (an epsilon of 1e-8, a
  number above 65,504);
- every op computed from weights and shapes alone, whose values every sample shares (a
  StyleGAN's learned constant input, tiled to the batch, plus its noise and bias): the
  reference generator's first instance norm subtracts a channel mean 8-15 times the
  channel's spread there, so fp16's rounding of the constant came out 8-15 times larger;
- every op whose outputs hold at most SMALL_VALUES values per sample: the mapping network,
  the styles, a norm's moments, a scorer's head, maps no bigger than 64x64, and a
  StyleGAN's whole 4x4 layer at 512 channels (its convolution is 75 MFLOP of the 256-px
  reference's 55 GFLOP per image). Both rules cost next to nothing beside one 256-px
  activation, and cut the emulated fp16 error (compute.fp16_check) several-fold: the
  reference's scores move 1.8-3.9% of each score's spread instead of 6.8-18.6%, the
  built-in world's 0.33% instead of 1.75% (docs/gpu.md has each step).

onnxconverter-common's converter left the reductions in fp16 (NaN on CUDA; CPUs upcast, so
it looked fine there) and emitted invalid graphs when told to block them. `fp16_ranges`
in compute/fp16_check.py verifies a converted graph on the CPU, where fp16 problems hide.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compute.onnx_scopes import all_graphs, all_nodes, insert_nodes, prepare, subgraphs

FP16_MAX = 65504.0
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
SMALL_VALUES = 8192  # values per sample up to which an op stays float32 (see the module doc)


def to_fp16(model_bytes: bytes, keep_fp32: frozenset[str] = frozenset()) -> bytes:
    """An fp16 copy of a float32 ONNX graph with fp32 inputs, outputs and islands (see above).
    `keep_fp32` names more nodes to keep in float32. If nodes' branches are converted too;
    the If's own float outputs stay float32, as a graph's outputs do."""
    model = onnx.load_from_string(model_bytes)
    loops = sorted({n.op_type for n in all_nodes(model.graph) if n.op_type in ("Loop", "Scan")})
    if loops:
        raise ValueError(f"fp16 conversion does not handle {', '.join(loops)} nodes")
    types, dims = prepare(model)
    islands = fp32_nodes(model, types, dims) | {n.name for n in all_nodes(model.graph) if n.name in keep_fp32}
    _convert(model, types, islands)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def runs_in_fp16(node: onnx.NodeProto, islands: set[str]) -> bool:
    """An op to_fp16 converts: not an island, and not an If, whose branches are converted on
    their own and whose outputs stay float32."""
    return node.name not in islands and not subgraphs(node)


def fp16_inputs(node: onnx.NodeProto, types: dict[str, int]) -> list[int]:
    """Indices of the inputs an fp16 op reads in fp16: its float tensors, except those it
    reads only for their shape and those ONNX types float32 whatever the data's type."""
    return [i for i, name in enumerate(node.input) if name and types.get(name) == TensorProto.FLOAT
            and node.op_type not in SHAPE_ONLY and (node.op_type, i) not in FLOAT32_INPUTS]


def _consumers(nodes: list[onnx.NodeProto]) -> dict[str, list]:
    users: dict[str, list] = {}
    for node in nodes:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def _bad_scalar(tensor: onnx.TensorProto) -> bool:
    """A small float constant (an epsilon, a scale) that fp16 rounds to 0 or to inf. (Values
    down to ~6e-8 survive as subnormals: a bias of 3e-5 is fine, an epsilon of 1e-8 is not.)"""
    if tensor.data_type != TensorProto.FLOAT or np.prod(tensor.dims, dtype=np.int64) > 16:
        return False
    values = numpy_helper.to_array(tensor).ravel()
    with np.errstate(over="ignore"):
        half = values.astype(np.float16)
    return bool(((values != 0) & (half == 0)).any() or (np.isfinite(values) & ~np.isfinite(half)).any())


def fp32_nodes(model: onnx.ModelProto, types: dict[str, int], dims: dict[str, list]) -> set[str]:
    """Names of the nodes that stay float32 (the islands described in the module doc), in
    every scope: names are unique across an ONNX model's graphs, so one pass covers them."""
    graphs = all_graphs(model.graph)
    nodes = all_nodes(model.graph)
    initializers = [t for g in graphs for t in g.initializer]
    constants = {t.name for t in initializers}
    bad_constants = {t.name for t in initializers if _bad_scalar(t)}
    producer = {out: node for node in nodes for out in node.output}
    users = _consumers(nodes)
    floats = lambda names: [n for n in names if n and types.get(n) == TensorProto.FLOAT]  # noqa: E731
    outputs_of_graphs = {v.name for g in graphs for v in g.output}
    islands = {n.name for n in nodes if n.op_type in REDUCTIONS or bad_constants & set(n.input)}
    islands |= _shared_nodes(graphs[0], nodes) | _small_nodes(nodes, types, dims)
    changed = True
    while changed:  # a fixed point: each pass only adds nodes
        changed = False
        for node in nodes:
            if node.name in islands or node.op_type not in ELEMENTWISE:
                continue
            data = [n for n in floats(node.input) if n not in constants]
            outputs = floats(node.output)
            readers = [u for o in outputs for u in users.get(o, [])]
            feeds_islands = (bool(readers) and all(u.name in islands for u in readers)
                             and not outputs_of_graphs & set(outputs))
            fed_by_islands = bool(data) and all(n in producer and producer[n].name in islands for n in data)
            if feeds_islands or fed_by_islands:
                islands.add(node.name)
                changed = True
    return islands


def _shared_nodes(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> set[str]:
    """Nodes whose outputs are the same for every sample: computed from weights and shapes
    only. `nodes` lists the outer graph before the branches, so a branch node reading an
    outer tensor finds it classified; an If's own outputs count as per sample."""
    per_sample = {v.name for v in graph.input}
    shared = set()
    for node in nodes:
        reads = [] if node.op_type in SHAPE_ONLY else [n for n in node.input if n]
        if subgraphs(node) or node.op_type.startswith("Random") or any(n in per_sample for n in reads):
            per_sample.update(node.output)
        else:
            shared.add(node.name)
    return shared


def _small_nodes(nodes: list[onnx.NodeProto], types: dict[str, int], dims: dict[str, list]) -> set[str]:
    """Nodes whose every float output holds at most SMALL_VALUES values per sample (every
    dim after the first known to ONNX shape inference; an unknown one is not small)."""

    def small(name: str) -> bool:
        shape = dims.get(name)
        return shape is not None and None not in shape[1:] and int(np.prod(shape[1:], dtype=np.int64)) <= SMALL_VALUES

    found = set()
    for node in nodes:
        outputs = [o for o in node.output if o and types.get(o) == TensorProto.FLOAT]
        if outputs and all(small(o) for o in outputs):
            found.add(node.name)
    return found


def _convert(model: onnx.ModelProto, types: dict[str, int], islands: set[str]) -> None:
    """Rewrite every scope: fp16 nodes read fp16 copies of their float inputs, fp32 nodes
    float32 ones. A cast goes into the scope where its source is produced, right after its
    producer (or first, for a scope's inputs and initializers), so a branch may read it."""
    graphs = all_graphs(model.graph)
    home: dict[str, onnx.GraphProto] = {}     # tensor -> the graph that produces or holds it
    after: dict[str, str] = {}                # tensor -> the node that produces it
    for graph in graphs:
        for value in (*graph.input, *graph.initializer):
            home[value.name] = graph
        for node in graph.node:
            for out in node.output:
                home[out], after[out] = graph, node.name
    initializers = {t.name: t for g in graphs for t in g.initializer}
    is_float = lambda name: bool(name) and types.get(name) == TensorProto.FLOAT  # noqa: E731
    # fp16 nodes make fp16 float outputs; island nodes and If nodes (whose branches end in
    # float32 outputs) make float32 ones.
    produced16 = {o for g in graphs for n in g.node if runs_in_fp16(n, islands) for o in n.output if is_float(o)}
    casts: dict[tuple[int, str | None], list] = {}  # (graph id, producer or None) -> casts to emit
    twins: dict[tuple[str, int], str] = {}

    def twin(name: str, dtype: int) -> str:
        """`name` as `dtype`: the tensor itself, an fp16 initializer copy, or a Cast."""
        if (name in produced16) == (dtype == TensorProto.FLOAT16):
            return name
        key = (name, dtype)
        if key not in twins:
            suffix = "__fp16" if dtype == TensorProto.FLOAT16 else "__fp32"
            twins[key] = f"{name}{suffix}"
            if name in initializers and dtype == TensorProto.FLOAT16:
                array = numpy_helper.to_array(initializers[name]).astype(np.float16)
                home[name].initializer.append(numpy_helper.from_array(array, twins[key]))
            else:
                cast = helper.make_node("Cast", [name], [twins[key]], to=dtype, name=f"{name}__to{suffix}")
                casts.setdefault((id(home[name]), after.get(name)), []).append(cast)
        return twins[key]

    # Outputs of every scope keep their names and float32 type behind a final cast.
    renamed = {}
    for graph in graphs:
        for value in graph.output:
            if value.name in produced16:
                renamed[value.name] = f"{value.name}__fp16_out"
    for graph in graphs:
        for node in graph.node:
            in_fp16 = runs_in_fp16(node, islands)
            halves = set(fp16_inputs(node, types)) if in_fp16 else set()
            for i, name in enumerate(node.input):
                if is_float(name) and node.op_type not in SHAPE_ONLY:  # a Shape reads any type
                    node.input[i] = twin(name, TensorProto.FLOAT16 if i in halves else TensorProto.FLOAT)
            if in_fp16:
                for attr in node.attribute:
                    if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                        attr.i = TensorProto.FLOAT16
                    if (node.op_type == "ConstantOfShape" and attr.name == "value"
                            and attr.t.data_type == TensorProto.FLOAT):
                        attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16)))
    for original, inner in renamed.items():
        producer = after[original]
        for graph in graphs:
            for node in graph.node:
                node.output[:] = [inner if o == original else o for o in node.output]
                if node.op_type != "Cast" or node.output[0] != original:
                    node.input[:] = [inner if i == original else i for i in node.input]
        out = helper.make_node("Cast", [inner], [original], to=TensorProto.FLOAT, name=f"{original}__out")
        casts.setdefault((id(home[original]), producer), []).append(out)
        for cast in [c for cs in casts.values() for c in cs if c is not out]:
            cast.input[:] = [inner if i == original else i for i in cast.input]
    for graph in reversed(graphs):  # innermost first (insert_nodes)
        insert_nodes(graph, casts)
        used = {n for g in all_graphs(graph) for node in g.node for n in node.input}
        kept = [t for t in graph.initializer if t.name in used or t.name in {o.name for o in graph.output}]
        del graph.initializer[:]
        graph.initializer.extend(kept)
