"""The second, harder synthetic world (`jobs.export --model synthetic-hard`): it differs from
the built-in world only in its documented knobs, the built-in world is unchanged by them,
and it exports as a bundle of its own that names its world."""
from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch

from export.models import ExportOptions, ModelError, check_model_options, export_model
from export.scorer import WEIGHTS
from export.synthetic import WORLD_MODELS
from export.world import EDITED, HARD_WORLD, LABEL_DIM, NUM_WS, PARAMS, WORLDS, Z_DIM, WorldConfig, build_world

from conftest import call_job

# The built-in world's read-out of 4 seeded codes (torch.manual_seed 123), computed before the
# entanglement knob existed: w, then per-layer codes with layers 0-3 moved by +0.3 (eyes, mouth, pose).
PINNED_W = np.array([
    [-0.619144, 0.281189, -0.710473, 1.74147, 0.223436, -0.490485, 0.302074, -0.274437, -0.371857, 1.457348],
    [0.343072, 0.329552, -1.175854, -1.134716, 1.594746, 0.285796, 1.395541, 2.2097, -1.303653, 1.000568],
    [-2.045566, -0.743365, -0.32834, 0.726058, -1.440831, -0.47332, -0.268254, 2.118001, -0.772984, -0.918691],
    [-1.183464, -0.637802, -1.319779, 0.123174, 0.005448, 0.735455, -1.217446, 0.384604, 0.523442, -0.421965]])
PINNED_WS_EDITED = np.array([[0.511576, 1.780997, -1.083395], [0.30967, 0.178891, -1.30048],
                             [-2.047422, -0.626118, -0.718053], [-0.417255, -0.58525, -1.925263]])


def _pinned_codes(mapping):
    z = torch.randn(4, Z_DIM + LABEL_DIM, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        w = mapping(z)
    ws = w[:, None, :].repeat(1, NUM_WS, 1)
    ws[:, :4] += 0.3
    return w, ws


@pytest.fixture(scope="module")
def hard_world():
    return build_world(HARD_WORLD)


def test_hard_world_differs_only_in_cross_talk_and_entanglement():
    default = WorldConfig()
    changed = {f.name for f in fields(WorldConfig) if getattr(HARD_WORLD, f.name) != getattr(default, f.name)}
    assert changed == {"cross_talk", "entanglement"}
    assert default.entanglement == (0.0, 0.0, 0.0) and all(v > 0 for v in HARD_WORLD.entanglement)
    assert all(h > d for h, d in zip(HARD_WORLD.cross_talk, default.cross_talk))
    assert WORLDS == {"default": default, "hard": HARD_WORLD}
    assert WORLD_MODELS == {"synthetic": default, "synthetic-hard": HARD_WORLD}
    # A knob that is off is not recorded: the built-in bundle's manifest and hash stay as they were.
    assert default.record() == {"seed": 20261123, "calibration_samples": 16384, "subspace_dim": 32,
                                "interaction": 0.5, "group_sharpness": 2.5, "cross_talk": (0.2, 0.25, 0.15)}
    assert HARD_WORLD.record()["entanglement"] == HARD_WORLD.entanglement


@pytest.mark.parametrize("knob, value", [("entanglement", (0.1, 0.1)), ("cross_talk", (0.2, float("nan"), 0.1))])
def test_world_config_refuses_malformed_knobs(knob, value):
    with pytest.raises(ValueError, match=knob):
        WorldConfig(**{knob: value})


def test_default_world_is_unchanged(world):
    mapping, readout = world
    w, ws = _pinned_codes(mapping)
    with torch.no_grad():
        np.testing.assert_allclose(readout(w).numpy(), PINNED_W, atol=1e-5)
        np.testing.assert_allclose(readout(ws).numpy()[:, :3], PINNED_WS_EDITED, atol=1e-5)
    assert readout.entanglement is None and "entanglement" not in readout.state_dict()


def test_hard_world_draws_the_same_faces_with_entangled_standardised_properties(world, hard_world):
    (mapping, readout), (hard_mapping, hard_readout) = world, hard_world
    for name, tensor in mapping.state_dict().items():
        assert torch.equal(tensor, hard_mapping.state_dict()[name]), name
    assert torch.equal(readout.directions, hard_readout.directions)
    z = torch.randn(4000, Z_DIM + LABEL_DIM, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        w = mapping(z)
        params, hard = readout(w).numpy(), hard_readout(w).numpy()
    # Grouping and identity parameters are untouched; the edited ones stay standardised,
    # so the scorer trained on the built-in world reads them on the same scale.
    np.testing.assert_array_equal(params[:, 3:], hard[:, 3:])
    assert np.allclose(hard[:, :3].mean(0), 0, atol=0.08) and np.allclose(hard[:, :3].std(0), 1, atol=0.08)
    # Entanglement: each pair of edited parameters moves together much more than in the built-in world.
    for i, j in ((0, 1), (0, 2), (1, 2)):
        default_corr = abs(np.corrcoef(params[:, i], params[:, j])[0, 1])
        hard_corr = np.corrcoef(hard[:, i], hard[:, j])[0, 1]
        assert hard_corr > default_corr + 0.15, (EDITED[i], EDITED[j], default_corr, hard_corr)


def test_hard_model_takes_the_synthetic_options():
    check_model_options("synthetic-hard", ExportOptions(resolution=128, weights=WEIGHTS))
    with pytest.raises(ModelError, match="--generator do"):
        check_model_options("synthetic-hard", ExportOptions(generator=Path("g.pt")))
    with pytest.raises(ModelError, match="multiple of 64"):
        check_model_options("synthetic-hard", ExportOptions(resolution=100))


@pytest.mark.parametrize("args, message", [
    (["--median-samples", "9"], "--median-samples do(es) not apply to --model synthetic-hard"),
    (["--weights", "{tmp}/missing.pt"], "weights file not found"),
    (["--resolution", "96"], "multiple of 64"),
])
def test_hard_model_bad_input_is_one_line_exit_2(tmp_path, args, message):
    result = call_job("jobs.export", "--model", "synthetic-hard", "--out", str(tmp_path / "b"),
                      *[a.format(tmp=tmp_path) for a in args])
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "b").exists()


def test_hard_bundle_exports_loads_and_names_its_world(tmp_path, hard_world):
    from compute.bundle import load_bundle
    from compute.sessions import make_session

    manifest = export_model("synthetic-hard", tmp_path / "hard", ExportOptions(resolution=64))
    bundle = load_bundle(tmp_path / "hard")
    assert bundle.manifest == json.loads(json.dumps(manifest)) and manifest["model"] == "synthetic-hard"
    assert bundle.manifest["world"] == json.loads(json.dumps(HARD_WORLD.record()))
    assert bundle.manifest["truth_names"] == list(PARAMS) and bundle.num_ws == NUM_WS
    # Its truth graph is the hard world's read-out.
    _, hard_readout = hard_world
    ws = torch.randn(6, NUM_WS, 512, generator=torch.Generator().manual_seed(2))
    truth = make_session(bundle.graph_bytes("truth"))
    (params,) = truth.run(None, {truth.get_inputs()[0].name: ws.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(params, hard_readout(ws).numpy(), atol=1e-4)
