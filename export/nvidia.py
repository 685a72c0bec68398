"""Load an NVIDIA StyleGAN2 network pickle's `G_ema` into `StyleGAN2` (rosinality layout).

Reads StyleGAN2-ADA-PyTorch pickles and StyleGAN2 pickles of the StyleGAN3 repository
(`networks_stylegan2`) through `export.nvidia_pickle`, so nothing in the file runs. The
architecture comes from the recorded networks: resolution, z/w dims and mapping depth
from the generator and its mapping network, widths per resolution from the synthesis
network's `channel_base` / `channel_max` (NVIDIA: min(channel_base // res, channel_max)),
and `conv_clamp`, architecture and activations from the layers' own attributes (what
their forward used). Every tensor is checked by its NVIDIA name before conversion.

The two formulations compute the same image, so the conversion only renames and reshapes:

- mapping: NVIDIA's normalize_2nd_moment and FC layers (raw weight x lr/sqrt(fan_in),
  bias x lr, lrelu x sqrt(2)) are rosinality's PixelNorm and EqualLinear(lr_mul=lr)
  with the same raw tensors;
- affine (style) layers: bias_init=1 is in the stored bias; both scale by 1/sqrt(w_dim);
- modulated 3x3 convs: NVIDIA applies no weight gain (demodulation removes any scale;
  rosinality's 1/sqrt(fan_in) moves only the 1e-8 epsilon); the up-sampling conv is a
  stride-2 transposed conv with the unflipped weight in both (NVIDIA: flip_weight=False,
  passed negated to the transposed conv) followed by the [1, 3, 3, 1] FIR (pad 1, gain 4);
- ToRGB: NVIDIA scales the styles by 1/sqrt(fan_in), rosinality the weight: same product;
- noise: noise_const x noise_strength == noises.noise_i x noise.weight (constant noise);
- conv_clamp clamps each layer after its activation gain, and the ToRGB output.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from export.checkpoints import CheckpointError, _first, fit_state_dict
from export.nvidia_pickle import PersistentRecord, read_nvidia_pickle
from export.stylegan2 import StyleGAN2, StyleGAN2Config

# NVIDIA's default SynthesisNetwork widths and MappingNetwork learning-rate multiplier.
CHANNEL_BASE, CHANNEL_MAX, LR_MULTIPLIER = 32768, 512, 0.01
_BLOCK = re.compile(r"b(\d+)")


def load_nvidia(path) -> tuple[StyleGAN2Config, StyleGAN2, torch.Tensor]:
    """(config, generator in eval mode, w_avg [w_dim]) from an NVIDIA StyleGAN2 pickle's G_ema."""
    path = Path(path)
    data = read_nvidia_pickle(path)
    g = data.get("G_ema")
    if not isinstance(g, PersistentRecord):
        what = "no 'G_ema'" if g is None else f"a {type(g).__name__} as 'G_ema'"
        raise CheckpointError(f"{path} has {what} (keys: {_first(map(str, data))}); an NVIDIA "
                              f"network pickle stores its generator for inference as 'G_ema'")
    config = nvidia_config(g, path)
    state = g.state_dict()
    _check_tensors(state, nvidia_shapes(config), path)
    model = StyleGAN2(config)
    fit_state_dict(model, to_rosinality(state, config, model), path, what="StyleGAN2 (converted from G_ema)")
    return config, model.eval(), state["mapping.w_avg"].detach().float().clone()


def _setting(record: PersistentRecord, name: str, default=None):
    """An attribute the record's forward used, else its constructor argument, else `default`."""
    if name in record.attributes:
        return record.attributes[name]
    return record.init_kwargs.get(name, default)


def _refuse_stylegan3(g: PersistentRecord, path: Path) -> None:
    inputs = [name for name, r in g.walk() if r.class_name == "SynthesisInput"]
    if inputs or any("filtered_lrelu" in r.module_src for _, r in g.walk()):
        why = f"a SynthesisInput at G_ema.{inputs[0]}" if inputs else "filtered_lrelu in its source"
        raise CheckpointError(f"{path}: G_ema is a StyleGAN3 generator (config T/R, networks_stylegan3: "
                              f"{why}); StyleGAN3 networks are not supported yet, only StyleGAN2 ones")


def nvidia_config(g: PersistentRecord, path: Path) -> StyleGAN2Config:
    """The StyleGAN2Config of a recorded NVIDIA Generator; unsupported variants are refused."""
    _refuse_stylegan3(g, path)
    mapping, synthesis = g.children.get("mapping"), g.children.get("synthesis")
    if mapping is None or synthesis is None:
        raise CheckpointError(f"{path}: G_ema ({g.class_name}) has no mapping/synthesis networks "
                              f"(children: {_first(g.children) or 'none'}); is it a StyleGAN2 generator?")
    c_dim = _setting(g, "c_dim", _setting(mapping, "c_dim", 0))
    if c_dim:
        raise CheckpointError(f"{path}: G_ema is conditional (c_dim={c_dim}); class-conditional "
                              f"networks are not supported, only unconditional ones (c_dim=0)")
    img_channels = _setting(g, "img_channels", _setting(synthesis, "img_channels", 3))
    if img_channels != 3:
        raise CheckpointError(f"{path}: G_ema makes {img_channels}-channel images; only RGB (3) is supported")
    blocks = {name: r for name, r in synthesis.children.items() if _BLOCK.fullmatch(name)}
    archs = sorted({str(_setting(b, "architecture", _setting(synthesis, "architecture", "skip")))
                    for b in blocks.values()})
    if archs != ["skip"]:
        raise CheckpointError(f"{path}: G_ema's synthesis architecture is {'/'.join(archs) or 'unknown'}; "
                              f"only 'skip' (the StyleGAN2 config-F generator) is supported, not 'resnet'/'orig'")
    layers = [(f"synthesis.{b}.{n}", r) for b, block in blocks.items() for n, r in block.children.items()]
    convs = [(n, r) for n, r in layers if not n.endswith(".torgb")]
    _refuse_settings(path, mapping, convs)
    clamps = {_setting(r, "conv_clamp", _setting(synthesis, "conv_clamp")) for _, r in layers}
    if len(clamps) > 1:
        raise CheckpointError(f"{path}: G_ema's layers clamp at different values {sorted(map(str, clamps))}")
    conv_clamp = clamps.pop() if clamps else _setting(synthesis, "conv_clamp")
    base = _setting(synthesis, "channel_base", CHANNEL_BASE)
    cmax = _setting(synthesis, "channel_max", CHANNEL_MAX)
    fc0 = mapping.children.get("fc0")
    lr = _setting(fc0, "bias_gain", None) if fc0 is not None else None  # bias_gain is the lr multiplier
    try:
        resolution = int(_setting(g, "img_resolution", _setting(synthesis, "img_resolution", 0)))
        return StyleGAN2Config(
            resolution=resolution,
            channels=tuple((4 << i, min(int(base) // (4 << i), int(cmax)))
                           for i in range(max(resolution.bit_length() - 2, 0))),
            z_dim=int(_setting(g, "z_dim", _setting(mapping, "z_dim", 0))),
            w_dim=int(_setting(g, "w_dim", _setting(mapping, "w_dim", 0))),
            n_mlp=int(_setting(mapping, "num_layers", 8)),
            lr_mlp=float(lr if lr is not None else _setting(mapping, "lr_multiplier", LR_MULTIPLIER)),
            conv_clamp=None if conv_clamp is None else float(conv_clamp))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: G_ema's architecture does not fit StyleGAN2: {exc}") from None


def _refuse_settings(path: Path, mapping: PersistentRecord, convs) -> None:
    """Activations and noise inputs other than StyleGAN2's, which the layout cannot express."""
    fcs = [(f"mapping.{n}", r) for n, r in mapping.children.items() if re.fullmatch(r"fc\d+", n)]
    for name, record in fcs + convs:
        act = _setting(record, "activation", "lrelu")
        if act != "lrelu":
            raise CheckpointError(f"{path}: G_ema.{name} uses activation {act!r}; only 'lrelu' is supported")
    for name, record in convs:
        if not _setting(record, "use_noise", True):
            raise CheckpointError(f"{path}: G_ema.{name} has no noise input (use_noise=False), "
                                  f"which is not supported")


def nvidia_shapes(config: StyleGAN2Config) -> dict[str, tuple[int, ...]]:
    """Every tensor of an NVIDIA StyleGAN2 G_ema with this config, by its dotted name."""
    shapes, width, w = {}, dict(config.channels), config.w_dim
    for i in range(config.n_mlp):
        shapes[f"mapping.fc{i}.weight"] = (w, config.z_dim if i == 0 else w)
        shapes[f"mapping.fc{i}.bias"] = (w,)
    shapes["mapping.w_avg"] = (w,)
    for res, c in config.channels:
        block = f"synthesis.b{res}"
        shapes[f"{block}.resample_filter"] = (4, 4)
        if res == 4:
            shapes[f"{block}.const"] = (c, 4, 4)
        for layer, c_in in ([("conv0", width[res // 2])] if res > 4 else []) + [("conv1", c)]:
            p = f"{block}.{layer}"
            shapes.update({f"{p}.weight": (c, c_in, 3, 3), f"{p}.bias": (c,), f"{p}.affine.weight": (c_in, w),
                           f"{p}.affine.bias": (c_in,), f"{p}.noise_strength": (), f"{p}.noise_const": (res, res),
                           f"{p}.resample_filter": (4, 4)})
        shapes.update({f"{block}.torgb.weight": (3, c, 1, 1), f"{block}.torgb.bias": (3,),
                       f"{block}.torgb.affine.weight": (c, w), f"{block}.torgb.affine.bias": (c,)})
    return shapes


def _check_tensors(state: dict[str, torch.Tensor], shapes: dict, path: Path) -> None:
    missing = set(shapes) - set(state)
    unexpected = set(state) - set(shapes)
    misshaped = [f"{k} {tuple(state[k].shape)} != {v}" for k, v in shapes.items()
                 if k in state and tuple(state[k].shape) != v]
    problems = [f"{len(missing)} missing: {_first(missing)}"] if missing else []
    problems += [f"{len(unexpected)} unexpected: {_first(unexpected)}"] if unexpected else []
    problems += [f"{len(misshaped)} mis-shaped: {_first(misshaped, 3)}"] if misshaped else []
    if problems:
        raise CheckpointError(f"{path}: G_ema's tensors do not fit the StyleGAN2 its settings describe: "
                              + "; ".join(problems))
    fir = torch.tensor([1.0, 3.0, 3.0, 1.0])
    fir = torch.outer(fir, fir) / 64
    odd = [k for k in shapes if k.endswith("resample_filter") and not torch.allclose(state[k].float(), fir)]
    if odd:
        raise CheckpointError(f"{path}: G_ema resamples with a filter other than [1, 3, 3, 1] "
                              f"({_first(odd, 2)}), which StyleGAN2 does not support")


def to_rosinality(state: dict[str, torch.Tensor], config: StyleGAN2Config, model: StyleGAN2) -> dict:
    """NVIDIA G_ema tensors renamed and reshaped to `model`'s (rosinality's) state dict."""
    out = {k: v for k, v in model.state_dict().items() if k.endswith(".kernel")}  # fixed FIR buffers
    for i in range(config.n_mlp):
        out[f"style.{i + 1}.weight"] = state[f"mapping.fc{i}.weight"]
        out[f"style.{i + 1}.bias"] = state[f"mapping.fc{i}.bias"]
    out["input.input"] = state["synthesis.b4.const"][None]

    def styled_conv(dst: str, src: str, noise: int):
        out[f"{dst}.conv.weight"] = state[f"{src}.weight"][None]          # (1, out, in, 3, 3)
        out[f"{dst}.conv.modulation.weight"] = state[f"{src}.affine.weight"]
        out[f"{dst}.conv.modulation.bias"] = state[f"{src}.affine.bias"]
        out[f"{dst}.noise.weight"] = state[f"{src}.noise_strength"].reshape(1)
        out[f"{dst}.activate.bias"] = state[f"{src}.bias"]
        out[f"noises.noise_{noise}"] = state[f"{src}.noise_const"][None, None]

    def to_rgb(dst: str, src: str):
        out[f"{dst}.conv.weight"] = state[f"{src}.weight"][None]          # (1, 3, in, 1, 1)
        out[f"{dst}.conv.modulation.weight"] = state[f"{src}.affine.weight"]
        out[f"{dst}.conv.modulation.bias"] = state[f"{src}.affine.bias"]
        out[f"{dst}.bias"] = state[f"{src}.bias"].reshape(1, 3, 1, 1)

    styled_conv("conv1", "synthesis.b4.conv1", 0)
    to_rgb("to_rgb1", "synthesis.b4.torgb")
    for k, (res, _) in enumerate(config.channels[1:]):
        styled_conv(f"convs.{2 * k}", f"synthesis.b{res}.conv0", 2 * k + 1)
        styled_conv(f"convs.{2 * k + 1}", f"synthesis.b{res}.conv1", 2 * k + 2)
        to_rgb(f"to_rgbs.{k}", f"synthesis.b{res}.torgb")
    return {k: v.detach().float().contiguous().clone() for k, v in out.items()}
