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

Every setting read from the file is checked for its type and for the range real networks
have (`_int`, `_number`; StyleGAN2Config's bounds) before anything is sized by it, and the
tensors for what they store (`check_tensor_bytes`) before any is copied. The Python source
the pickle embeds is never run; loading says so once.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from export.checkpoints import CheckpointError, _first, check_tensor_bytes, describe, fit_state_dict
from export.nvidia_pickle import PersistentRecord, read_nvidia_pickle
from export.stylegan2 import (
    MAX_CHANNELS,
    MAX_DIM,
    MAX_LR_MLP,
    MAX_MAPPING_LAYERS,
    MAX_RESOLUTION,
    StyleGAN2,
    StyleGAN2Config,
    _is_int,
    _is_real,
)

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
        raise CheckpointError(f"{path} has {what} (keys: {_first(data)}); an NVIDIA "
                              f"network pickle stores its generator for inference as 'G_ema'")
    _note_embedded_source(data, path)
    config = nvidia_config(g, path)
    state = g.state_dict()
    check_tensor_bytes(state.items(), path, "G_ema's tensors")
    _check_tensors(state, nvidia_shapes(config), path)
    model = StyleGAN2(config)
    fit_state_dict(model, to_rosinality(state, config, model), path, what="StyleGAN2 (converted from G_ema)")
    return config, model.eval(), state["mapping.w_avg"].detach().float().clone()


def _note_embedded_source(data: dict, path: Path) -> None:
    """Say once that the file's embedded Python source (NVIDIA's loader execs it) was ignored."""
    sources = {r.module_src for value in data.values() if isinstance(value, PersistentRecord)
               for _, r in value.walk() if r.module_src}
    if sources:
        print(f"note: {path.name} embeds the Python source of its networks ({len(sources)} module(s), "
              f"{sum(map(len, sources)):,} characters), which NVIDIA's own loader would run; it was ignored, "
              f"never run: G_ema is rebuilt from its recorded settings and tensors", flush=True)


def _setting(record: PersistentRecord, name: str, default=None):
    """An attribute the record's forward used, else its constructor argument, else `default`."""
    if name in record.attributes:
        return record.attributes[name]
    return record.init_kwargs.get(name, default)


def _lookup(records: list[tuple[str, PersistentRecord | None]], name: str, default):
    """(value, where) of setting `name` in the first of `records` ((dotted name, record)) that
    has it, else (default, None): what `_setting(a, n, _setting(b, n, default))` reads."""
    for where, record in records:
        if record is not None and (name in record.attributes or name in record.init_kwargs):
            return _setting(record, name), where
    return default, None


def _bad(path: Path, where: str | None, name: str, value, wanted: str) -> CheckpointError:
    at = f"G_ema.{where}" if where else "G_ema"
    return CheckpointError(f"{path}: {at} has {name} = {describe(value)}; {wanted}, so the file is refused "
                           f"before anything is built")


def _clamp(path: Path, where: str | None, value) -> float | None:
    """A layer's conv_clamp: None (no clamp) or a finite number > 0."""
    if value is None:
        return None
    if not _is_real(value) or not value > 0:
        raise _bad(path, where, "conv_clamp", value, "it is None or a finite number > 0 (NVIDIA's networks: 256)")
    return float(value)


def _int(path: Path, records, name: str, default, low: int, high: int, note: str = "") -> int:
    """Setting `name` as an int in [low, high] (not a bool, not a float)."""
    value, where = _lookup(records, name, default)
    if not _is_int(value) or not low <= value <= high:
        raise _bad(path, where, name, value, f"an NVIDIA StyleGAN2 has an integer from {low:,} to {high:,} there{note}")
    return int(value)


def _number(path: Path, records, name: str, default, high: float, note: str = "") -> float:
    """Setting `name` as a finite number in (0, high] (not a bool)."""
    value, where = _lookup(records, name, default)
    if not _is_real(value) or not 0 < value <= high:
        raise _bad(path, where, name, value, f"an NVIDIA StyleGAN2 has a finite number in (0, {high:g}] there{note}")
    return float(value)


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
    top = [("", g), ("mapping", mapping)]
    c_dim = _int(path, top, "c_dim", 0, 0, 1 << 20)
    if c_dim:
        raise CheckpointError(f"{path}: G_ema is conditional (c_dim={c_dim}); class-conditional "
                              f"networks are not supported, only unconditional ones (c_dim=0)")
    img_channels = _int(path, [("", g), ("synthesis", synthesis)], "img_channels", 3, 1, 1 << 20)
    if img_channels != 3:
        raise CheckpointError(f"{path}: G_ema makes {img_channels}-channel images; only RGB (3) is supported")
    blocks = {name: r for name, r in synthesis.children.items() if _BLOCK.fullmatch(name)}
    archs = set()
    for name, block in blocks.items():
        value, where = _lookup([(f"synthesis.{name}", block), ("synthesis", synthesis)], "architecture", "skip")
        if not isinstance(value, str):
            raise _bad(path, where, "architecture", value, "it is one of 'skip', 'resnet', 'orig'")
        archs.add(value)
    if sorted(archs) != ["skip"]:
        raise CheckpointError(f"{path}: G_ema's synthesis architecture is "
                              f"{'/'.join(describe(a).strip(chr(39)) for a in sorted(archs)) or 'unknown'}; "
                              f"only 'skip' (the StyleGAN2 config-F generator) is supported, not 'resnet'/'orig'")
    layers = [(f"synthesis.{b}.{n}", r) for b, block in blocks.items() for n, r in block.children.items()]
    convs = [(n, r) for n, r in layers if not n.endswith(".torgb")]
    _refuse_settings(path, mapping, convs)
    clamps = {_clamp(path, *reversed(_lookup([(name, record), ("synthesis", synthesis)], "conv_clamp", None)))
              for name, record in layers}
    if len(clamps) > 1:
        raise CheckpointError(f"{path}: G_ema's layers clamp at different values {sorted(map(str, clamps))}")
    conv_clamp = clamps.pop() if clamps else _clamp(path, "synthesis", _setting(synthesis, "conv_clamp"))
    syn = [("synthesis", synthesis)]
    base = _int(path, syn, "channel_base", CHANNEL_BASE, 1, MAX_CHANNELS * MAX_RESOLUTION)
    cmax = _int(path, syn, "channel_max", CHANNEL_MAX, 1, MAX_CHANNELS)
    fc0 = mapping.children.get("fc0")
    if fc0 is not None and _lookup([("mapping.fc0", fc0)], "bias_gain", None)[0] is not None:
        lr = _number(path, [("mapping.fc0", fc0)], "bias_gain", None, MAX_LR_MLP)  # bias_gain is the lr multiplier
    else:
        lr = _number(path, [("mapping", mapping)], "lr_multiplier", LR_MULTIPLIER, MAX_LR_MLP)
    resolution = _int(path, [("", g), ("synthesis", synthesis)], "img_resolution", 0, 8, MAX_RESOLUTION,
                      " (a power of two)")
    if resolution & (resolution - 1):
        raise _bad(path, _lookup([("", g), ("synthesis", synthesis)], "img_resolution", 0)[1], "img_resolution",
                   resolution, f"an NVIDIA StyleGAN2 has a power of two from 8 to {MAX_RESOLUTION} there")
    try:
        return StyleGAN2Config(
            resolution=resolution,
            channels=tuple((4 << i, min(base // (4 << i), cmax)) for i in range(resolution.bit_length() - 2)),
            z_dim=_int(path, top, "z_dim", 0, 1, MAX_DIM),
            w_dim=_int(path, top, "w_dim", 0, 1, MAX_DIM),
            n_mlp=_int(path, [("mapping", mapping)], "num_layers", 8, 1, MAX_MAPPING_LAYERS,
                       " (8 in every published network)"),
            lr_mlp=lr, conv_clamp=conv_clamp)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: G_ema's architecture does not fit StyleGAN2: {exc}") from None


def _refuse_settings(path: Path, mapping: PersistentRecord, convs) -> None:
    """Activations and noise inputs other than StyleGAN2's, which the layout cannot express."""
    fcs = [(f"mapping.{n}", r) for n, r in mapping.children.items() if re.fullmatch(r"fc\d+", n)]
    for name, record in fcs + convs:
        act = _setting(record, "activation", "lrelu")
        if not isinstance(act, str) or act != "lrelu":
            raise CheckpointError(f"{path}: G_ema.{name} uses activation {describe(act)}; only 'lrelu' is supported")
    for name, record in convs:
        use_noise = _setting(record, "use_noise", True)
        if not isinstance(use_noise, bool):
            raise _bad(path, name, "use_noise", use_noise, "it is True or False")
        if not use_noise:
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
