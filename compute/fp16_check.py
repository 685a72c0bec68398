"""Would this graph survive fp16 on a GPU? A range analysis and an accuracy estimate, on the CPU.

CPUs upcast fp16 arithmetic, so an fp16 graph that is all NaN on CUDA can run cleanly on
a CPU: testing the converted graph there proves nothing. Instead run the float32 graph
on real inputs, record every intermediate tensor, and check what `compute.fp16.to_fp16`
would hold in fp16: every such tensor, every weight it converts, and every reduction left
in fp16 (its running sum: the sum of |x| over the reduced axes) must stay within fp16's
range with a margin. The fp32 islands are exempt; that is what they are for. Tensors inside
an If's branches cannot be read out of ONNX Runtime, so only the top-level graph is watched:
the editor's branch draws the base image with the same synthesis and scorer as its top level.

Ranges say an fp16 graph will not overflow; they do not say how far its outputs drift.
On a CPU ONNX Runtime computes an fp16 graph's ops in float32 and may skip the roundings
between them, so running the converted graph there understates what a GPU loses (0.5-1%
of a score's spread on the CPU, 15-22% measured on an H200). `fp16_emulation` makes a
float32 graph that rounds to fp16 exactly where a GPU's fp16 kernels store their results:
each weight an fp16 node reads, each value entering an fp16 node, each fp16 node's output.
A GPU's fp16 kernels compute in float32 and round once per output (cuDNN convolutions
accumulate in float32 for fp16 data; element-wise kernels round each result), so the
emulation's outputs differ from a GPU's only by summation order.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from compute.fp16 import FP16_MAX, REDUCTIONS, _bad_scalar, fp16_inputs, fp32_nodes, runs_in_fp16
from compute.onnx_scopes import all_graphs, insert_nodes, prepare


@dataclass
class RangeReport:
    """Largest |value| per tensor held in fp16, with the limit it was held to."""

    limit: float
    largest: dict[str, float] = field(default_factory=dict)       # fp16 tensor -> max |value|
    running_sums: dict[str, float] = field(default_factory=dict)  # fp16 reduction node -> max sum of |x|
    nonfinite: list[str] = field(default_factory=list)            # tensors NaN or inf already in fp32
    flushed: list[str] = field(default_factory=list)              # scalar constants fp16 makes 0 or inf
    fp16_tensors: int = 0
    fp32_nodes: int = 0

    @property
    def violations(self) -> list[str]:
        over = [f"{name}: {value:.4g}" for name, value in self.largest.items() if value > self.limit]
        over += [f"running sum of {name}: {value:.4g}" for name, value in self.running_sums.items()
                 if value > self.limit]
        over += [f"constant {name}: 0 or inf in fp16" for name in self.flushed]
        return over + [f"{name}: not finite in fp32" for name in self.nonfinite]

    @property
    def peak(self) -> float:
        return max([*self.largest.values(), *self.running_sums.values(), 0.0])


def fp16_ranges(model_bytes: bytes, feeds: Iterable[dict[str, np.ndarray]], margin: float = 4.0,
                islands: set[str] | None = None, threads: int = 2) -> RangeReport:
    """Run the float32 graph on each feed and check every tensor to_fp16 keeps in fp16 against
    FP16_MAX / margin. `islands` overrides the fp32 nodes (a test passes an empty set to show
    what a plain fp16 conversion would overflow)."""
    model = onnx.load_from_string(model_bytes)
    types, dims = prepare(model)
    islands = fp32_nodes(model, types, dims) if islands is None else islands
    graph = model.graph
    is_float = lambda n: bool(n) and types.get(n) == TensorProto.FLOAT  # noqa: E731
    held16, reductions = set(), {}
    for node in graph.node:
        if not runs_in_fp16(node, islands):
            continue
        held16.update(o for o in node.output if is_float(o))
        held16.update(node.input[i] for i in fp16_inputs(node, types))
        if node.op_type in REDUCTIONS and is_float(node.input[0]):
            reductions[node.name] = (node.input[0], _axes(node, model))
    report = RangeReport(limit=FP16_MAX / margin, fp16_tensors=len(held16), fp32_nodes=len(islands))
    constants = {t.name: t for t in graph.initializer}
    for name in held16 & constants.keys():
        report.largest[name] = float(np.abs(numpy_helper.to_array(constants[name])).max(initial=0.0))
        if _bad_scalar(constants[name]):
            report.flushed.append(name)

    watched = sorted((held16 - constants.keys()) | {src for src, _ in reductions.values()})
    graph_outputs = {v.name for v in graph.output}
    for name in watched:
        if name not in graph_outputs and name not in {v.name for v in graph.input}:
            graph.output.append(onnx.helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs() if o.name in set(watched)]
    for feed in feeds:
        values = dict(zip(names, session.run(names, feed)))
        for name, value in values.items():
            if not np.isfinite(value).all():
                report.nonfinite.append(name)
                continue
            if name in held16:
                report.largest[name] = max(report.largest.get(name, 0.0), float(np.abs(value).max(initial=0.0)))
        for node_name, (source, axes) in reductions.items():
            partial = np.abs(values[source]).sum(axis=axes) if axes is not None else np.abs(values[source]).sum()
            report.running_sums[node_name] = max(report.running_sums.get(node_name, 0.0), float(partial.max()))
    report.nonfinite = sorted(set(report.nonfinite))
    return report


def fp16_emulation(model_bytes: bytes, islands: set[str] | None = None) -> bytes:
    """The float32 graph rounded to fp16 wherever `compute.fp16.to_fp16` would hold a value in
    fp16 (see the module doc), as `Cast` there and back, in every scope (an If's branches
    too); run it with graph optimisations off (`emulated_session`), so no pass folds a
    rounding away."""
    model = onnx.load_from_string(model_bytes)
    types, dims = prepare(model)
    islands = fp32_nodes(model, types, dims) if islands is None else islands
    graphs = all_graphs(model.graph)
    is_float = lambda n: bool(n) and types.get(n) == TensorProto.FLOAT  # noqa: E731
    constants = {t.name: t for g in graphs for t in g.initializer}
    producer = {out: (id(g), node.name) for g in graphs for node in g.node for out in node.output}
    after: dict[tuple[int, str | None], list] = {}  # (graph, producer name; None: its start) -> nodes after it
    rounded: dict[tuple[int, str], str] = {}  # (graph, tensor) -> its fp16-rounded twin there

    def round_pair(graph: onnx.GraphProto, source: str, target: str, anchor: str | None) -> None:
        after.setdefault((id(graph), anchor), []).extend([
            helper.make_node("Cast", [source], [f"{target}__as16"], to=TensorProto.FLOAT16, name=f"{target}__to16"),
            helper.make_node("Cast", [f"{target}__as16"], [target], to=TensorProto.FLOAT, name=f"{target}__back")])

    def twin(graph: onnx.GraphProto, depth: int, name: str) -> str:
        """`name` rounded to fp16, made in the reader's graph: names are unique across scopes,
        so a branch's twin of an outer tensor carries the branch's index."""
        key = (id(graph), name)
        if key not in rounded:
            rounded[key] = f"{name}__r16" if depth == 0 else f"{name}__r16_{depth}"
            if name in constants:
                with np.errstate(over="ignore"):
                    half = numpy_helper.to_array(constants[name]).astype(np.float16).astype(np.float32)
                graph.initializer.append(numpy_helper.from_array(half, rounded[key]))
            else:  # after its producer in the same graph; first, if it comes from outside
                made_in, made_by = producer.get(name, (None, None))
                round_pair(graph, name, rounded[key], made_by if made_in == id(graph) else None)
        return rounded[key]

    stored16 = set()  # outputs of fp16 nodes: rounded where they are made, read by everyone so
    for depth, graph in enumerate(graphs):  # outermost first, so a branch finds its outer tensors classified
        for node in graph.node:
            if not runs_in_fp16(node, islands):
                continue
            for i in fp16_inputs(node, types):
                if node.input[i] not in stored16:
                    node.input[i] = twin(graph, depth, node.input[i])
            for j, out in enumerate(node.output):
                if is_float(out):
                    node.output[j] = f"{out}__fp16_raw"
                    round_pair(graph, node.output[j], out, node.name)
                    stored16.add(out)
    for graph in reversed(graphs):  # innermost first (insert_nodes)
        insert_nodes(graph, after)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def emulated_session(model_bytes: bytes, threads: int = 2) -> ort.InferenceSession:
    """A CPU session that runs a graph exactly as written (an fp16 emulation keeps its roundings)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def fp16_drift(model_bytes: bytes, feeds: Iterable[dict[str, np.ndarray]], islands: set[str] | None = None,
               output: int = 0, threads: int = 2) -> np.ndarray:
    """How far the fp16 graph's output moves from the float32 graph's on these feeds, per
    column of a 2-D output (one for any other): max |fp16 - fp32| / the column's standard
    deviation over every row of every feed, with fp16 emulated as a GPU computes it
    (`fp16_emulation`)."""
    full = emulated_session(model_bytes, threads)
    half = emulated_session(fp16_emulation(model_bytes, islands), threads)
    name = full.get_outputs()[output].name
    pairs = [(full.run([name], feed)[0], half.run([name], feed)[0]) for feed in feeds]
    exact, approx = np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])
    columns = exact.shape[-1] if exact.ndim == 2 else 1  # scores per column; images as one
    return spread_share(exact.reshape(-1, columns), approx.reshape(-1, columns))


def spread_share(exact: np.ndarray, approx: np.ndarray) -> np.ndarray:
    """max |approx - exact| per column of [rows, columns] arrays, as a share of the column's
    standard deviation in `exact` (a column that does not vary: as is)."""
    exact, approx = exact.astype(np.float64), approx.astype(np.float64)
    spread = exact.std(axis=0)
    return np.abs(approx - exact).max(axis=0) / np.where(spread > 0, spread, 1.0)


def _axes(node: onnx.NodeProto, model: onnx.ModelProto) -> tuple[int, ...] | None:
    """The axes a reduction sums over (attribute before opset 18, input after); None: all."""
    if node.op_type in ("GlobalAveragePool", "GlobalLpPool", "InstanceNormalization"):
        return (2, 3)
    if node.op_type in ("Softmax", "LogSoftmax", "LpNormalization"):
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        return (axis,)
    for attr in node.attribute:
        if attr.name == "axes":
            return tuple(attr.ints)
    if len(node.input) > 1 and node.input[1]:
        for tensor in model.graph.initializer:
            if tensor.name == node.input[1]:
                return tuple(int(a) for a in numpy_helper.to_array(tensor).ravel())
    return None
