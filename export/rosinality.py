"""Load rosinality stylegan2-pytorch checkpoints into `StyleGAN2`, inferring the architecture.

A rosinality training checkpoint (train.py) is a dict with `g`, `d`, `g_ema`, `g_optim`,
`d_optim`, `args` (an `argparse.Namespace`) and `ada_aug_p`; convert_weight.py writes
`g_ema` and `latent_avg` (the mean w, [w_dim]). A bare `g_ema` state dict loads too. The
file is read with `weights_only=True`, allowing `argparse.Namespace` and nothing else, so
a checkpoint that pickles other objects is refused, never executed. The generator is
rebuilt from the keys and shapes (resolution, n_mlp, z/w dims, every resolution's width),
so any channel multiplier or custom width table loads; the load is strict.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from export.checkpoints import (
    CheckpointError,
    _first,
    check_fit,
    check_tensor_bytes,
    expected_shapes,
    fit_state_dict,
    safe_torch_load,
)
from export.stylegan2 import StyleGAN2, StyleGAN2Config


def _read(path: Path):
    """The checkpoint, read by `safe_torch_load`: its archive bounded first, weights only,
    `argparse.Namespace` (train.py's `args`) the one global allowed."""
    return safe_torch_load(path, [argparse.Namespace],
                           "re-save its generator as a plain state dict (torch.save(ckpt['g_ema'], ...)) "
                           "where you trust the file, or load an NVIDIA .pkl with the NVIDIA loader")


def _generator_state(path: Path, ckpt) -> tuple[dict, torch.Tensor | None]:
    """The g_ema state dict and latent_avg (or None) of a full or bare checkpoint."""
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} holds a {type(ckpt).__name__}, not a rosinality checkpoint dict")
    state, latent_avg = ckpt, None
    if "g_ema" in ckpt:
        state, latent_avg = ckpt["g_ema"], ckpt.get("latent_avg")
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: 'g_ema' is a {type(state).__name__}, not a state dict")
    if "style.1.weight" not in state:
        raise CheckpointError(f"{path} is not a rosinality StyleGAN2 checkpoint: no 'g_ema' and no "
                              f"'style.1.weight' among its keys ({_first(state)})")
    bad = [k for k, v in state.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} generator entries are not (name, tensor) pairs: {_first(bad)}")
    if latent_avg is not None and not isinstance(latent_avg, torch.Tensor):
        raise CheckpointError(f"{path}: 'latent_avg' is a {type(latent_avg).__name__}, not a tensor")
    check_tensor_bytes(list(state.items()) + ([("latent_avg", latent_avg)] if latent_avg is not None else []),
                       path, "its generator's tensors")
    return state, latent_avg


def _indices(state: dict, prefix: str) -> set[int]:
    pattern = re.compile(re.escape(prefix) + r"\.(\d{1,9})\.")  # a longer number is no layer: an unexpected key
    return {int(m.group(1)) for k in state if (m := pattern.match(k))}


def infer_config(state: dict) -> StyleGAN2Config:
    """The architecture a g_ema state dict was built with, from its keys and shapes."""
    style = state["style.1.weight"]
    if style.ndim != 2:
        raise CheckpointError(f"style.1.weight has shape {tuple(style.shape)}, expected (w_dim, z_dim)")
    w_dim, z_dim = style.shape
    n_mlp = max(_indices(state, "style"))
    levels = max([k // 2 + 1 for k in _indices(state, "convs")] + [k + 1 for k in _indices(state, "to_rgbs")],
                 default=0)
    if not 1 <= levels <= 9:  # 8 ... 2048 px
        raise CheckpointError(f"the convs.* / to_rgbs.* keys give {levels} resolutions above 4 px, expected 1 to 9")

    def width(key: str, dim: int, default: int) -> int:
        value = state.get(key)
        return int(value.shape[dim]) if isinstance(value, torch.Tensor) and value.ndim > dim else default

    table = [(4, width("conv1.conv.weight", 1, width("input.input", 1, 512)))]
    for k in range(levels):  # a width read nowhere falls back; the strict load then names the gap
        c = width(f"convs.{2 * k}.conv.weight", 1, width(f"to_rgbs.{k}.conv.weight", 2, table[-1][1]))
        table.append((8 << k, c))
    try:
        return StyleGAN2Config(resolution=4 << levels, channels=tuple(table), z_dim=int(z_dim),
                               w_dim=int(w_dim), n_mlp=n_mlp)
    except ValueError as exc:
        raise CheckpointError(f"the state dict gives no valid StyleGAN2 architecture: {exc}") from None


def load_rosinality(path) -> tuple[StyleGAN2Config, StyleGAN2, torch.Tensor | None]:
    """(config, generator in eval mode, latent_avg [w_dim] or None) from a rosinality file.

    Every problem is one `CheckpointError`: missing, unexpected and mis-shaped keys together.
    """
    path = Path(path)
    state, latent_avg = _generator_state(path, _read(path))
    try:
        config = infer_config(state)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    what = f"a rosinality StyleGAN2 generator ({config.resolution} px, n_mlp {config.n_mlp}, inferred from its keys)"
    check_fit(expected_shapes(lambda: StyleGAN2(config)), state, path, what)  # before anything is allocated
    model = fit_state_dict(StyleGAN2(config), state, path, what)
    if latent_avg is not None:
        if latent_avg.numel() != config.w_dim:
            raise CheckpointError(f"{path}: latent_avg has shape {tuple(latent_avg.shape)}, expected ({config.w_dim},)")
        latent_avg = latent_avg.reshape(config.w_dim).float()
    return config, model.eval(), latent_avg


def _channel_multiplier(config: StyleGAN2Config) -> int | None:
    """The rosinality channel_multiplier whose width table `config` has, if any."""
    if config.resolution > 1024:
        return None
    return next((cm for cm in (1, 2, 4) if StyleGAN2Config.rosinality(config.resolution, channel_multiplier=cm)
                 .channels == config.channels), None)


def _random_state(config: StyleGAN2Config, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A g_ema state dict where every term matters: besides the init, random biases, noise
    strengths, constant input and noise images (rosinality initialises several to zero)."""
    state = StyleGAN2(config).state_dict()
    for key, value in state.items():
        noise = torch.randn(value.shape, generator=gen)
        if key.endswith("kernel"):
            continue                                        # the fixed FIR filter
        if key.startswith("style."):                        # stored / lr_mlp, used x lr_mlp
            state[key] = noise / config.lr_mlp * (1.0 if key.endswith("weight") else 0.1)
        elif key.endswith("modulation.bias"):
            state[key] = 1.0 + 0.1 * noise
        elif key.endswith(("bias", "noise.weight")):
            state[key] = 0.1 * noise
        else:                                               # weights, input.input, noises.*
            state[key] = noise
    return state


def write_random_rosinality_checkpoint(path, config: StyleGAN2Config, seed: int = 0, training: bool = False) -> Path:
    """Random weights in rosinality's exact layout, for tests and benchmarks.

    training=False: a bare g_ema state dict; training=True: the dict train.py saves.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    g_ema = _random_state(config, gen)
    if not training:
        torch.save(g_ema, path)
        return path
    optim = {"state": {}, "param_groups": [{"lr": 0.002, "betas": (0.0, 0.99), "eps": 1e-8,
                                            "params": list(range(len(g_ema)))}]}
    args = argparse.Namespace(size=config.resolution, channel_multiplier=_channel_multiplier(config),
                              latent=config.w_dim, n_mlp=config.n_mlp, r1=10.0, path_regularize=2.0,
                              iter=800000, batch=16, augment=False)
    d = {"convs.0.0.weight": torch.randn(16, 3, 1, 1, generator=gen), "final_linear.1.bias": torch.zeros(1)}
    torch.save({"g": _random_state(config, gen), "d": d, "g_ema": g_ema, "g_optim": optim,
                "d_optim": optim, "args": args, "ada_aug_p": 0.0}, path)
    return path
