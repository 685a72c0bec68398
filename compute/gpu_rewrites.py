"""Exact rewrites that cut a GPU graph's memory traffic, applied before fp16 conversion.

Measured with CUPTI on an H200 (docs/gpu.md), the reference generator's fp16 graph spends
about 7% of its GPU time in convolution kernels and most of the rest in element-wise
passes over full activation tensors: at 256 px one pass over a 128-image call moves about
a gigabyte. So these rewrites remove passes; each computes the same function up to float
rounding order, and none changes a weight.

- **Constant adds merged**: `(x + c1) + c2` with constant c1, c2 (StyleGAN's fixed noise,
  then its bias) becomes `x + (c1 + c2)`.
- **Instance norm from its moments**: `d = x - mean(x); d / sqrt(mean(d*d) + eps)` reads
  x for the mean, writes d, casts it to float32, squares it and reads it again. Its
  variance is now `mean(x^2) - mean(x)^2` from one float32 copy of x (ReduceSumSquare
  squares inside its kernel), and a following per-sample, per-channel scale (StyleGAN's
  style) is folded into `1/sqrt(var + eps)` on the small [N, C, 1, 1] tensor, so the full
  tensor sees one Sub, one Mul and the following Add instead of Sub, Cast, Mul, Div and
  Mul. Both moments stay float32 (compute.fp16 keeps reductions and what is computed only
  from them in float32), so the cancellation in `mean(x^2) - mean(x)^2` costs float32
  precision, not fp16's; a Max with 0 guards its sign.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compute.onnx_scopes import tensor_info


def _constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Initializers by the names nodes read them under, including through the Identity nodes
    torch's exporter puts in front of initializers it deduplicated."""
    found = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            found[node.output[0]] = node.attribute[0].t
        elif node.op_type == "Identity" and node.input[0] in found:
            found[node.output[0]] = found[node.input[0]]
    return found


def _users(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    for value in graph.output:  # a graph output counts as a reader nothing may take away
        users.setdefault(value.name, []).append(None)
    return users


def merge_constant_adds(model: onnx.ModelProto) -> int:
    """`(x + c1) + c2` -> `x + (c1 + c2)` in the main graph, in place; returns how many."""
    graph = model.graph
    constants, users = _constants(graph), _users(graph)
    producer = {out: node for node in graph.node for out in node.output}
    dropped, merged = set(), 0
    for node in graph.node:
        if node.op_type != "Add" or id(node) in dropped:
            continue
        inner_name, c2 = (node.input[0], node.input[1]) if node.input[1] in constants else (node.input[1], node.input[0])
        inner = producer.get(inner_name)
        if c2 not in constants or inner is None or inner.op_type != "Add" or len(users.get(inner_name, [])) != 1:
            continue
        x, c1 = (inner.input[0], inner.input[1]) if inner.input[1] in constants else (inner.input[1], inner.input[0])
        if c1 not in constants or x in constants:
            continue
        total = numpy_helper.to_array(constants[c1]) + numpy_helper.to_array(constants[c2])
        name = f"{node.name or node.output[0]}/merged_constant"
        graph.initializer.append(numpy_helper.from_array(total.astype(np.float32), name))
        node.input[0], node.input[1] = x, name
        dropped.add(id(inner))
        merged += 1
    kept = [n for n in graph.node if id(n) not in dropped]
    del graph.node[:]
    graph.node.extend(kept)
    return merged


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _spatial_mean(node, constants, rank: int) -> bool:
    """A ReduceMean over the last two axes of a rank-4 tensor, keeping them."""
    if node is None or node.op_type != "ReduceMean" or _attr(node, "keepdims", 1) != 1 or rank != 4:
        return False
    axes = _attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1] in constants:
        axes = numpy_helper.to_array(constants[node.input[1]]).tolist()
    return axes is not None and sorted(a % rank for a in axes) == [2, 3]


def instance_norms_from_moments(model: onnx.ModelProto) -> int:
    """Rewrite `(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps)` [* s] in the main graph
    (see the module doc), in place; returns how many."""
    graph = model.graph
    constants, users, shapes = _constants(graph), _users(graph), tensor_info(model)[1]
    producer = {out: node for node in graph.node for out in node.output}
    before: dict[int, list] = {}   # id(node) -> new nodes emitted just before it
    instead: dict[int, list] = {}  # id(node) -> the nodes that replace it ([] drops it)
    done = 0
    for div in graph.node:
        if div.op_type != "Div":
            continue
        d_name, s_name = div.input
        sqrt = producer.get(s_name)
        eps_add = producer.get(sqrt.input[0]) if sqrt is not None and sqrt.op_type == "Sqrt" else None
        if eps_add is None or eps_add.op_type != "Add":
            continue
        v_name = next((i for i in eps_add.input if i not in constants), None)
        if v_name is None or not any(i in constants for i in eps_add.input):
            continue
        var_mean, sub = producer.get(v_name), producer.get(d_name)
        square = producer.get(var_mean.input[0]) if var_mean is not None else None
        if (sub is None or sub.op_type != "Sub" or square is None or square.op_type != "Mul"
                or list(square.input) != [d_name, d_name]):
            continue
        x, m_name = sub.input
        mean = producer.get(m_name)
        x_shape = shapes.get(x, [])
        if (mean is None or mean.input[0] != x or len(x_shape) != 4 or None in x_shape[2:]
                or not _spatial_mean(mean, constants, 4) or not _spatial_mean(var_mean, constants, 4)):
            continue
        only = lambda name, nodes: {id(u) for u in users.get(name, [])} <= {id(n) for n in nodes}
        if not (only(m_name, [sub]) and only(d_name, [square, div]) and only(square.output[0], [var_mean])
                and only(v_name, [eps_add]) and only(eps_add.output[0], [sqrt]) and only(s_name, [div])):
            continue
        p = f"{div.name or div.output[0]}/moments"
        graph.initializer.extend([
            numpy_helper.from_array(np.array(1.0 / (x_shape[2] * x_shape[3]), np.float32), f"{p}/inv_count"),
            numpy_helper.from_array(np.array(0.0, np.float32), f"{p}/zero")])
        axes_kw = {"axes": _attr(mean, "axes")} if _attr(mean, "axes") is not None else {}
        squares = helper.make_node("ReduceSumSquare", [x, *mean.input[1:]], [f"{p}/sum_sq"], name=f"{p}/SumSq",
                                   keepdims=1, **axes_kw)
        before[id(eps_add)] = [
            squares,
            helper.make_node("Mul", [f"{p}/sum_sq", f"{p}/inv_count"], [f"{p}/mean_sq"], name=f"{p}/MeanSq"),
            helper.make_node("Mul", [m_name, m_name], [f"{p}/sq_mean"], name=f"{p}/SqMean"),
            helper.make_node("Sub", [f"{p}/mean_sq", f"{p}/sq_mean"], [f"{p}/var_raw"], name=f"{p}/Var"),
            helper.make_node("Max", [f"{p}/var_raw", f"{p}/zero"], [v_name], name=f"{p}/VarNonNeg")]
        instead[id(square)], instead[id(var_mean)] = [], []
        readers = users.get(div.output[0], [])
        scale = readers[0] if len(readers) == 1 and readers[0] is not None and readers[0].op_type == "Mul" else None
        s_input = next((i for i in scale.input if i != div.output[0]), None) if scale is not None else None
        s_shape = shapes.get(s_input, []) if s_input else []
        if scale is not None and len(s_shape) == 4 and s_shape[2:] == [1, 1] and div.output[0] in scale.input:
            instead[id(div)] = []
            instead[id(scale)] = [
                helper.make_node("Div", [s_input, s_name], [f"{p}/gain"], name=f"{p}/Gain"),
                helper.make_node("Mul", [d_name, f"{p}/gain"], [scale.output[0]], name=f"{p}/Scaled")]
        done += 1
    nodes = []
    for node in graph.node:
        nodes.extend(before.get(id(node), []))
        nodes.extend(instead.get(id(node), [node]))
    del graph.node[:]
    graph.node.extend(nodes)
    return done


def rewrite_for_gpu(model_bytes: bytes) -> bytes:
    """Both rewrites on a float32 graph; run before compute.fp16.to_fp16."""
    model = onnx.load_from_string(model_bytes)
    merge_constant_adds(model)
    instance_norms_from_moments(model)
    onnx.checker.check_model(model)
    return model.SerializeToString()
