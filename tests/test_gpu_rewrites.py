"""compute.gpu_rewrites: the GPU graph's instance norms and constant adds, rewritten, compute
what the original graph computes: against numpy on a hand-built graph, against the exported
reference architecture, and never where another node reads an intermediate."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from compute.gpu_rewrites import (
    instance_norms_from_moments,
    merge_constant_adds,
    rewrite_for_gpu,
)

EPS = 1e-8


def _norm_graph(extra_output: str | None = None) -> onnx.ModelProto:
    """x [2, 4, 5, 6] -> + noise -> + bias -> instance norm (genforce's ops) -> * style -> + shift."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.normal(size=(1, 4, 5, 6)).astype(np.float32), "noise"),
             numpy_helper.from_array(rng.normal(size=(1, 4, 1, 1)).astype(np.float32), "bias"),
             numpy_helper.from_array(np.array(EPS, np.float32), "eps")]
    nodes = [helper.make_node("Add", ["x", "noise"], ["noisy"]),
             helper.make_node("Add", ["noisy", "bias"], ["h"]),
             helper.make_node("ReduceMean", ["h"], ["m"], axes=[2, 3], keepdims=1),
             helper.make_node("Sub", ["h", "m"], ["d"]),
             helper.make_node("Mul", ["d", "d"], ["q"]),
             helper.make_node("ReduceMean", ["q"], ["v"], axes=[2, 3], keepdims=1),
             helper.make_node("Add", ["v", "eps"], ["e"]),
             helper.make_node("Sqrt", ["e"], ["s"]),
             helper.make_node("Div", ["d", "s"], ["n"]),
             helper.make_node("Mul", ["n", "style"], ["styled"]),
             helper.make_node("Add", ["styled", "shift"], ["y"])]
    f = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
    outputs = [f("y", [2, 4, 5, 6])] + ([f(extra_output, None)] if extra_output else [])
    graph = helper.make_graph(nodes, "norm", [f("x", [2, 4, 5, 6]), f("style", [2, 4, 1, 1]), f("shift", [2, 4, 1, 1])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _feeds():
    rng = np.random.default_rng(5)
    # A large mean against a small spread: where mean(x^2) - mean(x)^2 loses digits.
    return {"x": (3.0 + 0.2 * rng.normal(size=(2, 4, 5, 6))).astype(np.float32),
            "style": rng.normal(size=(2, 4, 1, 1)).astype(np.float32),
            "shift": rng.normal(size=(2, 4, 1, 1)).astype(np.float32)}


def test_the_rewritten_norm_matches_numpy_and_has_fewer_full_size_ops():
    feeds = _feeds()
    model = _norm_graph()
    assert merge_constant_adds(model) == 1 and instance_norms_from_moments(model) == 1
    onnx.checker.check_model(model)
    original = _norm_graph()
    noise, bias = (numpy_helper.to_array(t).astype(np.float64) for t in original.graph.initializer[:2])
    h = feeds["x"] + noise + bias
    mean = h.mean(axis=(2, 3), keepdims=True)
    var = ((h - mean) ** 2).mean(axis=(2, 3), keepdims=True)
    expected = (h - mean) / np.sqrt(var + EPS) * feeds["style"] + feeds["shift"]
    got = _run(model, feeds)[0]
    assert np.abs(got - expected).max() < 2e-4 * np.abs(expected).max()
    assert np.abs(_run(original, feeds)[0] - expected).max() < 2e-4 * np.abs(expected).max()
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Add") == 3 and "Div" in ops and ops.count("ReduceMean") == 1 and "ReduceSumSquare" in ops
    # The full-size tensor is read by one Add, the two moments, one Sub, one Mul and the last Add.
    assert [n.op_type for n in model.graph.node if "d" in n.input] == ["Mul"]


def test_nothing_is_rewritten_where_another_node_reads_an_intermediate():
    for intermediate in ("d", "noisy"):
        model = _norm_graph(extra_output=intermediate)
        merged, norms = merge_constant_adds(model), instance_norms_from_moments(model)
        assert (merged, norms) == ((1, 0) if intermediate == "d" else (0, 1)), intermediate
        feeds = _feeds()
        np.testing.assert_allclose(_run(model, feeds)[0], _run(_norm_graph(extra_output=intermediate), feeds)[0],
                                   rtol=1e-4, atol=1e-4)


def test_the_reference_generator_gets_every_layer_rewritten_and_draws_the_same_images():
    import torch

    from export.genforce import perturb_terms
    from export.onnx_bundle import to_onnx_bytes
    from export.stylegan import GenforceConfig, ReferenceGenerator, WToImage

    torch.manual_seed(0)
    generator = ReferenceGenerator(GenforceConfig(resolution=32, label_dim=3, embed_dim=16, channels=(64, 64, 32, 32)))
    perturb_terms(generator)
    layers = generator.config.num_ws
    synthesis = to_onnx_bytes(WToImage(generator).eval(), torch.zeros(2, layers, 512), "ws", "image")
    model = onnx.load_from_string(synthesis)
    counts = merge_constant_adds(model), instance_norms_from_moments(model)
    assert counts == (layers, layers), counts  # every layer: noise + bias, and its instance norm
    ws = np.repeat(np.random.default_rng(0).standard_normal((3, 1, 512)).astype(np.float32), layers, 1)
    before = ort.InferenceSession(synthesis, providers=["CPUExecutionProvider"]).run(None, {"ws": ws})[0]
    after = ort.InferenceSession(rewrite_for_gpu(synthesis), providers=["CPUExecutionProvider"]).run(None, {"ws": ws})[0]
    assert np.abs(after - before).max() < 1e-4  # images in [-1, 1]
