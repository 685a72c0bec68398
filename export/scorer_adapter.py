"""A scorer's preprocessing as ONNX nodes in front of its graph, so that it reads the
generator's image [B, 3, R, R] in [-1, 1]: a resize, an affine map of [-1, 1] to its range,
then (x - mean) / std per channel. The resize is torch's bilinear `interpolate(antialias=True,
align_corners=False)` as two constant matrices applied with MatMul: that works at the scorer's
own opset, where ONNX Resize antialiases only from opset 18 and the version converter that
would raise an arbitrary graph to 18 fails on operators it has no adapter for.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INPUT = "image"
RESIZE = "bilinear, half-pixel centres, antialiased when downscaling (torch interpolate antialias=True weights)"
_FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}


@dataclass(frozen=True)
class ScorerAdapter:
    size: int | None = None                              # resize [B, 3, R, R] to size x size (None: keep R)
    value_range: tuple[float, float] = (-1.0, 1.0)       # map the generator's [-1, 1] to this range
    mean: tuple[float, float, float] | None = None       # then (x - mean) / std per channel
    std: tuple[float, float, float] | None = None

    def __post_init__(self):
        if self.size is not None and (isinstance(self.size, bool) or not isinstance(self.size, (int, np.integer))
                                      or self.size < 1):
            raise ValueError(f"size (--scorer-size) must be a positive number of pixels, got {self.size!r}")
        low, high = _numbers("value_range (--scorer-range)", self.value_range, 2)
        if not low < high:
            raise ValueError(f"value_range (--scorer-range) must be LOW,HIGH with LOW < HIGH, got {self.value_range!r}")
        if (self.mean is None) != (self.std is None):
            raise ValueError(f"--scorer-mean and --scorer-std go together; only --scorer-"
                             f"{'mean' if self.std is None else 'std'} is given")
        std = _numbers("std (--scorer-std)", self.std, 3)
        if std is not None and min(std) <= 0:
            raise ValueError(f"std (--scorer-std) must be 3 positive numbers, got {self.std!r}")
        for key, value in (("value_range", (low, high)), ("mean", _numbers("mean (--scorer-mean)", self.mean, 3)),
                           ("std", std)):
            object.__setattr__(self, key, value)

    @classmethod
    def from_flags(cls, size=None, value_range: str | None = None, mean: str | None = None,
                   std: str | None = None) -> ScorerAdapter:
        """An adapter from command-line strings ("224", "0,1", "0.485,0.456,0.406"); None: the default."""
        if size is not None:
            try:
                size = int(str(size).strip())
            except ValueError:
                raise ValueError(f"--scorer-size takes a positive integer (pixels), got {size!r}") from None
        return cls(size=size, value_range=_numbers("--scorer-range", value_range, 2) or (-1.0, 1.0),
                   mean=_numbers("--scorer-mean", mean, 3), std=_numbers("--scorer-std", std, 3))

    def to_dict(self) -> dict:  # as the manifest records it
        return {"size": self.size, "value_range": list(self.value_range), "mean": self.mean and list(self.mean),
                "std": self.std and list(self.std), "resize": RESIZE}

    def is_identity(self, resolution: int) -> bool:
        return self.size in (None, resolution) and self.value_range == (-1.0, 1.0) and self.mean is None

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (scale, shift), each [1, 3, 1, 1] float32: adapted = image * scale + shift."""
        (low, high), mean, std = self.value_range, np.array(self.mean or (0.0,) * 3), np.array(self.std or (1.0,) * 3)
        return tuple(v.reshape(1, 3, 1, 1).astype(np.float32) for v in ((high - low) / 2 / std,
                                                                       ((high + low) / 2 - mean) / std))


def _numbers(name: str, values, count: int) -> tuple[float, ...] | None:
    """`count` finite numbers from a sequence or a comma-separated string; None stays None."""
    if values is None:
        return None
    try:
        numbers = tuple(float(v) for v in (values.split(",") if isinstance(values, str) else values))
    except (TypeError, ValueError):
        numbers = ()
    if len(numbers) != count or not all(math.isfinite(v) for v in numbers):
        raise ValueError(f"{name} takes {count} {'comma-separated ' if isinstance(values, str) else ''}numbers, "
                         f"got {values!r}")
    return numbers


def resize_matrix(source: int, target: int) -> np.ndarray:
    """[target, source] weights of a bilinear resize along one axis: torch's antialias filter,
    a triangle stretched to one output pixel when shrinking; plain bilinear when growing."""
    scale, support = source / target, max(source / target, 1.0)
    matrix = np.zeros((target, source), np.float64)
    for i in range(target):
        centre = scale * (i + 0.5)
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), source)
        taps = np.maximum(0.0, 1.0 - np.abs((np.arange(lo, hi) - centre + 0.5) / support))
        matrix[i, lo:hi] = taps / taps.sum()
    return matrix


def _walk(graph: onnx.GraphProto):
    """The graph and every subgraph in it (subgraphs may read the outer graph's values)."""
    yield graph
    for attribute in (a for node in graph.node for a in node.attribute):
        for sub in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs:
            yield from _walk(sub)


def graph_names(graph: onnx.GraphProto) -> set[str]:
    """Every value name in the graph and its subgraphs."""
    return {name for g in _walk(graph) for name in [v.name for v in (*g.input, *g.output, *g.value_info,
            *g.initializer)] + [n for node in g.node for n in (*node.input, *node.output)]} - {""}


def rename_value(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename a value everywhere it appears, subgraphs included."""
    for g in _walk(graph):
        for value in (*g.input, *g.output, *g.value_info, *g.initializer):
            value.name = new if value.name == old else value.name
        for node in g.node:
            node.input[:] = [new if n == old else n for n in node.input]
            node.output[:] = [new if n == old else n for n in node.output]


def fresh_name(graph: onnx.GraphProto, wanted: str) -> str:
    taken, name, i = graph_names(graph), wanted, 1
    while name in taken:
        name, i = f"{wanted}_{i}", i + 1
    return name


def free_name(graph: onnx.GraphProto, name: str) -> None:
    """Free `name` for a graph input or output: any value of that name gets another."""
    if name in graph_names(graph):
        rename_value(graph, name, fresh_name(graph, name))


def adapt_scorer(scorer_onnx: bytes, adapter: ScorerAdapter, resolution: int) -> bytes:
    """The scorer graph reading the generator's image `image` [batch, 3, R, R] in [-1, 1] through
    `adapter`; its output keeps its name (unless that is `image`). ValueError where it cannot fit."""
    model = onnx.load_from_string(scorer_onnx)
    graph, size = model.graph, adapter.size or resolution
    inputs = [v for v in graph.input if v.name not in {t.name for t in graph.initializer}]  # weights may be listed
    if len(inputs) != 1:
        raise ValueError(f"the scorer graph must take one input, it takes {len(inputs)}")
    source, tensor = inputs[0], inputs[0].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim]
    if tensor.elem_type not in _FLOATS:
        raise ValueError(f"the scorer's input '{source.name}' is {TensorProto.DataType.Name(tensor.elem_type)}, "
                         f"not floating-point images")
    if tensor.HasField("shape") and (len(dims) != 4 or dims[1] not in (None, 3)):
        raise ValueError(f"the scorer's input '{source.name}' has shape {dims}, not images [B, 3, H, W]")
    if dims and any(d not in (None, size) for d in dims[2:]):
        raise ValueError(f"the scorer takes {dims[2]}x{dims[3]} images but would get {size}x{size} (from the "
                         f"generator's {resolution} px); set --scorer-size {dims[2]}")
    batch = next((d.dim_value or d.dim_param for d in tensor.shape.dim[:1]), None) or "batch"
    image = helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [batch, 3, resolution, resolution])
    free_name(graph, INPUT)  # renames `source` in place where it is the one named so
    p = fresh_name(graph, "scorer_adapter") + "/"  # the adapter's values: a prefix no scorer uses
    nodes, constants = [], {}
    if size != resolution:
        weights = resize_matrix(resolution, size).astype(np.float32)
        constants.update({p + "columns": np.ascontiguousarray(weights.T), p + "rows": weights})
        nodes += [helper.make_node("MatMul", [INPUT, p + "columns"], [p + "narrow"]),           # (B, 3, R, size)
                  helper.make_node("MatMul", [p + "rows", p + "narrow"], [p + "resized"])]  # (B, 3, size, size)
    scale, shift = adapter.affine()
    if np.any(scale != 1) or np.any(shift != 0):
        constants.update({p + "scale": scale, p + "shift": shift})
        nodes += [helper.make_node("Mul", [nodes[-1].output[0] if nodes else INPUT, p + "scale"], [p + "scaled"]),
                  helper.make_node("Add", [p + "scaled", p + "shift"], [p + "shifted"])]
    if tensor.elem_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [nodes[-1].output[0] if nodes else INPUT], [p + "cast"],
                                      to=tensor.elem_type))
    if nodes:
        nodes[-1].output[0] = source.name  # the last node writes the value the scorer's own nodes read
    else:  # nothing to adapt: the scorer reads the image as it comes
        rename_value(graph, source.name, INPUT)
    source.CopyFrom(image)
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in constants.items())
    scorer_nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + scorer_nodes)
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def adapt_numpy(images: np.ndarray, adapter: ScorerAdapter, resolution: int) -> np.ndarray:
    """The same preprocessing written independently in torch and numpy (float64), as the
    reference: images [B, 3, R, R] in [-1, 1] -> what the scorer reads, float32."""
    import torch

    images, size, (low, high) = np.asarray(images, np.float32), adapter.size or resolution, adapter.value_range
    if images.ndim != 4 or images.shape[1:] != (3, resolution, resolution):
        raise ValueError(f"images must be [B, 3, {resolution}, {resolution}], got {list(images.shape)}")
    if size != resolution:
        images = torch.nn.functional.interpolate(torch.from_numpy(images.astype(np.float64)), (size, size),
                                                 mode="bilinear", align_corners=False, antialias=size < resolution)
        images = images.numpy()
    images = (images + 1) / 2 * (high - low) + low
    if adapter.mean is not None:
        images = (images - np.array(adapter.mean).reshape(1, 3, 1, 1)) / np.array(adapter.std).reshape(1, 3, 1, 1)
    return images.astype(np.float32)
