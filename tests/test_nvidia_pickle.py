"""NVIDIA StyleGAN2 network pickles: read without executing anything, and G_ema as StyleGAN2.

The reference below is an independent plain-torch forward in NVIDIA's formulation
(StyleGAN2-ADA-PyTorch `training/networks.py` with `conv2d_resample`, `upfirdn2d` and
`bias_act` semantics), run on the tensors written to the pickle; the loaded StyleGAN2
(rosinality layout, a different formulation) must draw the same images.
"""
from __future__ import annotations

import builtins
import math
import os
import pickle
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from export import nvidia_pickle
from export.checkpoints import CheckpointError
from export.nvidia import load_nvidia
from export.nvidia_pickle import PersistentRecord, read_nvidia_pickle
from nvidia_layout import write_nvidia_pickle

SQRT2 = math.sqrt(2.0)


# ---- NVIDIA's formulation, in plain torch ---------------------------------------------------

def nv_bias_act(x, b, act, gain, clamp=None):
    """bias_act: add bias, activation, multiply by gain, clamp to +-clamp."""
    x = x + b.reshape(1, -1, *[1] * (x.ndim - 2))
    x = F.leaky_relu(x, 0.2) if act == "lrelu" else x
    x = x * gain
    return x if clamp is None else x.clamp(-clamp, clamp)


def nv_fc(x, s, name, act="linear", lr=1.0):
    """FullyConnectedLayer: weight x lr/sqrt(in), bias x lr."""
    w = s[f"{name}.weight"]
    return nv_bias_act(x @ (w * (lr / math.sqrt(w.shape[1]))).t(), s[f"{name}.bias"] * lr, act,
                       SQRT2 if act == "lrelu" else 1.0)


def nv_upfirdn2d(x, f, up, pad, gain):
    """Insert up-1 zeros after each pixel, pad (x0, x1, y0, y1) (negative crops), convolve with f."""
    c = x.shape[1]
    if up > 1:
        z = x.new_zeros(x.shape[0], c, x.shape[2] * up, x.shape[3] * up)
        z[:, :, ::up, ::up] = x
        x = z
    x0, x1, y0, y1 = pad
    x = F.pad(x, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    x = x[:, :, max(-y0, 0):x.shape[2] - max(-y1, 0), max(-x0, 0):x.shape[3] - max(-x1, 0)]
    k = (f * gain).flip([0, 1])  # upfirdn2d convolves (flip_filter=False); F.conv2d correlates
    return F.conv2d(x, k[None, None].repeat(c, 1, 1, 1), groups=c)


def nv_modulated_conv2d(x, weight, styles, demodulate, up=1, f=None, padding=0):
    """modulated_conv2d, fused: per-sample weights, one grouped conv (conv2d_resample for up=2)."""
    batch, (c_out, c_in, kh, kw) = x.shape[0], weight.shape
    w = weight[None] * styles[:, None, :, None, None]                       # (B, O, I, k, k)
    if demodulate:
        w = w * (w.square().sum([2, 3, 4]) + 1e-8).rsqrt()[:, :, None, None, None]
    x = x.reshape(1, batch * c_in, *x.shape[2:])
    if up == 1:  # SynthesisLayer passes flip_weight=True: correlation, i.e. F.conv2d as is
        out = F.conv2d(x, w.reshape(batch * c_out, c_in, kh, kw), padding=padding, groups=batch)
    else:
        flip_weight = False                    # SynthesisLayer: flip_weight = (up == 1)
        wrapper_flip_weight = not flip_weight  # conv2d_resample hands the transposed conv the negation
        wt = w.transpose(1, 2).reshape(batch * c_in, c_out, kh, kw)
        if not wrapper_flip_weight:            # the wrapper flips the kernel only for flip_weight=False
            wt = wt.flip([2, 3])
        fw = f.shape[-1]
        p0 = padding + (fw + up - 1) // 2 - (kw - 1)
        p1 = padding + (fw - up) // 2 - (kw - up)
        pt = max(min(-p0, -p1), 0)
        out = F.conv_transpose2d(x, wt, stride=up, padding=pt, groups=batch)
        out = nv_upfirdn2d(out, f, 1, (p0 + pt, p1 + pt, p0 + pt, p1 + pt), gain=up ** 2)
    return out.reshape(batch, c_out, *out.shape[2:])


def nv_layer(x, w, s, name, up, clamp):
    """SynthesisLayer, noise_mode='const'."""
    x = nv_modulated_conv2d(x, s[f"{name}.weight"], nv_fc(w, s, f"{name}.affine"), True, up,
                            s[f"{name}.resample_filter"], padding=1)
    x = x + s[f"{name}.noise_const"] * s[f"{name}.noise_strength"]
    return nv_bias_act(x, s[f"{name}.bias"], "lrelu", SQRT2, clamp)


def nv_torgb(x, w, s, name, clamp):
    weight = s[f"{name}.weight"]
    styles = nv_fc(w, s, f"{name}.affine") / math.sqrt(weight[0].numel())  # weight_gain on the styles
    return nv_bias_act(nv_modulated_conv2d(x, weight, styles, False), s[f"{name}.bias"], "linear", 1.0, clamp)


def nv_mapping(s, z, n_mlp, lr):
    x = z * (z.square().mean(1, keepdim=True) + 1e-8).rsqrt()  # normalize_2nd_moment
    for i in range(n_mlp):
        x = nv_fc(x, s, f"mapping.fc{i}", "lrelu", lr)
    return x


def nv_synthesis(s, ws, resolution, clamp):
    """SynthesisNetwork, 'skip': block res uses ws[idx : idx + convs + 1], idx advancing by its convs."""
    x = img = None
    idx = 0
    for res in (2 ** i for i in range(2, resolution.bit_length())):
        b = f"synthesis.b{res}"
        if res == 4:
            x = s[f"{b}.const"][None].repeat(ws.shape[0], 1, 1, 1)
            x, n = nv_layer(x, ws[:, idx], s, f"{b}.conv1", 1, clamp), 1
        else:
            x = nv_layer(x, ws[:, idx], s, f"{b}.conv0", 2, clamp)
            x, n = nv_layer(x, ws[:, idx + 1], s, f"{b}.conv1", 1, clamp), 2
        if img is not None:  # upsample2d: up 2, pad ((fw+1)//2, (fw-2)//2) = (2, 1), gain 4
            img = nv_upfirdn2d(img, s[f"{b}.resample_filter"], 2, (2, 1, 2, 1), gain=4)
        y = nv_torgb(x, ws[:, idx + n], s, f"{b}.torgb", clamp)
        img = y if img is None else img + y
        idx += n
    return img


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# ---- (a) the loaded generator draws NVIDIA's images -----------------------------------------

@pytest.mark.parametrize("conv_clamp,resolution", [(256, 16), (0.4, 32)])
def test_loaded_generator_matches_nvidia_formulation(tmp_path, conv_clamp, resolution):
    path, exp = write_nvidia_pickle(tmp_path / "net.pkl", seed=3, resolution=resolution, conv_clamp=conv_clamp)
    config, model, w_avg = load_nvidia(path)
    s = exp["state"]
    assert not model.training
    assert torch.equal(w_avg, s["mapping.w_avg"])

    z = torch.randn(3, exp["z_dim"], generator=torch.Generator().manual_seed(1))
    ws = torch.randn(3, config.num_ws, exp["w_dim"], generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert rel_err(model.mapping(z), nv_mapping(s, z, exp["n_mlp"], exp["lr_multiplier"])) < 1e-5
        ref = nv_synthesis(s, ws, resolution, conv_clamp)
        assert rel_err(model.synthesis(ws), ref) < 1e-4              # W+: a different w per layer
        w = nv_mapping(s, z, exp["n_mlp"], exp["lr_multiplier"])
        assert rel_err(model(z), nv_synthesis(s, w[:, None].repeat(1, config.num_ws, 1), resolution,
                                              conv_clamp)) < 1e-4
        if conv_clamp < 1:  # the clamp really acts in this case, so it is tested
            assert rel_err(nv_synthesis(s, ws, resolution, None), ref) > 1e-2


def test_reference_is_sensitive_to_the_up_conv_orientation(tmp_path):
    """Flipping the up-sampling kernels changes the image: the match above pins the orientation."""
    path, exp = write_nvidia_pickle(tmp_path / "net.pkl", seed=4)
    config, model, _ = load_nvidia(path)
    flipped = {k: v.flip([2, 3]) if k.endswith("conv0.weight") else v for k, v in exp["state"].items()}
    ws = torch.randn(2, config.num_ws, exp["w_dim"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert rel_err(model.synthesis(ws), nv_synthesis(flipped, ws, 16, 256)) > 1e-2


@pytest.mark.parametrize("protocol", [3, 4, 5])  # NVIDIA's: Python 3.7's default 3, later 4
def test_pickle_protocols_read_and_record_all_networks(tmp_path, protocol):
    path, exp = write_nvidia_pickle(tmp_path / "net.pkl", protocol=protocol)
    data = read_nvidia_pickle(path)
    assert set(data) == {"G", "D", "G_ema", "augment_pipe", "training_set_kwargs"}
    assert all(isinstance(data[k], PersistentRecord) for k in ("G", "D", "G_ema", "augment_pipe"))
    assert data["D"].find("b4.mbstd").class_name == "MinibatchStdLayer"
    assert data["training_set_kwargs"]["resolution"] == 16
    g = data["G_ema"]
    assert type(g.init_kwargs["synthesis_kwargs"]) is dict and g.init_kwargs["synthesis_kwargs"]["conv_clamp"] == 256
    assert g.find("mapping.fc0").attributes["weight_gain"] == pytest.approx(0.01 / 4)  # a numpy float64
    state = g.state_dict()
    assert state.keys() == exp["state"].keys()
    assert all(torch.equal(state[k], v) for k, v in exp["state"].items())


def test_numeric_numpy_arrays_read_and_object_arrays_are_refused(tmp_path):
    array = np.arange(6, dtype=">f4").reshape(2, 3)
    extra = {"a": array, "f": np.asfortranarray(array), "i": np.int64(7)}
    path, _ = write_nvidia_pickle(tmp_path / "ok.pkl", extra=extra)
    data = read_nvidia_pickle(path)
    assert np.array_equal(data["a"], array) and np.array_equal(data["f"], array) and data["i"] == 7
    path, _ = write_nvidia_pickle(tmp_path / "obj.pkl", extra={"o": np.array(["a", "b"], dtype=object)})
    with pytest.raises(CheckpointError, match="not a numeric one"):
        read_nvidia_pickle(path)


# ---- (b) hostile pickles run nothing ---------------------------------------------------------

class Payload:
    """Unpickles as func(*args), the way a malicious file would run a command."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _writes(marker) -> str:
    return f"open({str(marker)!r}, 'w').close()"


def test_payloads_would_run_under_plain_pickle(tmp_path):
    """Control: the payload form used below does execute under an unrestricted unpickler."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(exec, _writes(marker))))
    assert marker.exists()


@pytest.mark.parametrize("func", ["os.system", "builtins.eval", "builtins.exec", "subprocess.Popen"])
@pytest.mark.parametrize("where", ["top level", "inside G_ema"])
def test_hostile_globals_are_refused_before_they_run(tmp_path, func, where):
    marker = tmp_path / "pwned"
    payload = {"os.system": Payload(os.system, f"touch {marker}"),
               "builtins.eval": Payload(builtins.eval, _writes(marker)),
               "builtins.exec": Payload(builtins.exec, _writes(marker)),
               "subprocess.Popen": Payload(subprocess.Popen, ["touch", str(marker)])}[func]
    where_kwargs = {"extra": {"x": payload}} if where == "top level" else {"g_ema_attrs": {"x": payload}}
    path, _ = write_nvidia_pickle(tmp_path / "evil.pkl", **where_kwargs)
    global_name = f"{os.system.__module__}.system" if func == "os.system" else func  # posix.system on Linux
    with pytest.raises(CheckpointError, match=rf"refers to {global_name}, which is not in the allow-list") as err:
        load_nvidia(path)
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_hand_written_os_system_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    with pytest.raises(CheckpointError, match="refers to os.system, which is not in the allow-list"):
        read_nvidia_pickle(path)
    assert not marker.exists()


@pytest.mark.parametrize("target", [b"torch_utils.persistence\n_reconstruct_persistent_obj", b"dnnlib.util\nEasyDict"])
def test_a_pickle_cannot_patch_the_loaders_stand_ins(tmp_path, target):
    """BUILD on an allowed global (here setting attribute x) is refused and leaves it unchanged."""
    path = tmp_path / "patch.pkl"
    path.write_bytes(b"c" + target + b"\n(dVx\nI1\nsb.")
    with pytest.raises(CheckpointError):
        read_nvidia_pickle(path)
    assert not any(hasattr(v, "x") for v in nvidia_pickle.ALLOWED_GLOBALS.values())
    config, _, _ = load_nvidia(write_nvidia_pickle(tmp_path / "net.pkl")[0])
    assert config.resolution == 16


def test_embedded_module_source_is_kept_as_text_never_run(tmp_path):
    marker = tmp_path / "pwned"
    src = _writes(marker) + "\nclass Generator: pass\n"
    path, exp = write_nvidia_pickle(tmp_path / "net.pkl", module_src=src)
    config, _, _ = load_nvidia(path)
    assert read_nvidia_pickle(path)["G_ema"].find("synthesis.b8.conv0").module_src == src
    assert config.resolution == 16 and not marker.exists()


# ---- (c) unsupported or broken networks: one clear error ------------------------------------

def _drop(name):
    return lambda state: state.pop(name)


def _reshape(name, shape):
    return lambda state: state.__setitem__(name, torch.zeros(shape))


@pytest.mark.parametrize("kwargs,message", [
    (dict(stylegan3=True), r"StyleGAN3 .* not supported yet"),
    (dict(c_dim=4), r"conditional \(c_dim=4\)"),
    (dict(architecture="resnet"), r"architecture is resnet; only 'skip'"),
    (dict(architecture="orig"), r"architecture is orig; only 'skip'"),
    (dict(img_channels=1), r"1-channel images"),
    (dict(drop=("G_ema",)), r"has no 'G_ema' \(keys: D, G, augment_pipe"),
    (dict(tamper=_drop("synthesis.b8.conv0.affine.bias")), r"1 missing: synthesis\.b8\.conv0\.affine\.bias"),
    (dict(tamper=_reshape("synthesis.b16.torgb.weight", (3, 5, 1, 1))),
     r"mis-shaped: synthesis\.b16\.torgb\.weight \(3, 5, 1, 1\) != \(3, 8, 1, 1\)"),
    (dict(tamper=_reshape("synthesis.b8.conv0.extra", (2,))), r"1 unexpected: synthesis\.b8\.conv0\.extra"),
    (dict(tamper=_reshape("synthesis.b8.conv0.resample_filter", (4, 4))), r"filter other than \[1, 3, 3, 1\]"),
])
def test_unsupported_or_broken_networks_are_refused(tmp_path, kwargs, message):
    path, _ = write_nvidia_pickle(tmp_path / "net.pkl", **kwargs)
    with pytest.raises(CheckpointError, match=message) as err:
        load_nvidia(path)
    assert "\n" not in str(err.value)


def test_files_that_are_not_network_pickles_are_refused(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "zip.pt")
    (tmp_path / "junk.pkl").write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(CheckpointError, match="torch zip checkpoint"):
        load_nvidia(tmp_path / "zip.pt")
    with pytest.raises(CheckpointError, match="cannot read .* as an NVIDIA network pickle"):
        load_nvidia(tmp_path / "junk.pkl")
    with pytest.raises(CheckpointError, match="not found"):
        load_nvidia(tmp_path / "missing.pkl")


# ---- (d) the architecture is read back as written --------------------------------------------

@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(layout="stylegan3-repo", resolution=32, z_dim=12, w_dim=20, n_mlp=3, channel_base=256, channel_max=32,
         conv_clamp=None, lr_multiplier=0.05),
])
def test_config_matches_what_was_written(tmp_path, kwargs):
    path, exp = write_nvidia_pickle(tmp_path / "net.pkl", **kwargs)
    config, model, w_avg = load_nvidia(path)
    assert (config.resolution, config.channels, config.z_dim, config.w_dim, config.n_mlp) == \
        (exp["resolution"], exp["channels"], exp["z_dim"], exp["w_dim"], exp["n_mlp"])
    assert config.conv_clamp == exp["conv_clamp"] and config.lr_mlp == pytest.approx(exp["lr_multiplier"])
    assert w_avg.shape == (exp["w_dim"],) and model.config == config
