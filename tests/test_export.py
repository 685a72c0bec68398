"""`jobs.export`: the bundle contract, parity, atomicity and bad input."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from compute.bundle import BundleError, load_bundle
from conftest import call_job
from export.onnx_bundle import ExportError, export_bundle
from export.synthetic import synthetic_spec
from export.models import ExportOptions, export_model


def test_bundle_files_and_manifest(bundle_dir):
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest["model"] == "synthetic"
    assert (manifest["z_dim"], manifest["label_dim"], manifest["w_dim"]) == (515, 3, 512)
    assert manifest["resolution"] == 64
    assert manifest["score_names"] == ["eyes", "mouth", "pose", "hair_color", "hair_length", "background_mean"]
    assert set(manifest["group_medians"]) == {"hair_color", "hair_length", "background_mean"}
    assert all(abs(v) < 0.3 for v in manifest["group_medians"].values())  # standardised scores
    assert len(manifest["source_sha256"]) == 64 and manifest["opset"] == 17
    parity = manifest["parity"]
    assert parity["codes"] == 64
    assert max(parity["w"], parity["image"], parity["scores"]) <= 1e-4
    for stem in ("mapping", "synthesis", "scorer", "truth"):
        onnx.checker.check_model(onnx.load(bundle_dir / f"{stem}.onnx"), full_check=True)
    assert load_bundle(bundle_dir).score_names == manifest["score_names"]
    assert not [p for p in bundle_dir.parent.iterdir() if p.name.startswith(".")]  # no staging left


def test_bundle_runs_in_plain_onnxruntime_with_dynamic_batch(bundle_dir):
    # A separate interpreter that imports nothing of this project.
    script = f"""
import numpy as np, onnxruntime as ort
d = {str(bundle_dir)!r}
run = lambda f, x: (lambda s: s.run(None, {{s.get_inputs()[0].name: x}})[0])(ort.InferenceSession(d + '/' + f))
for b in (1, 7):
    z = np.random.default_rng(b).standard_normal((b, 515)).astype(np.float32)
    w = run('mapping.onnx', z)
    ws = np.repeat(w[:, None, :], 10, axis=1)  # per-layer codes: every layer the same w
    s = run('scorer.onnx', run('synthesis.onnx', ws))
    assert s.shape == (b, 6) and np.isfinite(s).all(), s.shape
print('ok')
"""
    result = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, cwd="/")
    assert result.stdout.strip() == "ok", result.stderr


def test_onnx_matches_torch_at_other_batch_sizes(bundle_dir):
    spec = synthetic_spec()
    z = torch.randn(5, 515, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        expected = spec.scorer(spec.synthesis(spec.mapping(z))).numpy()
    sessions = {s: ort.InferenceSession(str(bundle_dir / f"{s}.onnx")) for s in ("mapping", "synthesis", "scorer")}
    x = z.numpy()
    for stem in ("mapping", "synthesis", "scorer"):
        if stem == "synthesis":
            x = np.repeat(x[:, None, :], 10, axis=1)
        x = sessions[stem].run(None, {sessions[stem].get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(x, expected, atol=1e-4)


def test_export_at_256px(tmp_path, monkeypatch):
    # The default medians are measured on 2,048 faces, 33 s of torch at 256 px; this test is
    # about the graphs at 256 px, so 256 faces measure them (the parity check runs in full).
    monkeypatch.setattr("export.synthetic.MEDIAN_SAMPLES", 256)
    manifest = export_model("synthetic", tmp_path / "b256", ExportOptions(resolution=256))
    assert manifest["resolution"] == 256
    session = ort.InferenceSession(str(tmp_path / "b256" / "synthesis.onnx"))
    image = session.run(None, {"ws": np.zeros((2, 10, 512), np.float32)})[0]
    assert image.shape == (2, 3, 256, 256)


def test_refuses_non_empty_out_unless_overwrite(tmp_path, bundle_dir):
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(ExportError, match="not empty; choose another directory or overwrite it"):
        export_model("synthetic", out)
    assert (out / "keep.txt").exists()
    export_model("synthetic", out, overwrite=True)
    assert not (out / "keep.txt").exists() and load_bundle(out)


def test_failed_export_leaves_nothing_that_looks_like_a_bundle(tmp_path):
    spec = synthetic_spec()
    spec.parity_tolerance = 0.0  # no real export reaches exact zero on images
    with pytest.raises(ExportError, match="differs from torch"):
        export_bundle(spec, tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["--model", "stylegan9", "--out", "{tmp}/b"], "unknown model 'stylegan9'"),
    (["--out", "{tmp}/b", "--weights", "{tmp}/missing.pt"], "weights file not found"),
    (["--out", "{tmp}/b", "--weights", "{tmp}/wrong.pt"], "missing keys"),
    (["--out", "{tmp}/b", "--weights", "{tmp}/garbage.pt"], "cannot read weights file"),
    (["--out", "{tmp}/full"], "not empty"),
    (["--out", "{tmp}/file.txt/b"], "cannot write"),
    (["--out", "{tmp}/b", "--resolution", "100"], "multiple of 64"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, args, message):
    torch.save({"features.0.weight": torch.zeros(3)}, tmp_path / "wrong.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    (tmp_path / "file.txt").write_text("x")
    result = call_job("jobs.export", *[a.format(tmp=tmp_path) for a in args])
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "b").exists()


def test_load_bundle_rejects_broken_bundles(tmp_path, bundle_dir):
    import shutil

    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nope")
    broken = tmp_path / "broken"
    shutil.copytree(bundle_dir, broken)
    (broken / "scorer.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(broken)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    original = manifest["files"]["scorer"]["sha256"]  # every graph's hash is required: give the garbage its own
    manifest["files"]["scorer"]["sha256"] = hashlib.sha256(b"\x00garbage").hexdigest()
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="onnx.checker"):
        load_bundle(broken)
    shutil.copy(bundle_dir / "scorer.onnx", broken / "scorer.onnx")
    manifest["files"]["scorer"]["sha256"] = original
    manifest["score_names"] = ["eyes", "mouth"]
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="scorer.onnx outputs 6 scores but the manifest names 2"):
        load_bundle(broken)
    (broken / "manifest.json").unlink()
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(broken)
