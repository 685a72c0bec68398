"""The reference architectures (#7): checkpoint compatibility, arithmetic, export, a small run.

No real weights exist here: random-init models saved in the reference key layout stand in.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from compute.bundle import load_bundle
from compute.seeding import draw_codes
from conftest import call_job
from export.checkpoints import CheckpointError
from export.ohlora import REFERENCE_MEDIANS, load_generator, load_scorer, write_random_checkpoints
from export.property_cnn import SCORE_NAMES, SUBNETS, PropertyScoreCNN
from export.stylegan import ReferenceGenerator, StyleLayer
from export.models import ExportOptions, export_model
from vectors.method import Method

GROUP_NAMES, PROPERTIES = Method().group_names, Method().property_names
from vectors.interop import reference_csv_name, write_reference_csv

COMPAT = Path(__file__).parent / "data" / "ohlora_state_dict_shapes.json"  # copy of shared/compat/


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    return write_random_checkpoints(tmp_path_factory.mktemp("reference_ckpt"), seed=3)


@pytest.fixture(scope="session")
def reference_bundle(tmp_path_factory, checkpoints) -> Path:
    out = tmp_path_factory.mktemp("reference_bundle") / "ohlora"
    export_model("ohlora", out, ExportOptions(generator=checkpoints[0], scorer=checkpoints[1]))
    return out


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("name, model", [("generator", ReferenceGenerator), ("property_score_cnn", PropertyScoreCNN)])
def test_state_dict_keys_and_shapes_match_the_reference_exactly(name, model):
    expected = json.loads(COMPAT.read_text())[name]
    actual = {k: list(v.shape) for k, v in model().state_dict().items()}
    assert sorted(actual) == sorted(expected)
    assert actual == expected
    assert len(actual) == {"generator": 123, "property_score_cnn": 86}[name]


def test_checkpoints_load_strictly_and_wrapped(tmp_path, checkpoints):
    generator = load_generator(checkpoints[0])
    state = torch.load(checkpoints[0], weights_only=True)
    assert torch.equal(generator.mapping.dense3.weight, state["mapping.dense3.weight"])
    load_scorer(checkpoints[1])
    torch.save({"generator_smooth": state, "step": 10}, tmp_path / "wrapped.pth")  # genforce-style
    assert torch.equal(load_generator(tmp_path / "wrapped.pth").truncation.w_avg, state["truncation.w_avg"])


def test_wrong_keys_shapes_and_lod_are_one_clear_error(tmp_path, checkpoints):
    state = torch.load(checkpoints[0], weights_only=True)
    renamed = dict(state)
    renamed["mapping.dense0.w"] = renamed.pop("mapping.dense0.weight")
    del renamed["synthesis.layer13.style.bias"]
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(CheckpointError) as err:
        load_generator(tmp_path / "renamed.pth")
    message = str(err.value)
    assert "2 missing keys: mapping.dense0.weight, synthesis.layer13.style.bias" in message
    assert "1 unexpected keys: mapping.dense0.w" in message and "\n" not in message

    reshaped = dict(state, **{"synthesis.layer8.weight": torch.zeros(512, 256, 3, 3)})
    torch.save(reshaped, tmp_path / "reshaped.pth")
    with pytest.raises(CheckpointError, match=r"synthesis.layer8.weight \(512, 256, 3, 3\) != \(256, 512, 3, 3\)"):
        load_generator(tmp_path / "reshaped.pth")

    growing = dict(state, **{"synthesis.lod": torch.tensor(1.5)})
    torch.save(growing, tmp_path / "growing.pth")
    with pytest.raises(CheckpointError, match="lod = 1.5"):
        load_generator(tmp_path / "growing.pth")

    with pytest.raises(CheckpointError, match="does not fit PropertyScoreCNN"):
        load_scorer(checkpoints[0])  # the generator's file given as the scorer


def test_mapping_matches_an_independent_numpy_implementation(checkpoints, reference_bundle):
    """Label embedding, pixel norm, equalised lr with lr_mul 0.01, LeakyReLU 0.2: from the spec."""
    sd = {k: v.double().numpy() for k, v in torch.load(checkpoints[0], weights_only=True).items()}
    code = draw_codes(5, np.arange(4), 515).astype(np.float64)
    x = np.concatenate([code[:, :512], code[:, 512:] @ sd["mapping.label_weight"]], axis=1)
    x = x / np.sqrt((x ** 2).mean(axis=1, keepdims=True) + 1e-8)
    for i in range(8):
        weight = sd[f"mapping.dense{i}.weight"]
        x = x @ (weight * np.sqrt(2.0) / np.sqrt(weight.shape[1]) * 0.01).T + sd[f"mapping.dense{i}.bias"] * 0.01
        x = np.where(x >= 0, x, 0.2 * x)
    w = _run(_session(reference_bundle / "mapping.onnx"), code.astype(np.float32))
    np.testing.assert_allclose(w, x, rtol=1e-4, atol=1e-4)


def test_first_block_matches_the_spec_arithmetic(checkpoints):
    """const -> noise -> bias -> LeakyReLU 0.2 -> instance norm -> style, then the 3x3 conv layer."""
    generator = load_generator(checkpoints[0])
    sd = {k: v.double() for k, v in generator.state_dict().items()}
    w = torch.randn(2, 512, generator=torch.Generator().manual_seed(1)).double()

    def layer(x, i):
        p = f"synthesis.layer{i}."
        x = x + sd[p + "apply_noise.noise"] * sd[p + "apply_noise.weight"].view(1, -1, 1, 1)
        x = F.leaky_relu(x + sd[p + "bias"].view(1, -1, 1, 1), 0.2)
        x = (x - x.mean(dim=(2, 3), keepdim=True))
        x = x / torch.sqrt((x ** 2).mean(dim=(2, 3), keepdim=True) + 1e-8)
        style = w @ (sd[p + "style.weight"] / np.sqrt(512)).T + sd[p + "style.bias"]
        return x * (style[:, :512, None, None] + 1) + style[:, 512:, None, None]

    x0 = layer(sd["synthesis.layer0.const"].repeat(2, 1, 1, 1), 0)
    conv = F.conv2d(x0, sd["synthesis.layer1.weight"] * np.sqrt(2) / np.sqrt(9 * 512), padding=1)
    expected = layer(conv, 1)
    with torch.no_grad():
        got = generator.synthesis.layer1(generator.synthesis.layer0(None, w.float()), w.float())
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)


def test_fused_upsampling_equals_nearest_upsample_then_flipped_conv():
    """The 128/256 px layers' transposed conv is upsample + conv with the kernel mirrored."""
    torch.manual_seed(0)
    layer = StyleLayer("up", 16, 8, 128)
    assert layer.fused
    x = torch.randn(2, 16, 64, 64)
    upsampled = F.interpolate(x, scale_factor=2, mode="nearest")
    expected = F.conv2d(upsampled, (layer.weight * layer.wscale).flip([2, 3]), padding=1)
    with torch.no_grad():
        torch.testing.assert_close(layer._convolve(x), expected, rtol=1e-5, atol=1e-5)
    blur = ReferenceGenerator().synthesis.layer2.blur.kernel
    assert torch.equal(blur[5, 0], torch.tensor([[1., 2., 1.], [2., 4., 2.], [1., 2., 1.]]) / 16)


def test_scorer_crops_and_output_order():
    """Each sub-network sees only its crop; outputs come in the reference's column order."""
    torch.manual_seed(0)
    cnn = PropertyScoreCNN().eval()
    image = torch.rand(1, 3, 256, 256) * 2 - 1
    columns = {"eyes": [0], "hair_color": [1], "hair_length": [2], "mouth": [3], "pose": [4], "background": [5, 6]}
    with torch.no_grad():
        base = cnn(image)
        assert torch.equal(base, cnn(image))  # no dropout at inference
        for name, (crop, *_) in SUBNETS.items():
            (r0, r1), (c0, c1) = crop
            outside = image.clone()
            mask = torch.ones(256, 256, dtype=torch.bool)
            mask[r0:r1, c0:c1] = False
            outside[:, :, mask] = 0.5
            inside = image.clone()
            inside[:, :, r0:r1, c0:c1] = 0.5
            changed_out = (cnn(outside) != base).any(dim=0).nonzero().flatten().tolist()
            changed_in = (cnn(inside) != base).any(dim=0).nonzero().flatten().tolist()
            assert set(columns[name]) <= set(changed_in), name
            assert not set(columns[name]) & set(changed_out), name
    assert SCORE_NAMES == ("eyes", "hair_color", "hair_length", "mouth", "pose", "background_mean", "background_std")


def test_export_manifest_parity_and_dynamic_batch(checkpoints, reference_bundle):
    manifest = json.loads((reference_bundle / "manifest.json").read_text())
    assert manifest["model"] == "ohlora" and manifest["resolution"] == 256
    assert (manifest["z_dim"], manifest["label_dim"], manifest["w_dim"]) == (515, 3, 512)
    assert manifest["score_names"] == list(SCORE_NAMES)
    assert manifest["group_medians"] == REFERENCE_MEDIANS
    parity = manifest["parity"]
    assert parity["codes"] == 8 and parity["tolerance"] == 1e-3
    assert max(parity["w"], parity["image"], parity["scores"]) <= 1e-3
    assert load_bundle(reference_bundle).score_names == list(SCORE_NAMES)

    generator, cnn = load_generator(checkpoints[0]), load_scorer(checkpoints[1])
    sessions = {s: _session(reference_bundle / f"{s}.onnx") for s in ("mapping", "synthesis", "scorer")}
    for batch in (1, 3):
        code = torch.from_numpy(draw_codes(9, np.arange(batch), 515))
        with torch.no_grad():
            image = generator(code[:, :512], code[:, 512:]).clamp(-1, 1)
            scores = cnn(image)
        w = _run(sessions["mapping"], code.numpy())
        ort_image = _run(sessions["synthesis"], w)
        assert ort_image.shape == (batch, 3, 256, 256)
        np.testing.assert_allclose(ort_image, image.numpy(), atol=1e-3)
        np.testing.assert_allclose(_run(sessions["scorer"], ort_image), scores.numpy(), atol=1e-3)


@pytest.mark.parametrize("args, message", [
    (["--model", "ohlora", "--generator", "{g}"], "--model ohlora needs --scorer"),
    (["--model", "ohlora", "--generator", "{g}", "--scorer", "{g}"], "does not fit PropertyScoreCNN"),
    (["--model", "ohlora", "--generator", "{tmp}/none.pth", "--scorer", "{s}"], "weights file not found"),
    (["--model", "synthetic", "--generator", "{g}"], "--generator do(es) not apply to --model synthetic"),
    (["--model", "ohlora", "--generator", "{g}", "--scorer", "{s}", "--resolution", "128"], "--resolution do(es) not apply"),
])
def test_export_cli_bad_input(tmp_path, checkpoints, args, message):
    fill = {"g": checkpoints[0], "s": checkpoints[1], "tmp": tmp_path}
    result = call_job("jobs.export", *[a.format(**fill) for a in args], "--out", str(tmp_path / "b"))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "b").exists()


SMALL_SCHEDULE = ("--eyes=-1.2,1.2", "--mouth=-1.8,1.8", "--pose=-1.8,0.6")


def test_main_job_and_reference_vectors_run_on_the_reference_bundle(tmp_path, reference_bundle, ray_session):
    """A tiny vectorfind run, then the reference's CSV vectors imported and tested on the bundle.

    Lean on purpose (in-process, 16 samples, one global group): 256-px images cost about
    0.2 s each on two cores, and what this pins is that every stage runs on this bundle."""
    from jobs import import_vectors, test, vectorfind

    run = tmp_path / "run"
    vectorfind.main(["--bundle", str(reference_bundle), "--out", str(run), "--n", "16", "--group-by", "none",
                     "--ratio", "0.5", "--cases", "2", *SMALL_SCHEDULE])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["cases"] == 2 and summary["edits_per_case"] == 8 and (run / "report.md").is_file()
    import pyarrow.parquet as pq

    samples = pq.read_table(run / "samples.parquet")
    assert samples.num_rows == 16 and "background_std" in samples.column_names

    rng = np.random.default_rng(0)
    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    for group in GROUP_NAMES:
        for prop in PROPERTIES:
            write_reference_csv(rng.standard_normal(512), csv_dir / reference_csv_name(prop, "w", group))
    imported = tmp_path / "imported.parquet"
    import_vectors.main(["--csv-dir", str(csv_dir), "--out", str(imported), "--bundle", str(reference_bundle)])
    tested = tmp_path / "tested"
    test.main(["--run", str(tested), "--vectors", str(imported), "--bundle", str(reference_bundle), "--cases", "1",
               *SMALL_SCHEDULE])
    assert json.loads((tested / "summary.json").read_text())["cases"] == 1


def test_fp16_graphs_keep_float32_io_and_stay_close(reference_bundle):
    from compute.fp16 import SMALL_VALUES, to_fp16
    from compute.onnx_scopes import tensor_info

    data = (reference_bundle / "scorer.onnx").read_bytes()
    converted = to_fp16(data)
    half = ort.InferenceSession(converted, providers=["CPUExecutionProvider"])
    assert [i.type for i in half.get_inputs()] == ["tensor(float)"]
    assert [o.type for o in half.get_outputs()] == ["tensor(float)"]
    image = np.random.default_rng(2).uniform(-1, 1, (2, 3, 256, 256)).astype(np.float32)
    full = _run(ort.InferenceSession(data, providers=["CPUExecutionProvider"]), image)
    np.testing.assert_allclose(_run(half, image), full, atol=2e-3)
    initializers = {t.name: t.data_type for t in onnx.load_from_string(converted).graph.initializer}
    # Convolution weights in FLOAT16 where the convolution's output is large; the last small
    # convolutions and the head's products stay float32 (compute.fp16.SMALL_VALUES).
    model = onnx.load_from_string(data)
    _, dims = tensor_info(model)
    weights = {n.input[1]: int(np.prod(dims[n.output[0]][1:])) for n in model.graph.node if n.op_type == "Conv"}
    large = {w for w, values in weights.items() if values > SMALL_VALUES}
    assert large and weights.keys() - large  # both kinds, in this scorer
    assert all(initializers.get(f"{w}__fp16") == onnx.TensorProto.FLOAT16 for w in large)
    assert all(initializers.get(w) == onnx.TensorProto.FLOAT for w in weights.keys() - large)
    assert {t for name, t in initializers.items() if name not in weights and "__fp16" not in name} <= {1, 7}


def test_reference_benchmark_runs_every_path():
    import torch

    threads = torch.get_num_threads()  # the benchmark sets its own; in-process (it starts no Ray), given back
    try:
        result = call_job("jobs.benchmark.__main__", "reference", "--images", "4", "--batch-sizes", "2", "--fp16")
    finally:
        torch.set_num_threads(threads)
    assert result.returncode == 0, result.stderr[-2000:]
    for row in ("reference style", "torch eager, batch 2", "onnx runtime + io binding, batch 2",
                "onnx runtime fp16 + io binding, batch 2", "fp16 vs fp32"):
        assert row in result.stdout, result.stdout
    bad = call_job("jobs.benchmark.__main__", "reference", "--batch-sizes", "4,x")
    assert bad.returncode == 2 and "--batch-sizes" in bad.stderr
