"""StyleGAN2 generator (Karras et al. 2020, config F) in rosinality's state-dict layout.

`StyleGAN2(config).state_dict()` has exactly the keys and shapes of rosinality
stylegan2-pytorch's `Generator` (the `g_ema` of its checkpoints), persistent buffers
included, and the forward computes what `Generator(..., input_is_latent=True,
randomize_noise=False)` computes, constant for constant:

- mapping: pixel norm (eps 1e-8), then `n_mlp` dense layers with equalised learning rate
  (weight x lr_mlp / sqrt(fan_in), bias x lr_mlp), bias + leaky ReLU 0.2 x sqrt(2);
- synthesis: a learned 4x4 constant; per layer a modulated 3x3 conv (style from an
  equalised dense layer with bias initialised to 1, weight x 1/sqrt(fan_in), demodulation
  eps 1e-8), + fixed noise x a learned scalar, bias + leaky ReLU 0.2 x sqrt(2); the first
  conv of each resolution up-samples (stride-2 transposed conv, then a [1, 3, 3, 1] FIR
  blur); a modulated 1x1 ToRGB (no demodulation) per resolution, summed into an RGB skip
  that is FIR-up-sampled 2x between resolutions. The image is not clamped.

Export form: the modulated conv scales the input activations by the style, convolves with
the shared weight and scales the output by the per-sample demodulation coefficient
(rosinality's `fused=False` path), so no convolution has the batch size as its group
count and an ONNX export keeps a dynamic batch axis. FIR filters are depthwise
conv / conv_transpose ops. `conv_clamp` (NVIDIA networks: 256) clamps each layer's
output after the activation gain, as StyleGAN2-ADA's `bias_act` does.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from export.checkpoints import describe

FIR = (1.0, 3.0, 3.0, 1.0)  # the paper's up-sampling filter, as an outer product
GAIN = math.sqrt(2.0)       # leaky ReLU gain that keeps activations at unit variance
EPS = 1e-8


# Bounds on a generator's settings: well above every published StyleGAN2 (config F: 1024 px,
# z/w 512, 8 mapping layers, at most 512 channels), far below what exhausts a machine.
MAX_RESOLUTION = 4096
MAX_DIM = 4096             # z_dim, w_dim
MAX_MAPPING_LAYERS = 32
MAX_CHANNELS = 4096
MAX_LR_MLP = 100.0


def _is_int(value) -> bool:
    """An integer and not a bool (True is 1 to Python, never a width to a network)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_real(value) -> bool:
    """A finite real number and not a bool."""
    return (isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
            and math.isfinite(value))


def _short(value) -> str:
    """A setting for an error message, short whatever it is (a file may put anything there)."""
    return describe(value)


@dataclass(frozen=True)
class StyleGAN2Config:
    """Architecture of one generator; everything the state dict's shapes depend on."""

    resolution: int                        # power of two >= 8
    channels: tuple[tuple[int, int], ...]  # (res, channels) for res = 4, 8, ..., resolution
    z_dim: int = 512
    w_dim: int = 512
    n_mlp: int = 8
    lr_mlp: float = 0.01
    conv_clamp: float | None = None        # NVIDIA nets clamp activations to +-conv_clamp (256)

    def __post_init__(self):
        # Ranges real networks have, checked before anything is built: a file's settings
        # decide how much is allocated (a 10^7-layer mapping, a 10^6-wide z).
        r = self.resolution
        if not _is_int(r) or not 8 <= r <= MAX_RESOLUTION or r & (r - 1):
            raise ValueError(f"resolution must be a power of two from 8 to {MAX_RESOLUTION}, got {_short(r)}")
        try:
            table = tuple((res, c) for res, c in self.channels)
        except (TypeError, ValueError):
            raise ValueError(f"channels must be (res, channels) pairs, got {_short(self.channels)}") from None
        wanted = [4 << i for i in range(int(r).bit_length() - 2)]
        if not all(_is_int(res) and _is_int(c) for res, c in table):
            raise ValueError(f"channels must be (res, channels) pairs of integers, got {_short(self.channels)}")
        table = tuple((int(res), int(c)) for res, c in table)
        if [res for res, _ in table] != wanted or not all(1 <= c <= MAX_CHANNELS for _, c in table):
            raise ValueError(f"channels must give a width from 1 to {MAX_CHANNELS} for res = {wanted}, "
                             f"got {_short(table) if len(table) > len(wanted) + 4 else table}")
        object.__setattr__(self, "channels", table)
        for name, top in (("z_dim", MAX_DIM), ("w_dim", MAX_DIM), ("n_mlp", MAX_MAPPING_LAYERS)):
            value = getattr(self, name)
            if not _is_int(value) or not 1 <= value <= top:
                raise ValueError(f"{name} must be an integer from 1 to {top}, got {_short(value)}")
            object.__setattr__(self, name, int(value))
        if not _is_real(self.lr_mlp) or not 0 < self.lr_mlp <= MAX_LR_MLP:
            raise ValueError(f"lr_mlp must be a finite number in (0, {MAX_LR_MLP:g}], got {_short(self.lr_mlp)}")
        if self.conv_clamp is not None and not (_is_real(self.conv_clamp) and self.conv_clamp > 0):
            raise ValueError(f"conv_clamp must be None or a finite number > 0, got {_short(self.conv_clamp)}")

    @property
    def num_ws(self) -> int:
        """Style inputs of the synthesis: two convs per resolution (one at 4 px) + the last ToRGB."""
        return 2 * int(math.log2(self.resolution)) - 2

    @classmethod
    def rosinality(cls, resolution: int, z_dim: int = 512, n_mlp: int = 8, channel_multiplier: int = 2,
                   lr_mlp: float = 0.01) -> StyleGAN2Config:
        """rosinality's `Generator(size, style_dim, n_mlp, channel_multiplier)` (style_dim is z and w)."""
        cm = channel_multiplier
        table = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm,
                 256: 64 * cm, 512: 32 * cm, 1024: 16 * cm}
        if resolution not in table or resolution < 8:
            raise ValueError(f"rosinality's generator has resolution 8 ... 1024, got {resolution!r}")
        return cls(resolution, tuple((r, c) for r, c in table.items() if r <= resolution),
                   z_dim, z_dim, n_mlp, lr_mlp)

    def multiply_adds(self) -> int:
        """Multiply-adds per image of the export form: dense layers, modulation, demodulation,
        convolutions and FIR filters; element-wise ops (noise, bias, activation) not counted."""
        width = dict(self.channels)
        macs = self.z_dim * self.w_dim + (self.n_mlp - 1) * self.w_dim ** 2

        def styled_conv(c_in, c_out, res, up):
            conv = c_in * c_out * 9 * (res // 2 if up else res) ** 2  # transposed: per input pixel
            blur = c_out * 16 * res ** 2 if up else 0
            return self.w_dim * c_in + c_in * c_out + conv + blur

        def to_rgb(c_in, res):
            skip = 3 * 16 * (res // 2) ** 2 if res > 4 else 0
            return self.w_dim * c_in + 3 * c_in * res ** 2 + skip

        macs += styled_conv(width[4], width[4], 4, False) + to_rgb(width[4], 4)
        for res, c in self.channels[1:]:
            macs += styled_conv(width[res // 2], c, res, True) + styled_conv(c, c, res, False) + to_rgb(c, res)
        return macs


def fir_kernel() -> torch.Tensor:
    """The 4x4 FIR filter with gain 4 (sum 4): the up-sampled image keeps its mean."""
    k = torch.tensor(FIR)
    return torch.outer(k, k) / k.sum() ** 2 * 4


class PixelNorm(nn.Module):
    """Normalises each latent to unit second moment, so the mapping sees codes on a sphere."""

    def forward(self, z):  # (B, z_dim)
        return z * torch.rsqrt(torch.mean(z * z, dim=1, keepdim=True) + EPS)


class EqualLinear(nn.Module):
    """Dense layer with equalised learning rate: the N(0, 1/lr_mul) weight is scaled at run time."""

    def __init__(self, c_in: int, c_out: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activate: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in) / lr_mul)
        self.bias = nn.Parameter(torch.full((c_out,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(c_in)
        self.lr_mul = lr_mul
        self.activate = activate

    def forward(self, x):  # (B, c_in) -> (B, c_out)
        if self.activate:
            return F.leaky_relu(F.linear(x, self.weight * self.scale) + self.bias * self.lr_mul, 0.2) * GAIN
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class FusedLeakyReLU(nn.Module):
    """Bias, leaky ReLU 0.2 and gain sqrt(2); NVIDIA networks then clamp to +-clamp."""

    def __init__(self, channels: int, clamp: float | None = None):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.clamp = clamp

    def forward(self, x):  # (B, C, H, W)
        x = F.leaky_relu(x + self.bias[None, :, None, None], 0.2) * GAIN
        return x if self.clamp is None else torch.clamp(x, -self.clamp, self.clamp)


class Blur(nn.Module):
    """FIR low-pass after the transposed conv, padded (1, 1): removes its checkerboard aliasing."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("kernel", fir_kernel())
        self.channels = channels

    def forward(self, x):  # (B, C, 2H+1, 2W+1) -> (B, C, 2H, 2W)
        # upfirdn2d convolves (flipped kernel); conv2d correlates.
        k = torch.flip(self.kernel, [0, 1])[None, None].expand(self.channels, 1, 4, 4)
        return F.conv2d(x, k, padding=1, groups=self.channels)


class Upsample(nn.Module):
    """2x FIR up-sampling of the RGB skip (upfirdn2d up=2, pad (2, 1)).

    Zero insertion + padding + the 4x4 filter is a stride-2 transposed conv with the
    unflipped kernel and padding 1, which exports as one standard ONNX op.
    """

    def __init__(self, channels: int = 3):
        super().__init__()
        self.register_buffer("kernel", fir_kernel())
        self.channels = channels

    def forward(self, x):  # (B, C, H, W) -> (B, C, 2H, 2W)
        k = self.kernel[None, None].expand(self.channels, 1, 4, 4)
        return F.conv_transpose2d(x, k, stride=2, padding=1, groups=self.channels)


class ModulatedConv2d(nn.Module):
    """Weight modulation and demodulation, applied to the activations instead of the weight.

    conv(x * s, w) * d equals conv(x, w * s * d) for the per-sample style s and
    demodulation d = 1 / sqrt(sum (w * s)^2 + eps), without a per-sample weight: the conv
    is shared by the batch, so an export does not fix the batch size.
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int, w_dim: int, demodulate: bool = True,
                 upsample: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, c_out, c_in, kernel_size, kernel_size))
        self.modulation = EqualLinear(w_dim, c_in, bias_init=1.0)
        if upsample:
            self.blur = Blur(c_out)
        self.scale = 1 / math.sqrt(c_in * kernel_size ** 2)
        self.demodulate = demodulate
        self.upsample = upsample
        self.padding = kernel_size // 2

    def forward(self, x, w):  # x (B, c_in, H, W), w (B, w_dim)
        weight = self.weight[0] * self.scale               # (c_out, c_in, k, k)
        style = self.modulation(w)                         # (B, c_in)
        x = x * style[:, :, None, None]
        if self.upsample:
            x = self.blur(F.conv_transpose2d(x, weight.transpose(0, 1), stride=2))  # (B, c_out, 2H, 2W)
        else:
            x = F.conv2d(x, weight, padding=self.padding)  # (B, c_out, H, W)
        if self.demodulate:
            # sum over (c_in, k, k) of (w s)^2 = s^2 @ (sum over k of w^2)^T
            demod = torch.rsqrt(style.square() @ weight.square().sum([2, 3]).t() + EPS)  # (B, c_out)
            x = x * demod[:, :, None, None]
        return x


class NoiseInjection(nn.Module):
    """Adds a single-channel noise image times a learned scalar: stochastic detail."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x, noise):  # x (B, C, H, W), noise (1, 1, H, W)
        return x + self.weight * noise


class ConstantInput(nn.Module):
    """The learned 4x4 input of the synthesis, the same for every image."""

    def __init__(self, channels: int):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, 4, 4))

    def forward(self, ws):  # ws (B, ...) -> (B, C, 4, 4)
        return self.input.expand(ws.shape[0], -1, -1, -1)


class StyledConv(nn.Module):
    """One synthesis layer: modulated 3x3 conv, noise, bias + activation."""

    def __init__(self, c_in: int, c_out: int, w_dim: int, upsample: bool = False, clamp: float | None = None):
        super().__init__()
        self.conv = ModulatedConv2d(c_in, c_out, 3, w_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(c_out, clamp)

    def forward(self, x, w, noise):
        return self.activate(self.noise(self.conv(x, w), noise))


class ToRGB(nn.Module):
    """Modulated 1x1 conv to RGB (no demodulation) added to the up-sampled RGB skip."""

    def __init__(self, c_in: int, w_dim: int, upsample: bool = True, clamp: float | None = None):
        super().__init__()
        if upsample:
            self.upsample = Upsample(3)
        self.conv = ModulatedConv2d(c_in, 3, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.clamp = clamp

    def forward(self, x, w, skip=None):  # x (B, C, H, W), skip (B, 3, H/2, W/2) -> (B, 3, H, W)
        rgb = self.conv(x, w) + self.bias
        if self.clamp is not None:
            rgb = torch.clamp(rgb, -self.clamp, self.clamp)
        return rgb if skip is None else rgb + self.upsample(skip)


class StyleGAN2(nn.Module):
    """z -> w (mapping) -> image (synthesis); module names are rosinality's `Generator`'s."""

    def __init__(self, config: StyleGAN2Config):
        super().__init__()
        self.config = config
        cfg, width = config, dict(config.channels)
        self.style = nn.Sequential(PixelNorm(), *[
            EqualLinear(cfg.z_dim if i == 0 else cfg.w_dim, cfg.w_dim, lr_mul=cfg.lr_mlp, activate=True)
            for i in range(cfg.n_mlp)])
        self.input = ConstantInput(width[4])
        self.conv1 = StyledConv(width[4], width[4], cfg.w_dim, clamp=cfg.conv_clamp)
        self.to_rgb1 = ToRGB(width[4], cfg.w_dim, upsample=False, clamp=cfg.conv_clamp)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        for res, c in config.channels[1:]:
            self.convs.append(StyledConv(width[res // 2], c, cfg.w_dim, upsample=True, clamp=cfg.conv_clamp))
            self.convs.append(StyledConv(c, c, cfg.w_dim, clamp=cfg.conv_clamp))
            self.to_rgbs.append(ToRGB(c, cfg.w_dim, clamp=cfg.conv_clamp))
        # Fixed noise images, one per conv (4 px, then two per resolution): the checkpoint's
        # own, so that an image is a function of its code alone.
        self.noises = nn.Module()
        for i in range(1 + len(self.convs)):
            res = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, res, res))

    def mapping(self, z):  # (B, z_dim) -> (B, w_dim)
        return self.style(z)

    def synthesis(self, ws):  # (B, num_ws, w_dim) -> (B, 3, R, R)
        noise = [getattr(self.noises, f"noise_{i}") for i in range(1 + len(self.convs))]
        x = self.conv1(self.input(ws), ws[:, 0], noise[0])  # (B, C4, 4, 4)
        rgb = self.to_rgb1(x, ws[:, 1])                                 # (B, 3, 4, 4)
        for k, to_rgb in enumerate(self.to_rgbs):
            x = self.convs[2 * k](x, ws[:, 2 * k + 1], noise[2 * k + 1])  # up-sampling conv
            x = self.convs[2 * k + 1](x, ws[:, 2 * k + 2], noise[2 * k + 2])
            rgb = to_rgb(x, ws[:, 2 * k + 3], rgb)
        return rgb

    def forward(self, z):  # (B, z_dim) -> (B, 3, R, R)
        return self.synthesis(self.mapping(z).unsqueeze(1).repeat(1, self.config.num_ws, 1))
