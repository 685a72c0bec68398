"""`jobs.export --model stylegan2` and `--model onnx` end to end: a user's checkpoint (random
weights in the exact rosinality, NVIDIA and genforce layouts) and an ONNX scorer of their own
become a bundle that every job runs on; bad files and flags are one line, exit 2.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from compute.bundle import load_bundle
from compute.tables import read_metadata
from conftest import call_job
from export.genforce import write_random_genforce_checkpoint
from export.onnx_bundle import to_onnx_bytes
from export.rosinality import write_random_rosinality_checkpoint
from export.stylegan import GenforceConfig
from export.stylegan2 import StyleGAN2Config
from nvidia_layout import write_nvidia_pickle

NAMES = "smile,age,yaw"
ADAPTER = ("--scorer-size", "24", "--scorer-range", "0,1", "--scorer-mean", "0.485,0.456,0.406",
           "--scorer-std", "0.229,0.224,0.225")


class TinyScorer(nn.Module):
    """A stand-in attribute classifier: 24 px ImageNet-normalised input -> 3 scores."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        if not torch.jit.is_tracing():
            assert x.shape[-1] == 24
        return torch.tanh(self.head(torch.relu(self.conv(x)).mean((2, 3))))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    (root / "scorer.onnx").write_bytes(to_onnx_bytes(TinyScorer(), torch.zeros(2, 3, 24, 24), "pixels", "logits"))
    config = StyleGAN2Config(resolution=32, channels=((4, 32), (8, 32), (16, 16), (32, 16)), z_dim=32, w_dim=32,
                             n_mlp=2)
    return {"scorer": root / "scorer.onnx",
            "rosinality": write_random_rosinality_checkpoint(root / "ros.pt", config, seed=1, training=True),
            "nvidia": write_nvidia_pickle(root / "network-snapshot.pkl", resolution=32, z_dim=32, w_dim=32,
                                          channel_base=512, channel_max=32)[0],
            "genforce": write_random_genforce_checkpoint(root / "genforce.pth", GenforceConfig(
                resolution=32, z_dim=32, w_dim=32, mapping_layers=2, mapping_fmaps=32, channels=(32, 32, 16, 16)))}


def _export(files, fmt: str, out: Path, *flags: str):
    return call_job("jobs.export", "--model", "stylegan2", "--generator", str(files[fmt]), "--scorer",
                    str(files["scorer"]), "--score-names", NAMES, *ADAPTER, "--median-samples", "32",
                    "--out", str(out), *flags)


@pytest.mark.parametrize("fmt, num_ws", [("rosinality", 8), ("nvidia", 8), ("genforce", 8)])
def test_each_format_exports_a_bundle_with_parity(files, tmp_path, fmt, num_ws):
    done = _export(files, fmt, tmp_path / "b")
    assert done.returncode == 0, done.stderr
    bundle = load_bundle(tmp_path / "b")
    m = bundle.manifest
    assert m["generator"]["format"] == fmt and m["num_ws"] == bundle.num_ws == num_ws
    assert (m["z_dim"], m["w_dim"], m["resolution"], bundle.score_names) == (32, 32, 32, NAMES.split(","))
    # Torch vs ONNX Runtime on every stage, the scorer's adapter included.
    assert all(v is not None and v <= 1e-3 for v in m["parity"]["relative"].values()), m["parity"]
    assert m["scorer_adapter"]["size"] == 24 and m["scorer"]["format"] == "onnx"
    assert set(m["group_medians"]) == set(NAMES.split(","))
    assert "worst relative" in done.stdout and "8 style layers" in done.stdout


def test_adapted_scorer_is_the_users_graph_on_adapted_images(files, tmp_path):
    assert _export(files, "rosinality", tmp_path / "b").returncode == 0
    bundle = load_bundle(tmp_path / "b")
    images = np.random.default_rng(0).uniform(-1, 1, (3, 3, 32, 32)).astype(np.float32)
    ours = ort.InferenceSession(bundle.graph_bytes("scorer"), providers=["CPUExecutionProvider"])
    got = ours.run(None, {"image": images})[0]
    x = torch.nn.functional.interpolate(torch.from_numpy((images + 1) / 2), size=24, mode="bilinear",
                                        antialias=True, align_corners=False)
    x = (x - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        np.testing.assert_allclose(got, TinyScorer()(x).numpy(), atol=1e-4)


def test_truncation_is_baked_into_the_mapping(files, tmp_path):
    from export.nvidia import load_nvidia

    assert _export(files, "nvidia", tmp_path / "b", "--truncation", "0.7").returncode == 0
    bundle = load_bundle(tmp_path / "b")
    assert bundle.manifest["generator"]["truncation_psi"] == 0.7
    _, model, w_avg = load_nvidia(files["nvidia"])
    z = np.random.default_rng(1).standard_normal((4, 32)).astype(np.float32)
    mapping = ort.InferenceSession(bundle.graph_bytes("mapping"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = w_avg + 0.7 * (model.mapping(torch.from_numpy(z)) - w_avg)
    np.testing.assert_allclose(mapping.run(None, {"z": z})[0], want.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fmt, space", [("rosinality", "w:0-3"), ("nvidia", "w"), ("genforce", "w:4-7")])
def test_main_job_runs_on_each_format_with_a_layer_range(files, tmp_path, ray_session, fmt, space):
    assert _export(files, fmt, tmp_path / "b").returncode == 0
    done = call_job("jobs.vectorfind", "--bundle", str(tmp_path / "b"), "--out", str(tmp_path / "run"),
                    "--n", "600", "--cases", "6", "--properties", "smile,yaw", "--group-by", "age",
                    "--space", space)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "report.md").is_file() and (tmp_path / "run" / "gallery.html").is_file()
    test = read_metadata(tmp_path / "run" / "cases.parquet")["test"]
    assert test["method"]["space"] == space and test["bundle_manifest_sha256"] == load_bundle(
        tmp_path / "b").manifest_sha256


def test_user_onnx_graphs_through_the_cli(files, tmp_path):
    """The bundle's own graphs, given back as a user's files, make an onnx bundle."""
    assert _export(files, "genforce", tmp_path / "b").returncode == 0
    for stem in ("mapping", "synthesis"):
        (tmp_path / f"{stem}.onnx").write_bytes((tmp_path / "b" / f"{stem}.onnx").read_bytes())
    done = call_job("jobs.export", "--model", "onnx", "--mapping", str(tmp_path / "mapping.onnx"), "--synthesis",
                    str(tmp_path / "synthesis.onnx"), "--scorer", str(files["scorer"]), "--score-names", NAMES,
                    *ADAPTER, "--median-samples", "16", "--out", str(tmp_path / "user"))
    assert done.returncode == 0, done.stderr
    assert "checked: onnx.checker" in done.stdout
    assert load_bundle(tmp_path / "user").manifest["num_ws"] == 8


def _hostile(tmp_path: Path, marker: Path) -> Path:
    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    return write_nvidia_pickle(tmp_path / "evil.pkl", resolution=16, extra={"x": Payload()})[0]


@pytest.mark.parametrize("make, flags, message", [
    (lambda t: t / "none.pt", (), "not found"),
    (lambda t: (t / "notes.txt").write_text("hello") and t / "notes.txt", (), "neither a torch checkpoint"),
    (lambda t: torch.save({"conv.weight": torch.zeros(2)}, t / "other.pt") or t / "other.pt", (),
     "no known StyleGAN layout"),
    (lambda t: _hostile(t, t / "pwned"), (), "not in the allow-list"),
    ("rosinality", ("--truncation", "1.5"), "--truncation must be in (0, 1]"),
    ("rosinality", ("--scorer-mean", "0.5,0.5"), "--scorer-mean takes 3"),
    ("rosinality", ("--mapping", "m.onnx"), "--mapping do(es) not apply to --model stylegan2"),
    ("rosinality", ("--resolution", "64"), "--resolution do(es) not apply"),
])
def test_bad_checkpoints_and_flags_are_one_line(files, tmp_path, make, flags, message):
    generator = files[make] if isinstance(make, str) else make(tmp_path)
    done = call_job("jobs.export", "--model", "stylegan2", "--generator", str(generator), "--scorer",
                    str(files["scorer"]), "--score-names", NAMES, *flags, "--out", str(tmp_path / "b"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    assert not (tmp_path / "b").exists() and not (tmp_path / "pwned").exists()


def test_an_onnx_scorer_needs_its_score_names(files, tmp_path):
    done = call_job("jobs.export", "--model", "stylegan2", "--generator", str(files["rosinality"]), "--scorer",
                    str(files["scorer"]), "--out", str(tmp_path / "b"))
    assert done.returncode == 2 and "--score-names" in done.stderr and done.stderr.count("\n") == 1


def test_format_is_read_from_the_contents_not_the_name(files, tmp_path):
    from export.checkpoint_specs import detect_format

    # Pre-zip torch files (torch < 1.6, and still written on request) hold the same layouts.
    torch.save({"g_ema": {"style.1.weight": torch.zeros(2)}}, tmp_path / "a.pkl", _use_new_zipfile_serialization=False)
    torch.save({"mapping.dense0.weight": torch.zeros(2)}, tmp_path / "b.pt", _use_new_zipfile_serialization=False)
    renamed = tmp_path / "snapshot.pt"
    renamed.write_bytes(files["nvidia"].read_bytes())
    assert [detect_format(p) for p in (tmp_path / "a.pkl", tmp_path / "b.pt", renamed, files["genforce"],
                                       files["rosinality"])] == ["rosinality", "genforce", "nvidia", "genforce",
                                                                 "rosinality"]
