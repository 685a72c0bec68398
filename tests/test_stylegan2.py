"""`export.stylegan2` + `export.rosinality`: rosinality's layout and numerics, ONNX export
with a dynamic batch, strict and safe checkpoint loading.

The expected key list, the grouped-conv modulated conv, upfirdn2d and the whole generator
forward are written here from rosinality's model.py (the `fused=True` path that its
checkpoints were trained with), independently of the export form under test.
"""
from __future__ import annotations

import argparse
import collections
import io
import math
import os
import shlex
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from export.checkpoints import CheckpointError
from export.rosinality import infer_config, load_rosinality, write_random_rosinality_checkpoint
from export.stylegan2 import ModulatedConv2d, StyleGAN2, StyleGAN2Config, Upsample

SMALL = StyleGAN2Config(16, ((4, 32), (8, 24), (16, 16)), z_dim=24, w_dim=32, n_mlp=2)
NARROW = StyleGAN2Config(32, ((4, 16), (8, 16), (16, 12), (32, 8)), z_dim=16, w_dim=16, n_mlp=3)


def rosinality_shapes(size: int, channels: dict[int, int], z_dim: int, w_dim: int, n_mlp: int) -> dict:
    """g_ema's keys and shapes, following rosinality's Generator.__init__ line by line."""
    shapes = {}
    for i in range(1, n_mlp + 1):
        shapes[f"style.{i}.weight"] = (w_dim, z_dim if i == 1 else w_dim)
        shapes[f"style.{i}.bias"] = (w_dim,)

    def modconv(prefix, c_in, c_out, k, up=False):
        shapes[f"{prefix}.weight"] = (1, c_out, c_in, k, k)
        shapes[f"{prefix}.modulation.weight"] = (c_in, w_dim)
        shapes[f"{prefix}.modulation.bias"] = (c_in,)
        if up:
            shapes[f"{prefix}.blur.kernel"] = (4, 4)

    def styled_conv(prefix, c_in, c_out, up=False):
        modconv(f"{prefix}.conv", c_in, c_out, 3, up)
        shapes[f"{prefix}.noise.weight"] = (1,)
        shapes[f"{prefix}.activate.bias"] = (c_out,)

    def to_rgb(prefix, c_in, up=True):
        modconv(f"{prefix}.conv", c_in, 3, 1)
        shapes[f"{prefix}.bias"] = (1, 3, 1, 1)
        if up:
            shapes[f"{prefix}.upsample.kernel"] = (4, 4)

    shapes["input.input"] = (1, channels[4], 4, 4)
    styled_conv("conv1", channels[4], channels[4])
    to_rgb("to_rgb1", channels[4], up=False)
    log_size = int(math.log2(size))
    for layer_idx in range((log_size - 2) * 2 + 1):
        res = 2 ** ((layer_idx + 5) // 2)
        shapes[f"noises.noise_{layer_idx}"] = (1, 1, res, res)
    in_channel = channels[4]
    for n, i in enumerate(range(3, log_size + 1)):
        out_channel = channels[2 ** i]
        styled_conv(f"convs.{2 * n}", in_channel, out_channel, up=True)
        styled_conv(f"convs.{2 * n + 1}", out_channel, out_channel)
        to_rgb(f"to_rgbs.{n}", out_channel)
        in_channel = out_channel
    return shapes


def shapes_of(module: nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# --- rosinality's arithmetic, written out from model.py / op/upfirdn2d.py -----------------

def fir(kernel=(1.0, 3.0, 3.0, 1.0)) -> torch.Tensor:
    k = torch.tensor(kernel)
    k = torch.outer(k, k)
    return k / k.sum() * 4  # make_kernel(...) * factor ** 2


def upfirdn(x, kernel, up, pad):
    """upfirdn2d_native with up in both axes, down 1: zero insertion, pad, true convolution."""
    b, c, h, w = x.shape
    if up > 1:
        u = x.new_zeros(b, c, h * up, w * up)
        u[:, :, ::up, ::up] = x
        x = u
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    return F.conv2d(x, torch.flip(kernel, [0, 1])[None, None].repeat(c, 1, 1, 1), groups=c)


def grouped_modconv(x, w, weight, mod_weight, mod_bias, demodulate=True, up=False):
    """ModulatedConv2d(fused=True): a per-sample weight, conv with groups = batch."""
    b, c_in, h, wd = x.shape
    _, c_out, _, k, _ = weight.shape
    style = F.linear(w, mod_weight / math.sqrt(mod_weight.shape[1]), mod_bias)
    weight = weight / math.sqrt(c_in * k * k) * style.view(b, 1, c_in, 1, 1)
    if demodulate:
        weight = weight * torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8).view(b, c_out, 1, 1, 1)
    if up:
        weight = weight.transpose(1, 2).reshape(b * c_in, c_out, k, k)
        out = F.conv_transpose2d(x.reshape(1, b * c_in, h, wd), weight, stride=2, groups=b)
        return upfirdn(out.view(b, c_out, *out.shape[2:]), fir(), 1, (1, 1))
    out = F.conv2d(x.reshape(1, b * c_in, h, wd), weight.reshape(b * c_out, c_in, k, k), padding=k // 2, groups=b)
    return out.view(b, c_out, h, wd)


def reference_mapping(state, z, n_mlp, lr_mlp=0.01):
    x = z * torch.rsqrt(torch.mean(z ** 2, dim=1, keepdim=True) + 1e-8)
    for i in range(1, n_mlp + 1):
        weight, bias = state[f"style.{i}.weight"], state[f"style.{i}.bias"]
        x = F.linear(x, weight * lr_mlp / math.sqrt(weight.shape[1]))
        x = F.leaky_relu(x + bias * lr_mlp, 0.2) * math.sqrt(2)
    return x


def reference_synthesis(state, ws, clamp=None):
    """Generator(input_is_latent=True, randomize_noise=False) on per-layer codes ws."""
    def clip(x):
        return x if clamp is None else x.clamp(-clamp, clamp)

    def conv(prefix, x, w, demodulate, up=False):
        return grouped_modconv(x, w, state[f"{prefix}.weight"], state[f"{prefix}.modulation.weight"],
                               state[f"{prefix}.modulation.bias"], demodulate, up)

    def styled(prefix, x, w, noise, up=False):
        out = conv(f"{prefix}.conv", x, w, True, up) + state[f"{prefix}.noise.weight"] * noise
        return clip(F.leaky_relu(out + state[f"{prefix}.activate.bias"].view(1, -1, 1, 1), 0.2) * math.sqrt(2))

    def to_rgb(prefix, x, w, skip=None):
        out = clip(conv(f"{prefix}.conv", x, w, False) + state[f"{prefix}.bias"])
        return out if skip is None else out + upfirdn(skip, fir(), 2, (2, 1))

    noise = [state[f"noises.noise_{i}"] for i in range(sum(k.startswith("noises.") for k in state))]
    out = state["input.input"].repeat(ws.shape[0], 1, 1, 1)
    out = styled("conv1", out, ws[:, 0], noise[0])
    skip = to_rgb("to_rgb1", out, ws[:, 1])
    for n in range(len(noise) // 2):
        out = styled(f"convs.{2 * n}", out, ws[:, 2 * n + 1], noise[2 * n + 1], up=True)
        out = styled(f"convs.{2 * n + 1}", out, ws[:, 2 * n + 2], noise[2 * n + 2])
        skip = to_rgb(f"to_rgbs.{n}", out, ws[:, 2 * n + 3], skip)
    return skip


def random_model(config, seed=0, path=None):
    path = write_random_rosinality_checkpoint(path, config, seed=seed)
    return load_rosinality(path)[1]


def max_rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


# --- (a) layout --------------------------------------------------------------------------

def test_state_dict_has_rosinality_keys_and_shapes():
    expected = rosinality_shapes(16, dict(SMALL.channels), 24, 32, 2)
    assert shapes_of(StyleGAN2(SMALL)) == expected


@pytest.mark.parametrize("size, cm", [(256, 1), (1024, 2)])
def test_full_size_rosinality_layout(size, cm):
    config = StyleGAN2Config.rosinality(size, channel_multiplier=cm)
    table = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm, 256: 64 * cm, 512: 32 * cm, 1024: 16 * cm}
    assert dict(config.channels) == {r: c for r, c in table.items() if r <= size}
    assert config.num_ws == {256: 14, 1024: 18}[size]
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = StyleGAN2(config)
    assert shapes_of(model) == rosinality_shapes(size, table, 512, 512, 8)
    assert infer_config(model.state_dict()) == config


def test_fir_buffers_hold_rosinality_kernels():
    state = StyleGAN2(SMALL).state_dict()
    for key in ("convs.0.conv.blur.kernel", "to_rgbs.1.upsample.kernel"):
        torch.testing.assert_close(state[key], fir())
    assert state["convs.0.conv.modulation.bias"].eq(1).all()  # style bias initialised to 1


def test_config_checks_its_arguments():
    with pytest.raises(ValueError, match="resolution"):
        StyleGAN2Config(12, ((4, 8),))
    with pytest.raises(ValueError, match="channels"):
        StyleGAN2Config(16, ((4, 8), (16, 8)))
    with pytest.raises(ValueError, match="n_mlp"):
        StyleGAN2Config(8, ((4, 8), (8, 8)), n_mlp=0)
    with pytest.raises(ValueError, match="resolution"):
        StyleGAN2Config.rosinality(2048)
    assert StyleGAN2Config(8, [[4, 8], [8, 4]]).channels == ((4, 8), (8, 4))


# --- (b) modulated convolution: export form vs per-sample grouped conv --------------------

@pytest.mark.parametrize("up, demodulate, k", [(False, True, 3), (True, True, 3), (False, False, 1)])
def test_modulated_conv_matches_grouped_formulation(up, demodulate, k):
    gen = torch.Generator().manual_seed(1)
    conv = ModulatedConv2d(6, 5, k, 8, demodulate=demodulate, upsample=up)
    with torch.no_grad():
        conv.modulation.bias.add_(0.3 * torch.randn(6, generator=gen))
    x, w = torch.randn(3, 6, 7, 9, generator=gen), torch.randn(3, 8, generator=gen)
    with torch.no_grad():
        got = conv(x, w)
        want = grouped_modconv(x, w, conv.weight, conv.modulation.weight, conv.modulation.bias, demodulate, up)
    assert got.shape == ((3, 5, 14, 18) if up else (3, 5, 7, 9))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# --- (c) FIR up-sampling vs a direct loop -------------------------------------------------

def numpy_upfirdn_up2(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Zero insertion, pad (2, 1) (p = 4 - 2: pad0 = (p + 1) // 2 + 1, pad1 = p // 2), 4x4 convolution."""
    c, h, w = x.shape
    up = np.zeros((c, 2 * h, 2 * w))
    up[:, ::2, ::2] = x
    padded = np.pad(up, ((0, 0), (2, 1), (2, 1)))
    out = np.zeros((c, 2 * h, 2 * w))
    for ch in range(c):
        for i in range(2 * h):
            for j in range(2 * w):
                for a in range(4):
                    for b in range(4):
                        out[ch, i, j] += padded[ch, i + a, j + b] * k[3 - a, 3 - b]
    return out


@pytest.mark.parametrize("kernel", ["fir", "asymmetric"])
def test_fir_upsample_matches_loop(kernel):
    k = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64 * 4
    if kernel == "asymmetric":  # pins the orientation, which the symmetric filter cannot
        k = np.arange(16.0).reshape(4, 4) / 30
    up = Upsample(2)
    up.kernel.copy_(torch.tensor(k, dtype=torch.float32))
    x = np.random.default_rng(0).standard_normal((2, 3, 5))
    got = up(torch.tensor(x[None], dtype=torch.float32))[0].detach().numpy()
    np.testing.assert_allclose(got, numpy_upfirdn_up2(x, k), rtol=1e-5, atol=1e-5)
    if kernel == "fir":
        np.testing.assert_allclose(k.sum(), 4.0)  # gain factor ** 2: the mean is kept


# --- the whole generator: rosinality's forward, constant for constant ---------------------

@pytest.mark.parametrize("clamp", [None, 0.7])
def test_generator_matches_rosinality_forward(tmp_path, clamp):
    path = write_random_rosinality_checkpoint(tmp_path / "g.pt", SMALL, seed=3)
    state = torch.load(path, weights_only=True)
    config = StyleGAN2Config(**{**SMALL.__dict__, "conv_clamp": clamp})
    model = StyleGAN2(config).eval()
    model.load_state_dict(state)
    z = torch.randn(4, 24, generator=torch.Generator().manual_seed(0))
    ws = torch.randn(4, SMALL.num_ws, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model.mapping(z), reference_mapping(state, z, 2), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.synthesis(ws), reference_synthesis(state, ws, clamp), rtol=1e-4, atol=1e-5)
        w = reference_mapping(state, z, 2)[:, None].repeat(1, SMALL.num_ws, 1)
        torch.testing.assert_close(model(z), reference_synthesis(state, w, clamp), rtol=1e-4, atol=1e-5)
        assert torch.equal(model.synthesis(ws), model.synthesis(ws))  # constant noise: no randomness


def test_multiply_adds_counts_the_export_form():
    from torch.utils.flop_counter import FlopCounterMode

    model = StyleGAN2(SMALL).eval()
    counter = FlopCounterMode(display=False)
    with counter:  # (its module hooks need autograd on)
        model(torch.randn(2, 24))
    assert SMALL.multiply_adds() == counter.get_total_flops() // 2 // 2


# --- (d) ONNX export with a dynamic batch -------------------------------------------------

class Stage(nn.Module):
    """One method of the generator as a module that owns the generator's weights."""

    def __init__(self, model: StyleGAN2, method: str):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, x):
        return getattr(self.model, self.method)(x)


def onnx_session(module, example, name):
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (example,), buffer, dynamo=False, opset_version=17,
                          input_names=[name], output_names=["out"],
                          dynamic_axes={name: {0: "batch"}, "out": {0: "batch"}})
    graph = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(graph, full_check=True)
    assert {node.domain for node in graph.graph.node} <= {"", "ai.onnx"}  # standard ops only
    return ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])


def test_onnx_export_keeps_dynamic_batch(tmp_path):
    model = random_model(SMALL, seed=5, path=tmp_path / "g.pt")
    synthesis = onnx_session(Stage(model, "synthesis"), torch.zeros(2, SMALL.num_ws, 32), "ws")
    mapping = onnx_session(Stage(model, "mapping"), torch.zeros(2, 24), "z")
    for batch in (1, 5):
        gen = torch.Generator().manual_seed(batch)
        z, ws = torch.randn(batch, 24, generator=gen), torch.randn(batch, SMALL.num_ws, 32, generator=gen)
        with torch.no_grad():
            want_w, want_image = model.mapping(z).numpy(), model.synthesis(ws).numpy()
        got_w = mapping.run(None, {"z": z.numpy()})[0]
        got_image = synthesis.run(None, {"ws": ws.numpy()})[0]
        assert got_image.shape == (batch, 3, 16, 16) and got_w.shape == (batch, 32)
        assert max_rel(got_w, want_w) < 1e-4 and max_rel(got_image, want_image) < 1e-4


# --- (e) loading rosinality checkpoints ---------------------------------------------------

@pytest.mark.parametrize("config, training", [(SMALL, False), (SMALL, True), (NARROW, False), (NARROW, True)])
def test_load_round_trips(tmp_path, config, training):
    path = write_random_rosinality_checkpoint(tmp_path / "ckpt.pt", config, seed=7, training=training)
    with torch.serialization.safe_globals([argparse.Namespace]):
        saved = torch.load(path, weights_only=True)
    if training:
        assert set(saved) == {"g", "d", "g_ema", "g_optim", "d_optim", "args", "ada_aug_p"}
        assert isinstance(saved["args"], argparse.Namespace) and saved["args"].size == config.resolution
        saved = saved["g_ema"]
    loaded, model, latent_avg = load_rosinality(path)
    assert loaded == config and latent_avg is None and not model.training
    assert shapes_of(model) == rosinality_shapes(config.resolution, dict(config.channels), config.z_dim,
                                                 config.w_dim, config.n_mlp)
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert all(v.abs().sum() > 0 for k, v in saved.items() if "bias" in k or "noise" in k)  # every term matters


@pytest.mark.parametrize("cm", [1, 2])
def test_channel_multiplier_is_inferred(cm):
    config = StyleGAN2Config.rosinality(512, z_dim=64, n_mlp=4, channel_multiplier=cm)
    with torch.device("meta"):
        assert infer_config(StyleGAN2(config).state_dict()) == config


def test_latent_avg_is_returned(tmp_path):
    path = write_random_rosinality_checkpoint(tmp_path / "g.pt", SMALL)
    latent_avg = torch.randn(1, 32)  # convert_weight.py saves [w_dim]; some forks keep [1, w_dim]
    torch.save({"g_ema": torch.load(path, weights_only=True), "latent_avg": latent_avg}, path)
    torch.testing.assert_close(load_rosinality(path)[2], latent_avg[0])


# --- (f) named errors, nothing executed ---------------------------------------------------

def load_error(path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_rosinality(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_extra_and_misshaped_keys_are_named_together(tmp_path):
    path = write_random_rosinality_checkpoint(tmp_path / "g.pt", SMALL)
    state = torch.load(path, weights_only=True)
    del state["convs.1.noise.weight"]
    state["convs.1.extra"] = torch.zeros(1)
    state["to_rgbs.0.bias"] = torch.zeros(3)
    torch.save(state, path)
    message = load_error(path)
    assert "1 missing keys: convs.1.noise.weight" in message
    assert "1 unexpected keys: convs.1.extra" in message
    assert "1 mis-shaped: to_rgbs.0.bias (3,) != (1, 3, 1, 1)" in message


def test_unreadable_and_foreign_files(tmp_path):
    assert "not found" in load_error(tmp_path / "absent.pt")
    (tmp_path / "junk.pt").write_bytes(b"definitely not a checkpoint")
    assert "cannot read" in load_error(tmp_path / "junk.pt")
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "other.pt")
    assert "not a rosinality StyleGAN2 checkpoint" in load_error(tmp_path / "other.pt")
    torch.save({"g_ema": [1, 2]}, tmp_path / "list.pt")
    assert "'g_ema' is a list" in load_error(tmp_path / "list.pt")


class PickledDict(collections.OrderedDict):
    """A dict subclass: loading it would import and run this module's code."""


class RunsCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def test_foreign_globals_are_refused_not_executed(tmp_path):
    marker = tmp_path / "executed"
    torch.save({"g_ema": RunsCommand(marker), "args": argparse.Namespace(size=16)}, tmp_path / "evil.pt")
    message = load_error(tmp_path / "evil.pt")
    assert "system" in message and "weights-only" in message
    assert not marker.exists()
    torch.save(PickledDict(g_ema=PickledDict()), tmp_path / "subclass.pt")
    assert "PickledDict" in load_error(tmp_path / "subclass.pt")
