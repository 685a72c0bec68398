"""A bundle from the user's own ONNX graphs (export/onnx_user.py) and the scorer adapter in
front of any scorer graph (export/scorer_adapter.py): the contract load_bundle reads, the
adapter against an independent torch/numpy reference, one-line errors for graphs that do
not fit, and the whole method run on such a bundle."""
from __future__ import annotations

import hashlib
import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from compute.bundle import load_bundle
from conftest import call_job
from export.onnx_bundle import ExportError
from export.onnx_user import user_bundle
from export.scorer_adapter import ScorerAdapter, adapt_numpy, adapt_scorer

Z_DIM, W_DIM, NUM_WS, RESOLUTION, SCORER_SIZE = 8, 16, 4, 32, 48
SCORES = ["brightness", "redness", "contrast"]
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
SCORER_ADAPTER = ScorerAdapter(size=SCORER_SIZE, value_range=(0.0, 1.0), **IMAGENET)


class Mapping(nn.Module):
    def __init__(self, w_dim: int = W_DIM):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(Z_DIM, 32), nn.LeakyReLU(0.2), nn.Linear(32, w_dim))

    def forward(self, z):  # (B, Z_DIM) -> (B, w_dim)
        return self.net(z)


class Synthesis(nn.Module):
    """w (B, W_DIM), or per-layer codes (B, NUM_WS, W_DIM) averaged, -> image (B, 3, H, W) in [-1, 1]."""

    def __init__(self, w_dim: int = W_DIM, height: int = RESOLUTION, width: int = RESOLUTION):
        super().__init__()
        self.size, self.to_pixels = (height, width), nn.Linear(w_dim, 3 * height * width)

    def forward(self, w):
        w = w.mean(dim=1) if w.dim() == 3 else w
        return torch.tanh(self.to_pixels(w)).reshape(-1, 3, *self.size)


class Scorer(nn.Module):
    """A scorer trained on 48-px ImageNet-normalised [0, 1] images: (B, 3, 48, 48) -> (B, 3)."""

    def __init__(self, outputs: int = len(SCORES)):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 6, 3, stride=2), nn.Linear(6 + 3, outputs)

    def forward(self, x):
        features = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return self.head(torch.cat([features, x.mean(dim=(2, 3))], dim=1))


def export(path, module: nn.Module, example: torch.Tensor, names: tuple[str, str], dynamic: bool = True):
    """A user's own export: unusual input/output names, opset 17, a dynamic batch axis unless not."""
    torch.manual_seed(0)
    module.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (example,), buffer, dynamo=False, opset_version=17,
                          input_names=[names[0]], output_names=[names[1]],
                          dynamic_axes={n: {0: "n"} for n in names} if dynamic else None)
    path.write_bytes(buffer.getvalue())
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("user_graphs")
    return {"mapping": export(root / "map.onnx", Mapping(), torch.zeros(2, Z_DIM), ("latent_code", "style_vec")),
            "synthesis": export(root / "gen.onnx", Synthesis(), torch.zeros(2, W_DIM), ("style_vec", "rgb")),
            "synthesis_wplus": export(root / "gen_wplus.onnx", Synthesis(), torch.zeros(2, NUM_WS, W_DIM),
                                      ("layer_codes", "rgb")),
            "scorer": export(root / "cls.onnx", Scorer(), torch.zeros(2, 3, SCORER_SIZE, SCORER_SIZE),
                             ("pixels", "logits"))}


@pytest.fixture(scope="module")
def user_dir(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("user_bundle") / "mine"
    manifest = user_bundle(files["mapping"], files["synthesis"], files["scorer"], SCORES, SCORER_ADAPTER, out,
                           median_samples=64)
    return out, manifest


def run_graph(data: bytes, array: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: array.astype(np.float32)})[0]


def test_user_graphs_make_a_bundle_with_the_contract_names(user_dir, files):
    out, manifest = user_dir
    bundle = load_bundle(out)
    for stem, i, o in (("mapping", "z", "w"), ("synthesis", "w", "image"), ("scorer", "image", "scores")):
        graph = onnx.load_from_string(bundle.graph_bytes(stem)).graph
        assert ([v.name for v in graph.input], [v.name for v in graph.output]) == ([i], [o]), stem
        assert manifest["files"][stem]["input"] == i and manifest["files"][stem]["output"] == o
    assert {"format_version", "model", "source_sha256", "z_dim", "label_dim", "w_dim", "resolution", "score_names",
            "group_medians", "group_medians_source", "opset", "exporter", "parity", "files"} <= set(manifest)
    assert (manifest["model"], manifest["label_dim"], bundle.z_dim, bundle.w_dim, bundle.resolution, bundle.num_ws) == \
        ("onnx", 0, Z_DIM, W_DIM, RESOLUTION, None)
    assert bundle.score_names == SCORES and set(manifest["group_medians"]) == set(SCORES)
    assert manifest["opset"] == 17
    assert manifest["scorer_adapter"] == SCORER_ADAPTER.to_dict() and manifest["exporter"] == "user ONNX graphs"
    assert manifest["parity"]["batches"] == [2, 3] and manifest["parity"]["scores"] is None
    digests = "".join(hashlib.sha256(files[s].read_bytes()).hexdigest() for s in ("mapping", "synthesis", "scorer"))
    assert manifest["source_sha256"] == hashlib.sha256(digests.encode()).hexdigest()

    # Renaming changed nothing else; the adapted scorer is the user's scorer on adapted images.
    rng = np.random.default_rng(1)
    z = rng.standard_normal((5, Z_DIM)).astype(np.float32)
    w = run_graph(files["mapping"].read_bytes(), z)
    assert np.array_equal(run_graph(bundle.graph_bytes("mapping"), z), w)
    images = run_graph(files["synthesis"].read_bytes(), w)
    assert np.array_equal(run_graph(bundle.graph_bytes("synthesis"), w), images)
    expected = run_graph(files["scorer"].read_bytes(), adapt_numpy(images, SCORER_ADAPTER, RESOLUTION))
    np.testing.assert_allclose(run_graph(bundle.graph_bytes("scorer"), images), expected, atol=1e-4, rtol=0)


def test_per_layer_synthesis_and_identity_adapter(files, tmp_path):
    """A W+ synthesis (ws [B, L, w_dim]) gives num_ws; a scorer at the generator's own size and
    range keeps its graph, with only its input renamed."""
    scorer = export(tmp_path / "plain.onnx", Scorer(), torch.zeros(2, 3, RESOLUTION, RESOLUTION), ("px", "out"))
    manifest = user_bundle(files["mapping"], files["synthesis_wplus"], scorer, SCORES, ScorerAdapter(),
                           tmp_path / "wplus", median_samples=16)
    bundle = load_bundle(tmp_path / "wplus")
    assert bundle.num_ws == NUM_WS and manifest["files"]["synthesis"]["input"] == "ws"
    original, kept = onnx.load(str(scorer)).graph, onnx.load_from_string(bundle.graph_bytes("scorer")).graph
    assert [n.op_type for n in kept.node] == [n.op_type for n in original.node]
    images = np.random.default_rng(2).uniform(-1, 1, (3, 3, RESOLUTION, RESOLUTION)).astype(np.float32)
    assert np.array_equal(run_graph(bundle.graph_bytes("scorer"), images), run_graph(scorer.read_bytes(), images))


def passthrough(size: int, kind=TensorProto.FLOAT) -> bytes:
    """A 'scorer' that returns what it reads, so the adapted graph's output is the adapter's."""
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "passthrough",
                              [helper.make_tensor_value_info("x", kind, ["n", 3, size, size])],
                              [helper.make_tensor_value_info("y", kind, ["n", 3, size, size])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.mark.parametrize("resolution, adapter", [
    (32, ScorerAdapter(value_range=(0.0, 1.0))),                                   # range map
    (32, ScorerAdapter(value_range=(0.0, 255.0))),
    (32, ScorerAdapter(value_range=(0.0, 1.0), **IMAGENET)),                       # mean/std
    (64, ScorerAdapter(size=48)),                                                  # down, antialiased
    (64, ScorerAdapter(size=20)),                                                  # down by more than 3x
    (32, ScorerAdapter(size=48)),                                                  # up
    (64, ScorerAdapter(size=24, value_range=(0.0, 1.0), **IMAGENET)),              # all of it
])
def test_adapter_matches_the_torch_reference(resolution, adapter):
    size = adapter.size or resolution
    adapted = adapt_scorer(passthrough(size), adapter, resolution)
    model = onnx.load_from_string(adapted)
    assert [v.name for v in model.graph.input] == ["image"] and [v.name for v in model.graph.output] == ["y"]
    assert model.opset_import[0].version == 17  # the scorer's own opset: no conversion
    images = np.random.default_rng(3).uniform(-1, 1, (2, 3, resolution, resolution)).astype(np.float32)
    expected = adapt_numpy(images, adapter, resolution)
    np.testing.assert_allclose(run_graph(adapted, images), expected, atol=1e-5, rtol=1e-6)
    assert run_graph(adapted, images[:1]).shape == (1, 3, size, size)  # the batch stays dynamic


def test_adapter_casts_for_a_float16_scorer():
    adapter = ScorerAdapter(size=16, value_range=(0.0, 1.0))
    adapted = adapt_scorer(passthrough(16, TensorProto.FLOAT16), adapter, 32)
    images = np.random.default_rng(4).uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(run_graph(adapted, images), adapt_numpy(images, adapter, 32), atol=1e-3, rtol=0)


def test_adapter_frees_the_name_image_inside_a_scorer():
    """A scorer whose own values use the name `image` (here its input and an inner value) keeps working."""
    for names in (("image", "inner"), ("x", "image")):
        nodes = [helper.make_node("Neg", [names[0]], [names[1]]), helper.make_node("Neg", [names[1]], ["y"])]
        graph = helper.make_graph(nodes, "named", [helper.make_tensor_value_info(names[0], TensorProto.FLOAT,
                                                                                 ["n", 3, 16, 16])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, 16, 16])])
        scorer = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
        images = np.random.default_rng(6).uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)
        for adapter in (ScorerAdapter(size=16), ScorerAdapter(size=16, value_range=(0.0, 1.0))):
            adapted = adapt_scorer(scorer, adapter, 32)
            assert [v.name for v in onnx.load_from_string(adapted).graph.input] == ["image"]
            np.testing.assert_allclose(run_graph(adapted, images), adapt_numpy(images, adapter, 32), atol=1e-5)
    kept = onnx.load_from_string(adapt_scorer(passthrough(32), ScorerAdapter(), 32)).graph  # only renamed
    assert [v.name for v in kept.input] == ["image"] and [n.op_type for n in kept.node] == ["Identity"]


def test_onnx_resize_antialias_differs_from_torch_at_the_borders():
    """Why the adapter writes the resize as matrices: ONNX Resize antialiases from opset 18 only,
    and with its default exclude_outside=0 it weights the borders otherwise than torch (whose
    weights it matches only with exclude_outside=1)."""
    images = np.random.default_rng(5).uniform(-1, 1, (2, 3, 64, 64)).astype(np.float32)
    reference = adapt_numpy(images, ScorerAdapter(size=48), 64)
    differences = {}
    for exclude in (0, 1):
        node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear", antialias=1,
                                exclude_outside=exclude)
        graph = helper.make_graph([node], "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                                  [numpy_helper.from_array(np.array([2, 3, 48, 48], np.int64), "sizes")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        differences[exclude] = np.abs(run_graph(model.SerializeToString(), images) - reference)
    assert differences[0].max() > 1e-2 and differences[0][..., 2:-2, 2:-2].max() < 1e-4  # borders only
    assert differences[1].max() < 1e-4


@pytest.mark.parametrize("flags, message", [
    ({"mean": "0.5,0.5", "std": "1,1,1"}, "--scorer-mean takes 3 comma-separated numbers, got '0.5,0.5'"),
    ({"value_range": "0;1"}, "--scorer-range takes 2 comma-separated numbers, got '0;1'"),
    ({"value_range": "1,0"}, "LOW < HIGH"),
    ({"std": "0.2,0.2,0.2"}, "--scorer-mean and --scorer-std go together; only --scorer-std is given"),
    ({"mean": "0,0,0", "std": "0.2,0,0.2"}, "std (--scorer-std) must be 3 positive numbers"),
    ({"size": "big"}, "--scorer-size takes a positive integer (pixels), got 'big'"),
    ({"size": "0"}, "size (--scorer-size) must be a positive number of pixels, got 0"),
])
def test_bad_adapter_flags(flags, message):
    with pytest.raises(ValueError) as error:
        ScorerAdapter.from_flags(**flags)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_adapter_flags_parse():
    adapter = ScorerAdapter.from_flags(size="224", value_range="0,1", mean="0.485,0.456,0.406", std="0.229,0.224,0.225")
    assert adapter == ScorerAdapter(224, (0.0, 1.0), IMAGENET["mean"], IMAGENET["std"])
    assert ScorerAdapter.from_flags().is_identity(64) and ScorerAdapter(size=64).is_identity(64)
    assert not adapter.is_identity(224)


def user_error(tmp_path, files, **changes) -> str:
    args = dict(mapping=files["mapping"], synthesis=files["synthesis"], scorer=files["scorer"], score_names=SCORES,
                adapter=SCORER_ADAPTER, out=tmp_path / "bad", median_samples=8)
    with pytest.raises(ExportError) as error:
        user_bundle(**dict(args, **changes))
    assert not (tmp_path / "bad").exists()
    assert "\n" not in str(error.value)
    return str(error.value)


def test_errors_name_the_file_and_the_problem(files, tmp_path):
    fixed = export(tmp_path / "fixed.onnx", Mapping(), torch.zeros(2, Z_DIM), ("latent_code", "style_vec"),
                   dynamic=False)
    message = user_error(tmp_path, files, mapping=fixed)
    assert "fixed.onnx" in message and "fixed batch size 2" in message and "dynamic_axes" in message
    narrow = export(tmp_path / "narrow.onnx", Mapping(w_dim=12), torch.zeros(2, Z_DIM), ("z", "w"))
    message = user_error(tmp_path, files, mapping=narrow)
    assert "narrow.onnx outputs w of 12 dims" in message and "gen.onnx takes 16" in message
    wide = export(tmp_path / "wide.onnx", Synthesis(width=24), torch.zeros(2, W_DIM), ("w", "img"))
    assert "32x24 images; the pipeline needs square images" in user_error(tmp_path, files, synthesis=wide)
    assert "3 scores per image but 2 score names" in user_error(tmp_path, files, score_names=["a", "b"])
    assert "unique; a appear(s) more than once" in user_error(tmp_path, files, score_names=["a", "b", "a"])
    assert "must be non-empty names" in user_error(tmp_path, files, score_names=["a", "", "c"])
    (tmp_path / "notes.onnx").write_text("not a graph at all\n")
    message = user_error(tmp_path, files, scorer=tmp_path / "notes.onnx")
    assert "scorer graph" in message and "notes.onnx is not an ONNX model" in message
    fixed = export(tmp_path / "fixed_cls.onnx", Scorer(), torch.zeros(1, 3, SCORER_SIZE, SCORER_SIZE), ("px", "out"),
                   dynamic=False)
    assert "fixed_cls.onnx: input 'px' has a fixed batch size 1" in user_error(tmp_path, files, scorer=fixed)
    assert "missing.onnx: no such file" in user_error(tmp_path, files, synthesis=tmp_path / "missing.onnx")
    message = user_error(tmp_path, files, adapter=ScorerAdapter(value_range=(0.0, 1.0)))
    assert "cls.onnx" in message and "takes 48x48 images but would get 32x32" in message
    assert "--scorer-size 48" in message


def test_the_method_runs_on_a_user_bundle(user_dir, ray_session, tmp_path):
    out, _ = user_dir
    run = tmp_path / "run"
    done = call_job("jobs.vectorfind", "--bundle", str(out), "--out", str(run), "--n", "400", "--cases", "6",
                    "--properties", "brightness,redness", "--group-by", "contrast")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sum of mean |corr|" in done.stdout
    for name in ("samples.parquet", "vectors.parquet", "cases.parquet", "summary.json", "report.md"):
        assert (run / name).is_file() or name == "samples.parquet" and (run / name).is_dir(), name
