"""genforce StyleGAN (v1) at any resolution, with or without a label (#13): the config read off a
checkpoint's keys, the per-layer (W+) synthesis graph, and the named refusals.

Random-init generators saved in genforce's key layout stand in for real weights.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.checkpoints import CheckpointError
from export.genforce import load_genforce, write_random_genforce_checkpoint
from export.onnx_bundle import to_onnx_bytes
from export.property_cnn import PropertyScoreCNN
from export.stylegan import CodeToW, GenforceConfig, ReferenceGenerator, WsToImage, WToImage

COMPAT = Path(__file__).parent / "data" / "ohlora_state_dict_shapes.json"
# Every field a state dict shows, away from genforce's defaults, and small enough to be quick.
SMALL = GenforceConfig(16, z_dim=64, w_dim=96, label_dim=2, embed_dim=8, mapping_layers=3, mapping_fmaps=48,
                       channels=(32, 24, 16))
ROUND_TRIPS = {"64px-unconditional": GenforceConfig(64), "32px-label5": GenforceConfig(32, label_dim=5),
               "ohlora": GenforceConfig.ohlora(), "16px-every-field": SMALL}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("genforce")
    return {name: write_random_genforce_checkpoint(out / f"{name}.pth", config, seed=i)
            for i, (name, config) in enumerate(ROUND_TRIPS.items())}


def test_config_shapes_and_the_ohlora_default():
    assert ReferenceGenerator().config == GenforceConfig.ohlora() == GenforceConfig(256, label_dim=3, embed_dim=16)
    expected = json.loads(COMPAT.read_text())["generator"]
    shapes = {k: list(v.shape) for k, v in ReferenceGenerator(GenforceConfig.ohlora()).state_dict().items()}
    assert shapes == expected
    assert [(GenforceConfig(r).num_ws, GenforceConfig(r).blocks) for r in (8, 64, 256, 1024)] == \
        [(4, 2), (10, 5), (14, 7), (18, 9)]
    assert GenforceConfig(1024).channels == (512, 512, 512, 512, 256, 128, 64, 32, 16)  # min(16384 // res, 512)
    assert GenforceConfig(32, label_dim=5).embed_dim == 512 and GenforceConfig(32).embed_dim == 0
    assert GenforceConfig(32, channels=[512, 512, 512, 512]) == GenforceConfig(32)  # normalised
    unconditional = ReferenceGenerator(GenforceConfig(8)).state_dict()
    assert "mapping.label_weight" not in unconditional and unconditional["mapping.dense0.weight"].shape == (512, 512)
    assert "synthesis.output1.weight" in unconditional and "synthesis.layer4.bias" not in unconditional


@pytest.mark.parametrize("kwargs, message", [
    ({"resolution": 100}, "resolution must be one of 8, 16, 32, 64, 128, 256, 512, 1024, got 100"),
    ({"resolution": 4}, "resolution must be one of"),
    ({"resolution": 64, "label_dim": -1}, "label_dim must be an integer >= 0"),
    ({"resolution": 64, "embed_dim": 16}, "embed_dim is for a label"),
    ({"resolution": 64, "channels": (512, 256)}, "channels must give 5 values (4 to 64 px), got 2"),
    ({"resolution": 64, "w_dim": 0}, "w_dim must be an integer >= 1"),
])
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError) as err:
        GenforceConfig(**kwargs)
    assert message in str(err.value)


@pytest.mark.parametrize("name", list(ROUND_TRIPS))
def test_round_trip_infers_the_written_config(files, name):
    config, generator = load_genforce(files[name])
    assert config == ROUND_TRIPS[name]
    assert generator.config == config and not generator.training
    state = torch.load(files[name], weights_only=True)
    assert all(torch.equal(v, state[k]) for k, v in generator.state_dict().items())
    assert load_genforce(files[name], ROUND_TRIPS[name])[0] == config  # the same file against a given config


def test_the_averaged_generator_of_a_training_checkpoint_is_loaded(tmp_path, files):
    smooth = torch.load(files["16px-every-field"], weights_only=True)
    raw = {k: v + 1 for k, v in smooth.items()}
    torch.save({"generator": raw, "generator_smooth": smooth, "discriminator": {"x": torch.zeros(1)}},
               tmp_path / "training.pth")
    config, generator = load_genforce(tmp_path / "training.pth")
    assert config == SMALL and torch.equal(generator.truncation.w_avg, smooth["truncation.w_avg"])


def test_random_checkpoints_are_seeded_and_leave_the_callers_random_state(tmp_path):
    torch.manual_seed(5)
    before = torch.rand(3)
    torch.manual_seed(5)
    a = write_random_genforce_checkpoint(tmp_path / "a.pth", SMALL, seed=1)
    assert torch.equal(torch.rand(3), before)
    b = write_random_genforce_checkpoint(tmp_path / "deeper" / "b.pth", SMALL, seed=1)
    sa, sb = (torch.load(p, weights_only=True) for p in (a, b))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert sa["synthesis.layer2.bias"].abs().sum() > 0 and not torch.all(sa["synthesis.layer0.const"] == 1)
    with pytest.raises(ValueError, match="config must be a GenforceConfig, got int"):
        write_random_genforce_checkpoint(tmp_path / "c.pth", 64)


@pytest.mark.parametrize("psi", [1.0, 0.7])
def test_the_ws_graph_equals_the_w_graph_when_every_layer_gets_the_same_w(files, psi):
    config, generator = load_genforce(files["16px-every-field"])
    code = torch.randn(3, config.code_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        w = CodeToW(generator)(code)
        assert torch.equal(w, generator.mapping(code[:, :64], code[:, 64:]))
        ws = w.unsqueeze(1).repeat(1, config.num_ws, 1)
        image = WsToImage(generator, psi)(ws)
        assert image.shape == (3, 3, 16, 16)
        assert torch.equal(image, WToImage(generator, psi)(w))
        assert torch.equal(image, generator(code[:, :64], code[:, 64:], psi).clamp(-1, 1))
        mixed = ws.clone()
        mixed[:, -1] = torch.randn(3, config.w_dim)  # the last layer's code changes the image
        assert not torch.equal(WsToImage(generator, psi)(mixed), image)
    with pytest.raises(ValueError, match=r"ws must be \[batch, 6, w_dim\], got \[3, 5, 96\]"):
        WsToImage(generator)(ws[:, :5])


def test_unconditional_mapping_takes_z_alone(files):
    config, generator = load_genforce(files["64px-unconditional"])
    z = torch.randn(2, 512, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(CodeToW(generator)(z), generator.mapping(z))
    assert config.code_dim == 512


def test_ws_graph_exports_to_onnx_with_a_dynamic_batch(files):
    config, generator = load_genforce(files["64px-unconditional"])
    graph = WsToImage(generator).eval()
    session = ort.InferenceSession(to_onnx_bytes(graph, torch.zeros(2, config.num_ws, config.w_dim), "ws", "image"),
                                   providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["ws"] and session.get_inputs()[0].shape[1:] == [10, 512]
    for batch in (1, 5):
        ws = torch.randn(batch, config.num_ws, config.w_dim, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = graph(ws).numpy()
        got = session.run(None, {"ws": ws.numpy()})[0]
        assert got.shape == (batch, 3, 64, 64)
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def _save_changed(tmp_path: Path, files, change) -> Path:
    state = torch.load(files["16px-every-field"], weights_only=True)
    change(state)
    torch.save(state, tmp_path / "changed.pth")
    return tmp_path / "changed.pth"


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("synthesis.layer3.style.bias"),
     "does not fit the 16 px genforce StyleGAN its keys describe: 1 missing keys: synthesis.layer3.style.bias"),
    (lambda s: s.update({"mapping.dense1.extra": torch.zeros(2)}), "1 unexpected keys: mapping.dense1.extra"),
    (lambda s: s.update({"synthesis.layer3.weight": torch.zeros(24, 32, 3, 3)}),
     "1 mis-shaped: synthesis.layer3.weight (24, 32, 3, 3) != (24, 24, 3, 3)"),
    (lambda s: s.update({"synthesis.lod": torch.tensor(1.0)}),
     "has synthesis.lod = 1: a generator still growing progressively; only a fully grown one (lod 0, 16 px)"),
    (lambda s: s.update({"synthesis.layer0.weight": s.pop("synthesis.layer0.const")}), "const_input=False"),
    (lambda s: s.update({"synthesis.layer0.apply_noise.noise": torch.zeros(1, 32, 1, 1)}), "noise_type='channel'"),
    (lambda s: s.update({"truncation.w_avg": torch.zeros(6 * 96)}), "repeat_w=False"),
    (lambda s: s.update({"synthesis.output2.weight": torch.zeros(4, 16, 1, 1)}), "with 4 image channels"),
    (lambda s: s.update({"synthesis.early_layer.const": torch.zeros(1, 32, 4, 4)}), "StyleGAN2 generator"),
    (lambda s: [s.pop(k) for k in list(s) if k.startswith("synthesis.layer5.")], "synthesis layers 0-4"),
    (lambda s: s.update({"mapping.label_weight": torch.zeros(2, 80)}), "does not describe a genforce StyleGAN: "
     "z_dim must be an integer >= 1, got -8"),
])
def test_bad_generators_are_one_named_error(tmp_path, files, change, message):
    with pytest.raises(CheckpointError) as err:
        load_genforce(_save_changed(tmp_path, files, change))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_files_that_are_no_genforce_generator(tmp_path, files):
    torch.save(PropertyScoreCNN().state_dict(), tmp_path / "scorer.pth")
    with pytest.raises(CheckpointError, match="is not a genforce StyleGAN generator: it has no mapping.dense"):
        load_genforce(tmp_path / "scorer.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read weights file"):
        load_genforce(tmp_path / "garbage.pth")
    with pytest.raises(CheckpointError, match="weights file not found"):
        load_genforce(tmp_path / "none.pth")
    with pytest.raises(CheckpointError, match="does not fit ReferenceGenerator: .*missing keys"):
        load_genforce(files["16px-every-field"], GenforceConfig.ohlora())  # a given config is not inferred
