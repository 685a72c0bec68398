"""The editor graph: a run's directions, group lookup and edit, wired around the bundle's
own mapping, synthesis and scorer graphs (inlined with prefixed names) in one ONNX model.

    code [B, D] float32, weights [B, P] float32, group [B] int64
        -> image [B, 3, R, R], scores [B, S], group_used [B] int64

D is the run's latent (z for v6 runs, w otherwise), P its edited properties in the
method's order, S the bundle's scores. `group` indexes the method's group list; -1 asks
the graph to find it as the test stage does: the base image's grouping scores against the
run's medians, 'h' where score >= median, letters in `group_by` order. The edit is
code + weights @ directions[group], then (z) the mapping, then the synthesis (a layer
range w:A-B moves only those layers; the others keep the unedited w) and the scorer. The
base image is drawn only when some row asks for its group (an If node), so rendering with
stored groups costs one synthesis.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compute.bundle import Bundle
from vectors.errors import InputError
from vectors.method import Method

MIN_OPSET = 13  # Squeeze, Unsqueeze and ReduceSum take their axes as inputs from opset 13 on


class EditorError(InputError):
    """A run, bundle or editor directory that cannot make or serve an editor."""


def _inline(graph: onnx.GraphProto, prefix: str, wiring: dict[str, str], weights_from: str | None = None):
    """(nodes, initializers) of `graph` with every name prefixed and its inputs and outputs
    wired to the names in `wiring`. weights_from: the prefix of a copy already inlined whose
    initializers these nodes read (a second copy of one network stores its weights once)."""
    copy = onnx.GraphProto()
    copy.CopyFrom(graph)
    names = dict(wiring)
    if weights_from is not None:
        names.update({t.name: weights_from + t.name for t in copy.initializer})

    def rename(name: str) -> str:
        return names.get(name, prefix + name) if name else ""

    def walk(g: onnx.GraphProto) -> None:
        for node in g.node:
            node.name = prefix + node.name if node.name else ""
            node.input[:] = [rename(n) for n in node.input]
            node.output[:] = [rename(n) for n in node.output]
            for attribute in node.attribute:
                for sub in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs:
                    for value in list(sub.input) + list(sub.output) + list(sub.value_info) + list(sub.initializer):
                        value.name = rename(value.name)
                    walk(sub)

    walk(copy)
    for tensor in copy.initializer:
        tensor.name = rename(tensor.name)
    return list(copy.node), [] if weights_from is not None else list(copy.initializer)


def _graphs(bundle: Bundle) -> tuple[dict[str, onnx.ModelProto], int]:
    """The bundle's graphs at one common opset (at least MIN_OPSET)."""
    from onnx import version_converter

    models = {s: onnx.load_from_string(bundle.graph_bytes(s)) for s in ("mapping", "synthesis", "scorer")}
    opset = max([MIN_OPSET] + [o.version for m in models.values() for o in m.opset_import if o.domain in ("", "ai.onnx")])
    for stem, model in models.items():
        version = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        if version != opset:
            try:
                models[stem] = version_converter.convert_version(model, opset)
            except Exception as exc:  # the converter raises several types
                raise EditorError(f"the bundle's {stem} graph (opset {version}) cannot be raised to opset {opset}: "
                                  f"{str(exc).splitlines()[0]}") from exc
    return models, opset


def build_editor(bundle: Bundle, method: Method, matrices: dict[str, np.ndarray],
                 medians: dict[str, float]) -> onnx.ModelProto:
    """The editor of `method`'s directions (matrices: {group: (P, D)}) on `bundle`; medians:
    the run's median of each grouping score."""
    latent, layers = method.latent, method.layers
    dim = bundle.z_dim if latent == "z" else bundle.w_dim
    models, opset = _graphs(bundle)
    io = {s: (m.graph.input[0].name, m.graph.output[0].name) for s, m in models.items()}
    constants = {"directions": np.stack([matrices[g] for g in method.group_names]).astype(np.float32),
                 "axis1": np.array([1], np.int64), "zero": np.array(0, np.int64)}
    if bundle.num_ws is not None:
        constants["layers"] = np.array([1, bundle.num_ws, 1], np.int64)
        if layers is not None:
            mask = np.zeros((1, bundle.num_ws, 1), bool)
            mask[:, layers[0]:layers[1] + 1] = True
            constants["edited_layers"] = mask
    if method.group_by:
        constants["medians"] = np.array([medians[g] for g in method.group_by], np.float32)
        constants["grouping_scores"] = np.array([bundle.score_names.index(g) for g in method.group_by], np.int64)
        constants["letter_values"] = 2 ** np.arange(len(method.group_by) - 1, -1, -1, dtype=np.int64)
    initializers = [numpy_helper.from_array(v, f"editor/{k}") for k, v in constants.items()]
    c = {k: f"editor/{k}" for k in constants}

    def per_layer(w: str, at: str, base: str | None = None) -> list:
        """Nodes that give w [B, D] to every synthesis layer (only the edited ones, with `base`)."""
        if bundle.num_ws is None:
            return [helper.make_node("Identity", [w], [f"{at}/ws"])]
        nodes = [helper.make_node("Unsqueeze", [w, c["axis1"]], [f"{at}/w3"]),
                 helper.make_node("Expand", [f"{at}/w3", c["layers"]], [f"{at}/ws" if base is None else f"{at}/all"])]
        if base is not None:
            nodes += [helper.make_node("Unsqueeze", [base, c["axis1"]], [f"{at}/base3"]),
                      helper.make_node("Expand", [f"{at}/base3", c["layers"]], [f"{at}/base_ws"]),
                      helper.make_node("Where", [c["edited_layers"], f"{at}/all", f"{at}/base_ws"], [f"{at}/ws"])]
        return nodes

    def draw(w: str, at: str, image: str, scores: str) -> tuple[list, list]:
        """w (or z, through the mapping) -> image -> scores through the bundle's graphs. at="edit":
        the edited code (a layer range keeps the input code elsewhere); at="base": the input
        code, reading the edit copy's weights."""
        nodes, inits, base = [], [], at == "base"
        stems = [("mapping", w, f"{at}/w")] if latent == "z" else []
        for stem, source, target in stems + [("synthesis", f"{at}/ws", image), ("scorer", image, scores)]:
            if stem == "synthesis":
                nodes += per_layer(w, at, "editor/code" if layers is not None and not base else None)
            n, i = _inline(models[stem].graph, f"{at}/{stem}/", {io[stem][0]: source, io[stem][1]: target},
                           f"edit/{stem}/" if base else None)
            nodes, inits, w = nodes + n, inits + i, target
        return nodes, inits

    # Every node reads the code through one Identity: the fp16 converter casts a graph input
    # by renaming its readers, which it does not do inside the If's branch.
    nodes = [helper.make_node("Identity", ["code"], ["editor/code"]),
             helper.make_node("Less", ["group", c["zero"]], ["editor/unset"])]
    if method.group_by:  # the base image, only when some row asks for its group
        find, _ = draw("editor/code", "base", "base/image", "base/scores")
        find += [helper.make_node("Gather", ["base/scores", c["grouping_scores"]], ["base/grouping"], axis=1),
                 helper.make_node("GreaterOrEqual", ["base/grouping", c["medians"]], ["base/high"]),  # 'h'
                 helper.make_node("Not", ["base/high"], ["base/low"]),       # 'l', NaN included, as in NumPy
                 helper.make_node("Cast", ["base/low"], ["base/letters"], to=TensorProto.INT64),
                 helper.make_node("Mul", ["base/letters", c["letter_values"]], ["base/places"]),
                 helper.make_node("ReduceSum", ["base/places", c["axis1"]], ["base/found"], keepdims=0),
                 helper.make_node("Where", ["editor/unset", "base/found", "group"], ["base/group_used"])]
        group_info = lambda name: helper.make_tensor_value_info(name, TensorProto.INT64, ["batch"])  # noqa: E731
        then = helper.make_graph(find, "find_group", [], [group_info("base/group_used")])
        keep = helper.make_graph([helper.make_node("Identity", ["group"], ["keep/group_used"])], "keep_group", [],
                                 [group_info("keep/group_used")])
        # "some row asks, and there are rows": reading the code's shape also makes the If come
        # after the code's Identity when a tool sorts nodes by explicit inputs only (the fp16
        # converter does, and the branch reads the code implicitly).
        nodes += [helper.make_node("ReduceMin", ["group"], ["editor/lowest"], keepdims=0),
                  helper.make_node("Less", ["editor/lowest", c["zero"]], ["editor/some_unset"]),
                  helper.make_node("Shape", ["editor/code"], ["editor/code_shape"]),
                  helper.make_node("Gather", ["editor/code_shape", c["zero"]], ["editor/rows"], axis=0),
                  helper.make_node("Greater", ["editor/rows", c["zero"]], ["editor/has_rows"]),
                  helper.make_node("And", ["editor/has_rows", "editor/some_unset"], ["editor/any_unset"]),
                  helper.make_node("If", ["editor/any_unset"], ["group_used"], then_branch=then, else_branch=keep)]
    else:
        nodes.append(helper.make_node("Where", ["editor/unset", c["zero"], "group"], ["group_used"]))
    nodes += [helper.make_node("Gather", [c["directions"], "group_used"], ["editor/case_directions"], axis=0),
              helper.make_node("Unsqueeze", ["weights", c["axis1"]], ["editor/weights3"]),               # (B, 1, P)
              helper.make_node("MatMul", ["editor/weights3", "editor/case_directions"], ["editor/delta3"]),  # (B, 1, D)
              helper.make_node("Squeeze", ["editor/delta3", c["axis1"]], ["editor/delta"]),
              helper.make_node("Add", ["editor/code", "editor/delta"], ["editor/edited"])]
    # The scorer reads edit/image, not the graph output: a converter that casts outputs back
    # to fp32 would otherwise feed it the fp32 copy.
    edit_nodes, edit_inits = draw("editor/edited", "edit", "edit/image", "scores")
    edit_nodes.append(helper.make_node("Identity", ["edit/image"], ["image"]))
    image_dims = [d.dim_value or None for d in models["synthesis"].graph.output[0].type.tensor_type.shape.dim][1:]
    graph = helper.make_graph(
        nodes + edit_nodes, "vectorfind_editor",
        [helper.make_tensor_value_info("code", TensorProto.FLOAT, ["batch", dim]),
         helper.make_tensor_value_info("weights", TensorProto.FLOAT, ["batch", len(method.properties)]),
         helper.make_tensor_value_info("group", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", *image_dims]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", len(bundle.score_names)]),
         helper.make_tensor_value_info("group_used", TensorProto.INT64, ["batch"])],
        initializers + edit_inits)
    domains = {}
    for m in models.values():
        for o in m.opset_import:
            domain = "" if o.domain == "ai.onnx" else o.domain
            domains[domain] = max(domains.get(domain, 0), opset if domain == "" else o.version)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in domains.items()],
                              producer_name="vectorfind")
    model.ir_version = max(m.ir_version for m in models.values())
    functions = {(f.domain, f.name): f for m in models.values() for f in m.functions}
    model.functions.extend(functions.values())
    onnx.checker.check_model(model)
    return model
