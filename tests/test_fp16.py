"""fp16 graphs: the CPU-side range analysis per model family, on a few hundred real codes.

CPUs upcast fp16, so an fp16 graph that is all NaN on CUDA runs cleanly here; running the
converted graph proves nothing. What is checked instead: every tensor compute.fp16 holds in
fp16, and every fp16 reduction's running sum, stays under fp16's largest number / 4 on
real inputs, no epsilon is flushed to 0; and the plain conversion (no fp32 islands) of the
reference architecture is flagged, as it failed on an H200. And how far fp16 moves the
outputs, with fp16 emulated as a GPU rounds it (compute.fp16_check.fp16_emulation).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from compute.fp16 import FP16_MAX, fp32_nodes, to_fp16
from compute.fp16_check import emulated_session, fp16_drift, fp16_emulation, fp16_ranges
from compute.gpu_rewrites import rewrite_for_gpu
from compute.onnx_scopes import all_nodes, prepare, tensor_info
from compute.seeding import draw_codes
from compute.sessions import make_session, run_single
from export.onnx_bundle import to_onnx_bytes

CODES, BATCH = 256, 32


class Synthesis(torch.nn.Module):
    def __init__(self, generator):
        super().__init__()
        self.generator = generator

    def forward(self, ws):
        return self.generator.synthesis(ws)


def _genforce():
    from export.genforce import perturb_terms
    from export.stylegan import CodeToW, GenforceConfig, ReferenceGenerator, WToImage

    torch.manual_seed(0)
    generator = ReferenceGenerator(GenforceConfig(resolution=64, label_dim=3, embed_dim=16,
                                                  channels=(128, 128, 64, 32, 32)))
    perturb_terms(generator)
    synthesis = WToImage(generator).eval()
    layers = generator.config.num_ws
    return (to_onnx_bytes(CodeToW(generator).eval(), torch.zeros(2, 515), "z", "w"),
            to_onnx_bytes(synthesis, torch.zeros(2, layers, 512), "ws", "image"), 515, layers)


def _stylegan2():
    from export.stylegan2 import StyleGAN2, StyleGAN2Config

    torch.manual_seed(0)
    # Config-f's structure at a quarter of its widths: the ranges come from the structure
    # (demodulation, noise, toRGB skips), and the full widths cost minutes on two cores.
    config = StyleGAN2Config(resolution=64, channels=((4, 128), (8, 128), (16, 128), (32, 64), (64, 32)))
    generator = StyleGAN2(config).eval()
    layers = generator.config.num_ws
    return (to_onnx_bytes(torch.nn.Sequential(generator.style), torch.zeros(2, 512), "z", "w"),
            to_onnx_bytes(Synthesis(generator), torch.zeros(2, layers, 512), "ws", "image"), 512, layers)


def _world(name):
    def build():
        from export.synthetic import synthetic_spec

        spec = synthetic_spec(name=name)
        return (to_onnx_bytes(spec.mapping, torch.zeros(2, spec.z_dim), "z", "w"),
                to_onnx_bytes(spec.synthesis, torch.zeros(2, spec.num_ws, spec.w_dim), "ws", "image"),
                spec.z_dim, spec.num_ws)
    return build


def _feeds(mapping: bytes, graph: bytes, z_dim: int, layers: int | None):
    """Per-layer codes of CODES seeded faces, in calls of BATCH, as the synthesis takes them."""
    session = make_session(mapping, threads=2)
    name = onnx.load_from_string(graph).graph.input[0].name
    for lo in range(0, CODES, BATCH):
        w = run_single(session, draw_codes(11, np.arange(lo, lo + BATCH), z_dim))
        yield {name: np.ascontiguousarray(np.repeat(w[:, None], layers, 1)) if layers else w}


FAMILIES = {"genforce (the reference architecture)": _genforce,
            "StyleGAN2 (rosinality, NVIDIA and genforce files load into this one module)": _stylegan2}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_fp16_synthesis_stays_in_range(family):
    mapping, synthesis, z_dim, layers = FAMILIES[family]()
    synthesis = rewrite_for_gpu(synthesis)  # what a GPU actor converts (compute.engine.prepare_graphs)
    report = fp16_ranges(synthesis, _feeds(mapping, synthesis, z_dim, layers))
    assert report.fp16_tensors > 50 and report.fp32_nodes > 0, (report.fp16_tensors, report.fp32_nodes)
    assert not report.violations, report.violations[:5]
    assert 0 < report.peak < FP16_MAX / 4
    # And the converted graph draws the same images: on the CPU, which upcasts, and as a
    # GPU stores them (every fp16 value rounded, compute.fp16_check.fp16_emulation).
    feed = next(_feeds(mapping, synthesis, z_dim, layers))
    full = run_single(make_session(synthesis, 2), next(iter(feed.values())))
    half = run_single(make_session(to_fp16(synthesis), 2), next(iter(feed.values())))
    assert np.isfinite(half).all() and np.abs(half - full).max() < 0.1  # images in [-1, 1]
    # The largest pixel difference of 32 images, as a share of the pixels' spread: 5.6% for
    # genforce (35% before its constant input layer stayed float32, 6.2% before its 4x4
    # layer did), about 0.7% for StyleGAN2.
    drift = fp16_drift(synthesis, [feed])[0]
    assert 0 < drift < 0.08, drift


@pytest.mark.parametrize("name", ["synthetic", "synthetic-hard"])
def test_the_worlds_synthesis_stays_float32(name):
    """The built-in worlds draw 64-px images from maps of at most 64x64 values per sample, which
    compute.fp16 keeps in float32 (SMALL_VALUES): nothing of their synthesis is fp16, so
    their fp16 images are their float32 images."""
    mapping, synthesis, z_dim, layers = _world(name)()
    synthesis = rewrite_for_gpu(synthesis)
    report = fp16_ranges(synthesis, _feeds(mapping, synthesis, z_dim, layers))
    assert report.fp16_tensors == 0 and report.fp32_nodes > 100 and not report.violations
    assert fp16_drift(synthesis, [next(_feeds(mapping, synthesis, z_dim, layers))])[0] == 0


def test_the_plain_conversion_of_the_reference_is_flagged():
    """What the H200 showed (every image NaN) is caught here: without fp32 islands the instance
    norms' running sums and the 1e-8 epsilons do not fit fp16."""
    mapping, synthesis, z_dim, layers = _genforce()
    plain = fp16_ranges(synthesis, _feeds(mapping, synthesis, z_dim, layers), islands=set())
    assert any("running sum" in v and "ReduceMean" in v for v in plain.violations), plain.violations[:5]
    assert any(v.startswith("constant") for v in plain.violations), plain.violations[:5]


def test_scorers_and_the_editor_stay_in_range(bundle):
    from compute.editor_graph import build_editor
    from vectors.method import Method

    codes = draw_codes(3, np.arange(CODES), bundle.z_dim)
    w = run_single(make_session(bundle.graph_bytes("mapping"), 2), codes)
    images = np.concatenate([run_single(make_session(bundle.graph_bytes("synthesis"), 2), w[lo:lo + BATCH])
                             for lo in range(0, CODES, BATCH)])
    scorer = bundle.graph_bytes("scorer")
    name = onnx.load_from_string(scorer).graph.input[0].name
    report = fp16_ranges(scorer, ({name: images[lo:lo + BATCH]} for lo in range(0, CODES, BATCH)))
    assert report.fp16_tensors > 10 and not report.violations, report.violations[:5]

    method = Method()
    rng = np.random.default_rng(0)
    matrices = {g: rng.standard_normal((len(method.properties), bundle.w_dim)).astype(np.float32)
                for g in method.group_names}
    for g in matrices:
        matrices[g] /= np.linalg.norm(matrices[g], axis=1, keepdims=True)
    editor = build_editor(bundle, method, matrices, dict(bundle.manifest["group_medians"])).SerializeToString()
    inputs = [i.name for i in onnx.load_from_string(editor).graph.input]
    feeds = ({inputs[0]: w[lo:lo + BATCH],
              inputs[1]: rng.uniform(-1.8, 1.8, (BATCH, len(method.properties))).astype(np.float32),
              inputs[2]: np.full(BATCH, -1, np.int64)} for lo in range(0, CODES, BATCH))
    report = fp16_ranges(editor, feeds)
    assert report.fp16_tensors > 10 and not report.violations, report.violations[:5]

    # The base image is drawn in an If branch. Shape inference reaches into it (the outer
    # axes constants are copied there), so its synthesis and scorer keep the same float32
    # islands as the edited image's; without the copy the branch's synthesis was all fp16.
    model = onnx.load_from_string(editor)
    types, dims = prepare(model)
    islands = fp32_nodes(model, types, dims)
    in_fp16 = lambda scope: sorted(  # noqa: E731
        (n.name.split("/", 1)[1], str(dims.get(n.output[0], "?")[1:])) for n in all_nodes(model.graph)
        if n.name.startswith(scope) and n.name not in islands and types.get(n.output[0]) == onnx.TensorProto.FLOAT)
    assert len(in_fp16("base/")) > 5 and in_fp16("base/") == in_fp16("edit/")


def _rounded(values) -> np.ndarray:
    """float32 values rounded to fp16 and back, as a GPU stores them."""
    return np.asarray(values, np.float32).astype(np.float16).astype(np.float32)


def test_the_emulation_rounds_where_a_gpu_stores_fp16():
    """Checked by hand: (x + c) * k in fp16 rounds x, c and k as they are read, the sum and the
    product as they are stored; the mean after it is an fp32 island that reads the stored
    fp16 product and keeps its own result exact."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 9000)).astype(np.float32)  # over SMALL_VALUES per sample: fp16
    c, k = np.float32(0.1), np.float32(3.3)  # neither is an fp16 number
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "c"], ["a"]), helper.make_node("Mul", ["a", "k"], ["y"]),
         helper.make_node("ReduceMean", ["y"], ["r"], axes=[1], keepdims=0)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 9000])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 9000]),
         helper.make_tensor_value_info("r", TensorProto.FLOAT, [None])],
        [numpy_helper.from_array(np.array(c), "c"), numpy_helper.from_array(np.array(k), "k")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    y, r = emulated_session(fp16_emulation(model)).run(None, {"x": x})

    stored = _rounded(_rounded(_rounded(x) + _rounded(c)) * _rounded(k))
    assert np.array_equal(y, stored) and np.allclose(r, stored.mean(1), rtol=1e-6, atol=0)
    exact_y, _ = emulated_session(model).run(None, {"x": x})
    assert np.array_equal(exact_y, (x + c) * k) and not np.array_equal(y, exact_y)


def test_the_emulation_rounds_inside_if_branches_too():
    """The editor draws its base image in an If branch: the emulation rounds there as well,
    reading the outer graph's input and constant through twins of the branch's own."""
    from onnx import TensorProto, helper

    x = np.random.default_rng(1).standard_normal((3, 9000)).astype(np.float32)
    c, k = np.float32(0.1), np.float32(3.3)
    big = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, 9000])  # noqa: E731
    then = helper.make_graph([helper.make_node("Add", ["x", "c"], ["a"]), helper.make_node("Mul", ["a", "k"], ["t"])],
                             "then", [], [big("t")], [numpy_helper.from_array(np.array(k), "k")])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [], [big("e")])
    graph = helper.make_graph([helper.make_node("If", ["flag"], ["y"], then_branch=then, else_branch=other)], "g",
                              [big("x"), helper.make_tensor_value_info("flag", TensorProto.BOOL, [])], [big("y")],
                              [numpy_helper.from_array(np.array(c), "c")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    session = emulated_session(fp16_emulation(model))

    taken, = session.run(None, {"x": x, "flag": np.array(True)})
    stored = _rounded(_rounded(_rounded(x) + _rounded(c)) * _rounded(k))
    assert np.array_equal(taken, stored) and not np.array_equal(taken, (x + c) * k)
    assert np.array_equal(session.run(None, {"x": x, "flag": np.array(False)})[0], -_rounded(x))


def test_emulated_fp16_drift_of_the_sampling_graph(bundle):
    """The fused graph a GPU actor runs (compute.engine), on the built-in world: its fp16 scores,
    emulated as a GPU computes them, stay within 1% of each score's spread (0.33% here; 1.75%
    before compute.fp16 kept shared and small values in float32, and an H200 measured 2.4%
    then, when the emulation gave 1.75% and ONNX Runtime's CPU run of the fp16 graph 1.12%)."""
    from compute.engine import fuse_sampling_graph

    graphs = [bundle.graph_bytes(s) for s in ("mapping", "synthesis", "scorer")]
    fused = rewrite_for_gpu(fuse_sampling_graph(*graphs, bundle.w_dim, bundle.manifest.get("num_ws")))
    z = onnx.load_from_string(fused).graph.input[0].name
    codes = draw_codes(0, np.arange(CODES), bundle.z_dim)
    drift = fp16_drift(fused, [{z: codes[lo:lo + 64]} for lo in range(0, CODES, 64)], output=1)
    assert drift.shape == (len(bundle.score_names),) and 0.0005 < drift.max() < 0.01, drift


def test_branches_get_only_small_outer_integer_constants_for_shape_inference():
    """tensor_info copies the outer axes and shape constants a branch reads into it (ONNX's
    inference cannot see outer values), but not a large integer tensor: a hostile graph must
    not multiply one by its number of branches."""
    from onnx import TensorProto, helper

    from compute.onnx_scopes import _with_branch_constants

    big = numpy_helper.from_array(np.arange(100_000, dtype=np.int64), "table")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    branch = lambda name: helper.make_graph(  # noqa: E731
        [helper.make_node("Unsqueeze", ["x", "axes"], [f"{name}_u"]),
         helper.make_node("Gather", ["table", "i"], [f"{name}_g"])], name, [],
        [helper.make_tensor_value_info(f"{name}_u", TensorProto.FLOAT, None)])
    choose = helper.make_node("If", ["flag"], ["y"], then_branch=branch("a"), else_branch=branch("b"))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8]),
              helper.make_tensor_value_info("i", TensorProto.INT64, [3]),
              helper.make_tensor_value_info("flag", TensorProto.BOOL, [])]
    graph = helper.make_graph([choose], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [big, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    copy = _with_branch_constants(model)
    branches = [a.g for a in copy.graph.node[0].attribute]
    assert [[t.name for t in b.initializer] for b in branches] == [["axes"], ["axes"]]
    assert all(not b.initializer for b in (a.g for a in model.graph.node[0].attribute))  # the model is untouched
    _, dims = tensor_info(model)
    assert dims["a_u"] == [None, 1, 8] and dims["b_u"] == [None, 1, 8]
