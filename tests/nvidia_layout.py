"""Write NVIDIA-layout network pickles for tests, without NVIDIA's code.

`write_nvidia_pickle` builds a tiny random StyleGAN2 (plus a discriminator and an augment
pipe) from stand-in modules that pickle the way `torch_utils.persistence` objects do:
`_reconstruct_persistent_obj(meta)` with meta = type 'class', version 6, the module
source, the class name and the `nn.Module` state (`_parameters`, `_buffers`, `_modules`
of persistent children, `_init_args` / `_init_kwargs` with `dnnlib.util.EasyDict`s,
attributes such as numpy `weight_gain`s). The structure follows StyleGAN2-ADA-PyTorch's
`training/networks.py` (or, with layout="stylegan3-repo", `networks_stylegan2.py` of the
StyleGAN3 repository: synthesis kwargs flat in the Generator's). The globals resolve to
fake `torch_utils.persistence` / `dnnlib.util` modules registered only while pickling.
"""
from __future__ import annotations

import contextlib
import pickle
import sys
import types
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

SG2_SOURCE = "# stand-in for training/networks.py, written by tests/nvidia_layout.py\n"
SG3_SOURCE = "from torch_utils.ops import filtered_lrelu  # stand-in for training/networks_stylegan3.py\n"
_BUFFERS = {"resample_filter", "noise_const", "w_avg", "freqs", "phases", "transform", "p", "Hz_geom"}


def _reconstruct_persistent_obj(meta):  # the global a persistent object pickles as; never called
    raise RuntimeError("stand-in for torch_utils.persistence._reconstruct_persistent_obj")


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"


class EasyDict(dict):
    """Pickles as dnnlib.util.EasyDict (a dict subclass)."""


EasyDict.__module__ = "dnnlib.util"


@contextlib.contextmanager
def _fake_nvidia_modules():
    """sys.modules entries that let pickle name the stand-ins as NVIDIA's globals."""
    names = ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util")
    fakes = {name: types.ModuleType(name) for name in names}
    fakes["torch_utils.persistence"]._reconstruct_persistent_obj = _reconstruct_persistent_obj
    fakes["torch_utils"].persistence = fakes["torch_utils.persistence"]
    fakes["dnnlib.util"].EasyDict = EasyDict
    fakes["dnnlib"].util = fakes["dnnlib.util"]
    saved = {name: sys.modules.get(name) for name in fakes}
    sys.modules.update(fakes)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


class Persistent(nn.Module):
    """An nn.Module that pickles as a `torch_utils.persistence` object of `class_name`."""

    def __init__(self, class_name: str, module_src: str, args: tuple = (), kwargs: dict | None = None, **attrs):
        super().__init__()
        self._nv_class, self._nv_src = class_name, module_src
        self._init_args, self._init_kwargs = tuple(args), dict(kwargs or {})
        for name, value in attrs.items():
            setattr(self, name, value)

    def __reduce__(self):
        state = {k: v for k, v in self.__getstate__().items() if k not in ("_nv_class", "_nv_src")}
        meta = dict(type="class", version=6, module_src=self._nv_src, class_name=self._nv_class, state=state)
        return _reconstruct_persistent_obj, (meta,), None


def fir_filter() -> torch.Tensor:
    """upfirdn2d.setup_filter([1, 3, 3, 1]): the normalised 4x4 outer product."""
    f = torch.tensor([1.0, 3.0, 3.0, 1.0])
    return torch.outer(f, f) / f.sum() ** 2


class _Builder:
    """Creates stand-in modules and their random tensors, by dotted name, from one seed."""

    def __init__(self, seed: int, src: str):
        self.gen, self.src, self.tensors = torch.Generator().manual_seed(seed), src, {}

    def randn(self, *shape, scale=1.0, shift=0.0):
        return torch.randn(shape, generator=self.gen) * scale + shift

    def module(self, parent: Persistent | None, name: str, class_name: str, args=(), kwargs=None, **attrs):
        m = Persistent(class_name, self.src, args, kwargs, **attrs)
        if parent is not None:
            parent.add_module(name, m)
        return m

    def fc(self, parent, path, c_in, c_out, activation="linear", lr=1.0, bias_init=0.0):
        name = path.rpartition(".")[2]
        self.module(parent, name, "FullyConnectedLayer", (c_in, c_out),
                    dict(activation=activation, lr_multiplier=lr, bias_init=bias_init),
                    activation=activation, weight_gain=np.float64(lr / np.sqrt(c_in)), bias_gain=lr)
        self.tensors[f"{path}.weight"] = self.randn(c_out, c_in, scale=1 / lr)
        self.tensors[f"{path}.bias"] = self.randn(c_out, scale=0.2, shift=bias_init)

    def conv2d(self, parent, path, c_in, c_out, k, **kwargs):  # Conv2dLayer (discriminator, resnet skip)
        self.module(parent, path.rpartition(".")[2], "Conv2dLayer", (c_in, c_out, k), kwargs,
                    activation=kwargs.get("activation", "linear"), weight_gain=np.float64(1 / np.sqrt(c_in * k * k)))
        self.tensors[f"{path}.weight"] = self.randn(c_out, c_in, k, k)
        self.tensors[f"{path}.resample_filter"] = fir_filter()

    def synthesis_layer(self, parent, path, c_in, c_out, w_dim, res, up, clamp):
        m = self.module(parent, path.rpartition(".")[2], "SynthesisLayer", (c_in, c_out),
                        dict(w_dim=w_dim, resolution=res, up=up, conv_clamp=clamp, channels_last=False),
                        resolution=res, up=up, use_noise=True, activation="lrelu", conv_clamp=clamp,
                        padding=1, act_gain=np.float64(np.sqrt(2)))
        self.tensors[f"{path}.resample_filter"] = fir_filter()
        self.fc(m, f"{path}.affine", w_dim, c_in, bias_init=1.0)
        self.tensors[f"{path}.weight"] = self.randn(c_out, c_in, 3, 3)
        self.tensors[f"{path}.noise_const"] = self.randn(res, res)
        self.tensors[f"{path}.noise_strength"] = self.randn(scale=0.3)
        self.tensors[f"{path}.bias"] = self.randn(c_out, scale=0.2)

    def to_rgb(self, parent, path, c_in, w_dim, clamp):
        m = self.module(parent, "torgb", "ToRGBLayer", (c_in, 3),
                        dict(w_dim=w_dim, conv_clamp=clamp, channels_last=False),
                        conv_clamp=clamp, weight_gain=np.float64(1 / np.sqrt(c_in)))
        self.fc(m, f"{path}.affine", w_dim, c_in, bias_init=1.0)
        self.tensors[f"{path}.weight"] = self.randn(3, c_in, 1, 1)
        self.tensors[f"{path}.bias"] = self.randn(3, scale=0.2)


def _attach(root: Persistent, tensors: dict[str, torch.Tensor]) -> None:
    """Register each tensor on the module its dotted name points at (parameter or buffer)."""
    for name, t in tensors.items():
        path, _, leaf = name.rpartition(".")
        module = root.get_submodule(path)
        if leaf in _BUFFERS:
            module.register_buffer(leaf, t.clone())
        else:
            module.register_parameter(leaf, nn.Parameter(t.clone(), requires_grad=False))


def build_generator(b: _Builder, resolution, z_dim, w_dim, n_mlp, channel_base, channel_max, conv_clamp,
                    lr_multiplier=0.01, c_dim=0, architecture="skip", img_channels=3,
                    layout="stylegan2-ada", stylegan3=False) -> Persistent:
    """A Generator stand-in; its random tensors are left in `b.tensors` (attach them after)."""
    log2 = resolution.bit_length() - 1
    block_res = [2 ** i for i in range(2, log2 + 1)]
    width = {res: min(channel_base // res, channel_max) for res in block_res}
    num_ws = 2 * log2 - 2
    syn_kwargs = EasyDict(channel_base=channel_base, channel_max=channel_max, num_fp16_res=4, conv_clamp=conv_clamp)
    if architecture != "skip":
        syn_kwargs["architecture"] = architecture
    map_kwargs = EasyDict(num_layers=n_mlp, **({} if lr_multiplier == 0.01 else {"lr_multiplier": lr_multiplier}))
    g_kwargs = dict(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=resolution, img_channels=img_channels,
                    mapping_kwargs=map_kwargs)
    g_kwargs.update(syn_kwargs if layout == "stylegan3-repo" else {"synthesis_kwargs": syn_kwargs})
    g = b.module(None, "", "Generator", (), g_kwargs, z_dim=z_dim, c_dim=c_dim, w_dim=w_dim,
                 img_resolution=resolution, img_channels=img_channels, num_ws=num_ws)

    mapping = b.module(g, "mapping", "MappingNetwork", (), dict(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim,
                       num_ws=num_ws, **map_kwargs), z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=num_ws,
                       num_layers=n_mlp, w_avg_beta=0.995)
    if c_dim:
        b.fc(mapping, "mapping.embed", c_dim, w_dim)
    for i in range(n_mlp):
        c_in = (z_dim + (w_dim if c_dim else 0)) if i == 0 else w_dim
        b.fc(mapping, f"mapping.fc{i}", c_in, w_dim, activation="lrelu", lr=lr_multiplier)
    b.tensors["mapping.w_avg"] = b.randn(w_dim)

    synthesis = b.module(g, "synthesis", "SynthesisNetwork", (),
                         dict(w_dim=w_dim, img_resolution=resolution, img_channels=img_channels, **syn_kwargs),
                         w_dim=w_dim, img_resolution=resolution, img_resolution_log2=log2, img_channels=img_channels,
                         block_resolutions=block_res, num_ws=num_ws)
    if stylegan3:  # alias-free synthesis: a Fourier-feature input and L{i}_{size}_{channels} layers
        inp = b.module(synthesis, "input", "SynthesisInput", (), dict(w_dim=w_dim, channels=width[4], size=36))
        b.tensors.update({"synthesis.input.freqs": b.randn(width[4], 2),
                          "synthesis.input.phases": b.randn(width[4]), "synthesis.input.transform": torch.eye(3),
                          "synthesis.input.weight": b.randn(width[4], width[4])})
        b.fc(inp, "synthesis.input.affine", w_dim, 4)
        b.synthesis_layer(synthesis, "synthesis.L0_36_16", width[4], width[4], w_dim, 36, 1, conv_clamp)
        return g
    for res in block_res:
        c_in, c = (width[res // 2] if res > 4 else 0), width[res]
        is_last = res == resolution
        block = b.module(synthesis, f"b{res}", "SynthesisBlock", (c_in, c),
                         dict(w_dim=w_dim, resolution=res, img_channels=img_channels, is_last=is_last,
                              use_fp16=res >= max(resolution // 8, 8), conv_clamp=conv_clamp,
                              architecture=architecture),
                         in_channels=c_in, w_dim=w_dim, resolution=res, img_channels=img_channels, is_last=is_last,
                         architecture=architecture, use_fp16=False, channels_last=False,
                         num_conv=1 if res == 4 else 2, num_torgb=int(is_last or architecture == "skip"),
                         **({"fused_modconv_default": "inference_only"} if layout == "stylegan3-repo" else {}))
        p = f"synthesis.b{res}"
        b.tensors[f"{p}.resample_filter"] = fir_filter()
        if res == 4:
            b.tensors[f"{p}.const"] = b.randn(c, 4, 4)
        else:
            b.synthesis_layer(block, f"{p}.conv0", c_in, c, w_dim, res, 2, conv_clamp)
        b.synthesis_layer(block, f"{p}.conv1", c, c, w_dim, res, 1, conv_clamp)
        if is_last or architecture == "skip":
            b.to_rgb(block, f"{p}.torgb", c, w_dim, conv_clamp)
        if res > 4 and architecture == "resnet":
            b.conv2d(block, f"{p}.skip", c_in, c, 1, bias=False, up=2)
    return g


def _discriminator(b: _Builder, resolution: int) -> Persistent:
    d = b.module(None, "", "Discriminator", (), dict(c_dim=0, img_resolution=resolution, img_channels=3),
                 c_dim=0, img_resolution=resolution, img_channels=3, block_resolutions=[resolution, 8])
    block = b.module(d, f"b{resolution}", "DiscriminatorBlock", (0, 4, 4), dict(resolution=resolution),
                     in_channels=0, resolution=resolution, architecture="resnet", num_layers=3)
    for name, c_in, k in (("fromrgb", 3, 1), ("conv0", 4, 3), ("conv1", 4, 3)):
        b.conv2d(block, f"b{resolution}.{name}", c_in, 4, k, activation="lrelu")
        b.tensors[f"b{resolution}.{name}.bias"] = b.randn(4)
    epilogue = b.module(d, "b4", "DiscriminatorEpilogue", (4, 0), dict(resolution=4, img_channels=3))
    b.module(epilogue, "mbstd", "MinibatchStdLayer", (), dict(group_size=4, num_channels=1),
             group_size=4, num_channels=1)
    b.fc(epilogue, "b4.out", 4, 1)
    return d


def write_nvidia_pickle(path, seed: int = 0, resolution: int = 16, z_dim: int = 16, w_dim: int = 16, n_mlp: int = 2,
                        channel_base: int = 128, channel_max: int = 16, conv_clamp: float | None = 256,
                        lr_multiplier: float = 0.01, c_dim: int = 0, architecture: str = "skip",
                        img_channels: int = 3, layout: str = "stylegan2-ada", stylegan3: bool = False,
                        protocol: int = 4, module_src: str | None = None, drop: tuple[str, ...] = (),
                        tamper: Callable[[dict], None] | None = None, extra: dict | None = None,
                        g_ema_attrs: dict | None = None) -> tuple[Path, dict]:
    """Write an NVIDIA network pickle of a tiny random StyleGAN2 to `path`.

    `tamper` edits G_ema's flat {dotted name: tensor} dict before it is attached (delete or
    reshape a tensor); `drop` leaves top-level entries out; `extra` adds top-level entries
    and `g_ema_attrs` attributes of G_ema (hostile payloads); `module_src` replaces the
    embedded source. Returns (path, expected): G_ema's tensors by NVIDIA name (`state`)
    and the architecture written (resolution, channels, z_dim, w_dim, n_mlp, ...).
    """
    path = Path(path)
    src = module_src if module_src is not None else (SG3_SOURCE if stylegan3 else SG2_SOURCE)
    arch = dict(resolution=resolution, z_dim=z_dim, w_dim=w_dim, n_mlp=n_mlp, channel_base=channel_base,
                channel_max=channel_max, conv_clamp=conv_clamp, lr_multiplier=lr_multiplier, c_dim=c_dim,
                architecture=architecture, img_channels=img_channels, layout=layout, stylegan3=stylegan3)
    networks = {}
    for name, offset in (("G", 1), ("G_ema", 0)):
        b = _Builder(seed + offset, src)
        networks[name] = build_generator(b, **arch)
        if name == "G_ema":
            if tamper is not None:
                tamper(b.tensors)
            ema_state = {k: v.clone() for k, v in b.tensors.items()}
            for key, value in (g_ema_attrs or {}).items():
                setattr(networks[name], key, value)
        _attach(networks[name], b.tensors)
    b = _Builder(seed + 2, src)
    networks["D"] = _discriminator(b, resolution)
    _attach(networks["D"], b.tensors)
    pipe = b.module(None, "", "AugmentPipe", (), dict(xflip=1, rotate90=1, xint=1), xflip=1.0, rotate90=1.0, xint=1.0)
    _attach(pipe, {"p": torch.zeros([]), "Hz_geom": b.randn(12)})
    data = {"G": networks["G"], "D": networks["D"], "G_ema": networks["G_ema"], "augment_pipe": pipe,
            "training_set_kwargs": dict(class_name="training.dataset.ImageFolderDataset", path="faces.zip",
                                        use_labels=False, max_size=1000, xflip=False, resolution=resolution)}
    data = {k: v for k, v in data.items() if k not in drop}
    data.update(extra or {})
    with _fake_nvidia_modules(), open(path, "wb") as f:
        pickle.dump(data, f, protocol=protocol)
    width = {res: min(channel_base // res, channel_max) for res in (2 ** i for i in range(2, resolution.bit_length()))}
    return path, dict(arch, state=ema_state, channels=tuple(width.items()))
