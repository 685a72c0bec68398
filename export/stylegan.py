"""The reference generator: a genforce-style StyleGAN (v1) at 256 px with a 3-dim label.

`ReferenceGenerator().state_dict()` has exactly the keys and shapes of the reference's
checkpoint (`shared/compat/ohlora_state_dict_shapes.json`), and its forward follows the
reference's arithmetic constant for constant:

- mapping: label [B, 3] @ label_weight [3, 16] concatenated after z [B, 512] -> pixel norm
  (eps 1e-8) -> 8 dense layers with equalised learning rate (weight x sqrt(2)/sqrt(fan_in),
  lr_mul 0.01 on weight and bias) and LeakyReLU 0.2 -> w [B, 512];
- truncation: w repeated to the 14 synthesis layers, w_avg + psi (w - w_avg) on the first
  `layers` of them (psi 1.0 by default: no truncation);
- synthesis at full resolution (lod 0): a learned 4x4 constant, then per layer
  [nearest 2x upsample + 3x3 conv below 128 px | 3x3 conv folded into a stride-2
  transposed conv from 128 px on] -> 3x3 [1, 2, 1] blur on upsampling layers -> fixed
  noise x per-channel weight -> bias -> LeakyReLU 0.2 -> instance norm (eps 1e-8) ->
  style modulation x (1 + scale) + shift from an equalised dense layer of w (gain 1);
  a 1x1 ToRGB (gain 1, no activation) at 256 px. Output nominally in [-1, 1].

Inference only: the noise is the checkpoint's fixed buffers, and the ToRGB layers of the
lower resolutions (output0-5) are loaded but unused, as in the reference at lod 0.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

Z_DIM, LABEL_DIM, EMBED_DIM, W_DIM = 512, 3, 16, 512
RESOLUTION, INIT_RES = 256, 4
N_DENSE = 8
MAPPING_LR_MUL = 0.01
GAIN = math.sqrt(2.0)
FUSED_MIN_RES = 128  # genforce's "auto" fused_scale: conv-transpose upsampling from 128 px on
BLOCKS = int(math.log2(RESOLUTION // INIT_RES)) + 1  # 4, 8, ..., 256: 7 resolutions
N_LAYERS = 2 * BLOCKS                                 # 14 style inputs


def channels(res: int) -> int:
    """Feature maps per resolution: 512 up to 32 px, then 256, 128, 64."""
    return min((16 << 10) // res, 512)


def leaky_relu(x: torch.Tensor, slope: float = 0.2) -> torch.Tensor:
    return F.leaky_relu(x, slope)


class PixelNorm(nn.Module):
    def forward(self, x):  # (B, C)
        return x / torch.sqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)


class EqualizedDense(nn.Module):
    """Dense layer whose weight is scaled at run time (equalised learning rate)."""

    def __init__(self, c_in: int, c_out: int, gain: float = GAIN, lr_mul: float = 1.0, activate: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in) / lr_mul)
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.wscale = gain / math.sqrt(c_in) * lr_mul
        self.lr_mul = lr_mul
        self.activate = activate

    def forward(self, x):
        x = F.linear(x, self.weight * self.wscale, self.bias * self.lr_mul)
        return leaky_relu(x) if self.activate else x


class Mapping(nn.Module):
    """(z [B, 512], label [B, 3]) -> w [B, 512]."""

    def __init__(self):
        super().__init__()
        self.label_weight = nn.Parameter(torch.randn(LABEL_DIM, EMBED_DIM))
        self.norm = PixelNorm()
        for i in range(N_DENSE):
            c_in = Z_DIM + EMBED_DIM if i == 0 else W_DIM
            self.add_module(f"dense{i}", EqualizedDense(c_in, W_DIM, lr_mul=MAPPING_LR_MUL))

    def forward(self, z, label):
        x = self.norm(torch.cat([z, label @ self.label_weight], dim=1))  # (B, 528)
        for i in range(N_DENSE):
            x = getattr(self, f"dense{i}")(x)
        return x


class Truncation(nn.Module):
    """w [B, 512] -> per-layer codes wp [B, 14, 512], truncated towards w_avg if psi < 1."""

    def __init__(self):
        super().__init__()
        self.register_buffer("w_avg", torch.zeros(W_DIM))

    def forward(self, w, psi: float = 1.0, layers: int = N_LAYERS):
        wp = w.unsqueeze(1).repeat(1, N_LAYERS, 1)
        if psi >= 1.0 or layers <= 0:
            return wp
        coefs = torch.ones(1, N_LAYERS, 1, dtype=w.dtype, device=w.device)
        coefs[:, :layers] = psi
        return self.w_avg + (wp - self.w_avg) * coefs


class NoiseInput(nn.Module):
    """Adds a fixed noise image, scaled per channel."""

    def __init__(self, res: int, c: int):
        super().__init__()
        self.register_buffer("noise", torch.randn(1, 1, res, res))
        self.weight = nn.Parameter(torch.zeros(c))

    def forward(self, x):
        return x + self.noise * self.weight.view(1, -1, 1, 1)


class StyleMod(nn.Module):
    """x * (1 + scale(w)) + shift(w), with [scale; shift] from an equalised dense layer (gain 1)."""

    def __init__(self, c: int):
        super().__init__()
        self.channels = c
        self.weight = nn.Parameter(torch.randn(2 * c, W_DIM))
        self.bias = nn.Parameter(torch.zeros(2 * c))
        self.wscale = 1.0 / math.sqrt(W_DIM)

    def forward(self, x, w):
        style = F.linear(w, self.weight * self.wscale, self.bias).view(-1, 2, self.channels, 1, 1)
        return x * (style[:, 0] + 1) + style[:, 1]


class Blur(nn.Module):
    """Depthwise 3x3 blur; the kernel is a checkpoint buffer ([1, 2, 1] outer product / 16)."""

    def __init__(self, c: int):
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        k = torch.outer(k, k) / 16.0
        self.register_buffer("kernel", k.expand(c, 1, 3, 3).clone())

    def forward(self, x):
        return F.conv2d(x, self.kernel, padding=1, groups=x.shape[1])


def instance_norm(x: torch.Tensor) -> torch.Tensor:
    x = x - torch.mean(x, dim=[2, 3], keepdim=True)
    return x / torch.sqrt(torch.mean(x * x, dim=[2, 3], keepdim=True) + 1e-8)


class StyleLayer(nn.Module):
    """One synthesis layer. kind: "const" (4x4 input), "up" (upsampling conv) or "conv"."""

    def __init__(self, kind: str, c_in: int, c_out: int, res: int):
        super().__init__()
        self.kind = kind
        self.fused = kind == "up" and res >= FUSED_MIN_RES
        if kind == "const":
            self.const = nn.Parameter(torch.ones(1, c_out, res, res))
        else:
            self.weight = nn.Parameter(torch.randn(c_out, c_in, 3, 3))
            self.wscale = GAIN / math.sqrt(9 * c_in)
        if kind == "up":
            self.blur = Blur(c_out)
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.apply_noise = NoiseInput(res, c_out)
        self.style = StyleMod(c_out)

    def _convolve(self, x):
        weight = self.weight * self.wscale
        if self.fused:
            # Upsample + conv as one stride-2 transposed conv: the 3x3 kernel summed over its
            # four 1-pixel shifts gives the 4x4 transposed kernel.
            # (Zero padding by concatenation: the ONNX exporter loses the kernel's shape through Pad.)
            c_out, c_in = weight.shape[:2]
            weight = torch.cat([z := weight.new_zeros(c_out, c_in, 1, 3), weight, z], dim=2)
            weight = torch.cat([z := weight.new_zeros(c_out, c_in, 5, 1), weight, z], dim=3)
            weight = weight[:, :, 1:, 1:] + weight[:, :, :-1, 1:] + weight[:, :, 1:, :-1] + weight[:, :, :-1, :-1]
            return F.conv_transpose2d(x, weight.permute(1, 0, 2, 3), stride=2, padding=1)
        if self.kind == "up":
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return F.conv2d(x, weight, padding=1)

    def forward(self, x, w):
        if self.kind == "const":
            x = self.const.repeat(w.shape[0], 1, 1, 1)
        else:
            x = self._convolve(x)
            if self.kind == "up":
                x = self.blur(x)
        x = self.apply_noise(x) + self.bias.view(1, -1, 1, 1)
        return self.style(instance_norm(leaky_relu(x)), w)


class ToRGB(nn.Module):
    def __init__(self, c_in: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, c_in, 1, 1))
        self.bias = nn.Parameter(torch.zeros(3))
        self.wscale = 1.0 / math.sqrt(c_in)

    def forward(self, x):
        return F.conv2d(x, self.weight * self.wscale) + self.bias.view(1, -1, 1, 1)


class Synthesis(nn.Module):
    """wp [B, 14, 512] -> image [B, 3, 256, 256] at lod 0."""

    def __init__(self):
        super().__init__()
        self.register_buffer("lod", torch.zeros(()))
        for block in range(BLOCKS):
            res = INIT_RES << block
            if block == 0:
                first = StyleLayer("const", channels(res), channels(res), res)
            else:
                first = StyleLayer("up", channels(res // 2), channels(res), res)
            self.add_module(f"layer{2 * block}", first)
            self.add_module(f"layer{2 * block + 1}", StyleLayer("conv", channels(res), channels(res), res))
            self.add_module(f"output{block}", ToRGB(channels(res)))

    def forward(self, wp):
        x = None
        for i in range(N_LAYERS):
            x = getattr(self, f"layer{i}")(x, wp[:, i])
        return getattr(self, f"output{BLOCKS - 1}")(x)


class ReferenceGenerator(nn.Module):
    """The whole generator, named as in the checkpoint: mapping, truncation, synthesis."""

    def __init__(self):
        super().__init__()
        self.mapping = Mapping()
        self.truncation = Truncation()
        self.synthesis = Synthesis()

    def forward(self, z, label, psi: float = 1.0):
        return self.synthesis(self.truncation(self.mapping(z, label), psi))


class CodeToW(nn.Module):
    """Bundle graph `mapping`: code [B, 515] (z, then the 3 label dims) -> w [B, 512]."""

    def __init__(self, generator: ReferenceGenerator):
        super().__init__()
        self.mapping = generator.mapping

    def forward(self, code):
        return self.mapping(code[:, :Z_DIM], code[:, Z_DIM:])


class WToImage(nn.Module):
    """Bundle graph `synthesis`: w [B, 512] -> image [B, 3, 256, 256] clipped to [-1, 1].

    The reference saved every image as an 8-bit file before scoring it, which clips the
    generator's output to [-1, 1]; the clip keeps that, without the quantisation.
    """

    def __init__(self, generator: ReferenceGenerator, psi: float = 1.0):
        super().__init__()
        self.truncation = generator.truncation
        self.synthesis = generator.synthesis
        self.psi = psi

    def forward(self, w):
        return torch.clamp(self.synthesis(self.truncation(w, self.psi)), -1.0, 1.0)
