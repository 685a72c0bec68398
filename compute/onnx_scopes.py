"""ONNX graphs with nested scopes (an If's branches): walking every scope, preparing a
graph for a rewrite, what ONNX shape inference knows of each tensor, and inserting nodes.
compute.fp16 (the fp16 conversion), compute.fp16_check (its CPU checks) and
compute.gpu_rewrites work through these."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper


def prepare(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, list]]:
    """Constants hoisted to initializers and every node named, in place; returns the element
    type and the dims of every tensor (`tensor_info`: what to_fp16 and compute.fp16_check
    both start from)."""
    for graph in reversed(all_graphs(model.graph)):  # innermost first: rewriting copies the branches
        _hoist_constants(graph)
    _name_nodes(model.graph)
    return tensor_info(model)


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    found = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            found.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            found.extend(attr.graphs)
    return found


def all_graphs(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    """The graph and every graph nested in its nodes (If branches), outermost first."""
    graphs = [graph]
    for node in graph.node:
        for sub in subgraphs(node):
            graphs.extend(all_graphs(sub))
    return graphs


def all_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    return [node for g in all_graphs(graph) for node in g.node]


def _name_nodes(graph: onnx.GraphProto) -> None:
    """Every node gets a name unique across all scopes (islands are sets of names)."""
    seen: set[str] = set()
    for i, node in enumerate(all_nodes(graph)):
        if not node.name or node.name in seen:
            node.name = f"{node.name or node.op_type}__{i}"
        seen.add(node.name)


def _hoist_constants(graph: onnx.GraphProto) -> None:
    """Constant nodes become initializers of their graph, so one rule converts every constant."""
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


def tensor_info(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, list]]:
    """Element type, and dims (an int, or None where unknown), of every tensor in every scope
    that one ONNX shape inference can tell. data_prop follows the Shape -> Gather -> Concat
    chains that a batch-sized constant input and reshapes are built from; without it a
    synthesis' activations have no known rank. A graph it fails on is inferred without it.
    The inference sees no outer scope's constant values inside an If branch, so a branch's
    Unsqueeze or Reshape of an outer axes tensor loses every shape after it: it runs on a
    copy in which each branch holds its own copy of the integer constants it reads."""
    model = _with_branch_constants(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # the inference raises several types
        inferred = onnx.shape_inference.infer_shapes(model)
    types, dims = {}, {}
    for graph in all_graphs(inferred.graph):
        types.update({t.name: t.data_type for t in graph.initializer})
        for value in (*graph.input, *graph.output, *graph.value_info):
            if value.type.HasField("tensor_type"):
                types[value.name] = value.type.tensor_type.elem_type
                if value.type.tensor_type.HasField("shape"):
                    dims[value.name] = [d.dim_value if d.HasField("dim_value") else None
                                        for d in value.type.tensor_type.shape.dim]
    return types, dims


def _with_branch_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model`, or a copy whose branches hold the outer integer constants they read. Only
    small ones (axes, shapes: what inference needs), so a hostile graph cannot multiply a
    large tensor by its number of branches."""
    if len(all_graphs(model.graph)) == 1:
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graphs = all_graphs(copy.graph)
    integers = {t.name: t for g in graphs for t in g.initializer
                if t.data_type in (TensorProto.INT64, TensorProto.INT32) and np.prod(t.dims, dtype=np.int64) <= 16}
    for graph in graphs[1:]:
        own = {t.name for t in graph.initializer}
        reads = {name for node in graph.node for name in node.input}
        graph.initializer.extend(integers[name] for name in sorted(reads & integers.keys() - own))
    return copy


def insert_nodes(graph: onnx.GraphProto, new: dict[tuple[int, str | None], list]) -> None:
    """Each list of `new` nodes keyed (id(graph), a node's name) goes right after that node,
    one keyed (id(graph), None) first. The graph's nodes become copies (its own nodes die
    with `del`), and its inferred value_info goes, stale now. Call it innermost graph first:
    rewriting a graph copies its If nodes with their branches, which must be final by then."""
    ordered = list(new.get((id(graph), None), []))
    for node in graph.node:
        ordered.append(node)
        ordered.extend(new.get((id(graph), node.name), []))
    copies = [onnx.NodeProto() for _ in ordered]
    for copy, node in zip(copies, ordered):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)
    del graph.value_info[:]
