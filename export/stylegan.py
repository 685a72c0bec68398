"""genforce's StyleGAN (v1) generator at any resolution from 8 to 1024 px, with or without a label.

`GenforceConfig` is one generator's shape; the default, `GenforceConfig.ohlora()`, is the reference's
(256 px, a 3-dim label embedded in 16 dims). `ReferenceGenerator(config).state_dict()` has exactly the
keys and shapes of a genforce checkpoint of that shape (the reference's:
`shared/compat/ohlora_state_dict_shapes.json`); its forward follows genforce's arithmetic:

- mapping: label [B, L] @ label_weight [L, E] concatenated after z [B, Z] (no label: z alone) ->
  pixel norm (eps 1e-8) -> dense layers with equalised learning rate (weight x sqrt(2)/sqrt(fan_in),
  lr_mul 0.01 on weight and bias) and LeakyReLU 0.2 -> w [B, W];
- truncation: w repeated to the num_ws synthesis layers (or per-layer codes ws as given),
  w_avg + psi (w - w_avg) on the first `layers` of them (psi 1.0 by default: no truncation);
- synthesis at full resolution (lod 0): a learned 4x4 constant, then per layer
  [nearest 2x upsample + 3x3 conv below 128 px | 3x3 conv folded into a stride-2
  transposed conv from 128 px on] -> 3x3 [1, 2, 1] blur on upsampling layers -> fixed
  noise x per-channel weight -> bias -> LeakyReLU 0.2 -> instance norm (eps 1e-8) ->
  style modulation x (1 + scale) + shift from an equalised dense layer of w (gain 1);
  a 1x1 ToRGB (gain 1, no activation, no tanh) at full resolution. Output nominally in [-1, 1].

Inference only: the noise is the checkpoint's fixed buffers, and the ToRGB layers of the
lower resolutions are loaded but unused, as in genforce at lod 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# The reference (Oh-LoRA) generator, GenforceConfig.ohlora(), and genforce's constants.
Z_DIM, LABEL_DIM, EMBED_DIM, W_DIM = 512, 3, 16, 512
RESOLUTION, INIT_RES = 256, 4
N_DENSE = 8
MAPPING_LR_MUL = 0.01
GAIN = math.sqrt(2.0)
FUSED_MIN_RES = 128  # genforce's "auto" fused_scale: conv-transpose upsampling from 128 px on
BLOCKS = int(math.log2(RESOLUTION // INIT_RES)) + 1  # 4, 8, ..., 256: 7 resolutions
N_LAYERS = 2 * BLOCKS                                 # 14 style inputs
RESOLUTIONS = tuple(8 << i for i in range(8))         # genforce's: 8, 16, ..., 1024


def channels(res: int, fmaps_base: int = 16 << 10, fmaps_max: int = 512) -> int:
    """genforce's feature maps per resolution, min(fmaps_base // res, fmaps_max): with its
    defaults 512 up to 32 px, then 256, 128, 64, 32, 16 at 1024 px."""
    return min(fmaps_base // res, fmaps_max)


# Bounds on a generator's settings, read from a file's shapes and checked before anything is
# built: far above genforce's (z/w/fmaps 512, 8 mapping layers, 512 channels), far below what
# exhausts a machine.
MAX_DIM = 4096            # z_dim, w_dim, label_dim, embed_dim, mapping_fmaps, channels
MAX_MAPPING_LAYERS = 32


def _check_int(name: str, value, minimum: int = 1, maximum: int = MAX_DIM) -> None:
    shown = repr(value) if isinstance(value, int) and value.bit_length() <= 64 else f"a {type(value).__name__}"
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {shown}")
    if value > maximum:
        raise ValueError(f"{name} must be at most {maximum} (no real StyleGAN has more), got {shown}")


@dataclass(frozen=True)
class GenforceConfig:
    """The shape of one genforce StyleGAN generator: all that its state dict's shapes fix, plus
    two constants they cannot show (the mapping's lr multiplier, the fused-scale threshold).
    After construction `embed_dim` and `channels` are explicit, so that two configs of one
    generator compare equal however they were written.
    """

    resolution: int
    z_dim: int = 512
    w_dim: int = 512
    label_dim: int = 0                       # 0: unconditional
    embed_dim: int | None = None             # label embedding width; None: z_dim, as in genforce
    mapping_layers: int = 8
    mapping_fmaps: int = 512                 # width of the mapping's hidden layers
    channels: tuple[int, ...] | None = None  # feature maps per block, 4 px .. resolution; None: channels(res)
    mapping_lr_mul: float = MAPPING_LR_MUL
    fused_min_res: int = FUSED_MIN_RES       # genforce's fused_scale "auto"

    def __post_init__(self):
        if isinstance(self.resolution, bool) or not isinstance(self.resolution, int) or \
                self.resolution not in RESOLUTIONS:
            raise ValueError(f"resolution must be one of {', '.join(map(str, RESOLUTIONS))}, got {self.resolution!r}")
        for name in ("z_dim", "w_dim", "mapping_fmaps", "fused_min_res"):
            _check_int(name, getattr(self, name))
        _check_int("mapping_layers", self.mapping_layers, maximum=MAX_MAPPING_LAYERS)
        if isinstance(self.mapping_lr_mul, bool) or not isinstance(self.mapping_lr_mul, (int, float)) or \
                not 0 < self.mapping_lr_mul < math.inf:
            raise ValueError(f"mapping_lr_mul must be a finite number > 0, got {self.mapping_lr_mul!r}")
        _check_int("label_dim", self.label_dim, minimum=0)
        if self.label_dim == 0 and self.embed_dim not in (None, 0):
            raise ValueError(f"embed_dim is for a label; with label_dim 0 it must be None or 0, not {self.embed_dim!r}")
        embed = 0 if self.label_dim == 0 else self.z_dim if self.embed_dim is None else self.embed_dim
        _check_int("embed_dim", embed, minimum=int(self.label_dim > 0))
        table = tuple(self.channels or (channels(INIT_RES << b) for b in range(self.blocks)))
        if len(table) != self.blocks:
            raise ValueError(f"channels must give {self.blocks} values (4 to {self.resolution} px), got {len(table)}")
        for c in table:
            _check_int("every channels value", c)
        object.__setattr__(self, "embed_dim", embed)
        object.__setattr__(self, "channels", table)

    @classmethod
    def ohlora(cls) -> GenforceConfig:
        """The reference generator: 256 px, a 3-dim label embedded in 16 dims."""
        return cls(resolution=RESOLUTION, z_dim=Z_DIM, w_dim=W_DIM, label_dim=LABEL_DIM, embed_dim=EMBED_DIM)

    @property
    def blocks(self) -> int:  # resolutions synthesised: 4, 8, ..., resolution
        return int(math.log2(self.resolution // INIT_RES)) + 1

    @property
    def num_ws(self) -> int:  # style inputs (per-layer codes): two per resolution, 2 log2(R) - 2
        return 2 * self.blocks

    @property
    def code_dim(self) -> int:  # the bundle's mapping input: z, then the label
        return self.z_dim + self.label_dim


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
    """(z [B, Z], label [B, L] or None) -> w [B, W]."""

    def __init__(self, config: GenforceConfig):
        super().__init__()
        self.n_dense, self.conditional = config.mapping_layers, config.label_dim > 0
        if self.conditional:
            self.label_weight = nn.Parameter(torch.randn(config.label_dim, config.embed_dim))
        self.norm = PixelNorm()
        for i in range(self.n_dense):
            c_in = config.z_dim + config.embed_dim if i == 0 else config.mapping_fmaps
            c_out = config.w_dim if i == self.n_dense - 1 else config.mapping_fmaps
            self.add_module(f"dense{i}", EqualizedDense(c_in, c_out, lr_mul=config.mapping_lr_mul))

    def forward(self, z, label=None):
        if self.conditional:
            z = torch.cat([z, label @ self.label_weight], dim=1)  # (B, Z + E)
        x = self.norm(z)
        for i in range(self.n_dense):
            x = getattr(self, f"dense{i}")(x)
        return x


class Truncation(nn.Module):
    """w [B, W] (repeated to every layer) or ws [B, num_ws, W] -> per-layer codes wp [B, num_ws, W],
    truncated towards w_avg on the first `layers` (None: all) if psi < 1."""

    def __init__(self, num_ws: int = N_LAYERS, w_dim: int = W_DIM):
        super().__init__()
        self.num_ws = num_ws
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, w, psi: float = 1.0, layers: int | None = None):
        wp = w.unsqueeze(1).repeat(1, self.num_ws, 1) if w.dim() == 2 else w
        if psi >= 1.0 or (layers is not None and layers <= 0):
            return wp
        coefs = torch.ones(1, self.num_ws, 1, dtype=w.dtype, device=w.device)
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

    def __init__(self, c: int, w_dim: int = W_DIM):
        super().__init__()
        self.channels = c
        self.weight = nn.Parameter(torch.randn(2 * c, w_dim))
        self.bias = nn.Parameter(torch.zeros(2 * c))
        self.wscale = 1.0 / math.sqrt(w_dim)

    def forward(self, x, w):
        style = F.linear(w, self.weight * self.wscale, self.bias).view(-1, 2, self.channels, 1, 1)
        return x * (style[:, 0] + 1) + style[:, 1]


class Blur(nn.Module):
    """Depthwise 3x3 blur; the kernel is a checkpoint buffer ([1, 2, 1] outer product / 16)."""

    def __init__(self, c: int):
        super().__init__()
        k = torch.outer(torch.tensor([1.0, 2.0, 1.0]), torch.tensor([1.0, 2.0, 1.0])) / 16.0
        self.register_buffer("kernel", k.expand(c, 1, 3, 3).clone())

    def forward(self, x):
        return F.conv2d(x, self.kernel, padding=1, groups=x.shape[1])


def instance_norm(x: torch.Tensor) -> torch.Tensor:
    x = x - torch.mean(x, dim=[2, 3], keepdim=True)
    return x / torch.sqrt(torch.mean(x * x, dim=[2, 3], keepdim=True) + 1e-8)


class StyleLayer(nn.Module):
    """One synthesis layer. kind: "const" (4x4 input), "up" (upsampling conv) or "conv"."""

    def __init__(self, kind: str, c_in: int, c_out: int, res: int, w_dim=W_DIM, fused_min_res=FUSED_MIN_RES):
        super().__init__()
        self.kind = kind
        self.fused = kind == "up" and res >= fused_min_res
        if kind == "const":
            self.const = nn.Parameter(torch.ones(1, c_out, res, res))
        else:
            self.weight = nn.Parameter(torch.randn(c_out, c_in, 3, 3))
            self.wscale = GAIN / math.sqrt(9 * c_in)
        if kind == "up":
            self.blur = Blur(c_out)
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.apply_noise = NoiseInput(res, c_out)
        self.style = StyleMod(c_out, w_dim)

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
    """wp [B, num_ws, W] -> image [B, 3, R, R] at lod 0."""

    def __init__(self, config: GenforceConfig):
        super().__init__()
        self.num_ws, self.blocks = config.num_ws, config.blocks
        self.register_buffer("lod", torch.zeros(()))
        c, shared = config.channels, (config.w_dim, config.fused_min_res)
        for block in range(self.blocks):
            res = INIT_RES << block
            if block == 0:
                first = StyleLayer("const", c[0], c[0], res, *shared)
            else:
                first = StyleLayer("up", c[block - 1], c[block], res, *shared)
            self.add_module(f"layer{2 * block}", first)
            self.add_module(f"layer{2 * block + 1}", StyleLayer("conv", c[block], c[block], res, *shared))
            self.add_module(f"output{block}", ToRGB(c[block]))

    def forward(self, wp):
        x = None
        for i in range(self.num_ws):
            x = getattr(self, f"layer{i}")(x, wp[:, i])
        return getattr(self, f"output{self.blocks - 1}")(x)


class ReferenceGenerator(nn.Module):
    """The whole generator, named as in genforce's checkpoints: mapping, truncation, synthesis."""

    def __init__(self, config: GenforceConfig | None = None):
        super().__init__()
        self.config = GenforceConfig.ohlora() if config is None else config
        self.mapping = Mapping(self.config)
        self.truncation = Truncation(self.config.num_ws, self.config.w_dim)
        self.synthesis = Synthesis(self.config)

    def forward(self, z, label=None, psi: float = 1.0):
        return self.synthesis(self.truncation(self.mapping(z, label), psi))


class CodeToW(nn.Module):
    """Bundle graph `mapping`: code [B, Z + L] (z, then the label dims if any) -> w [B, W]."""

    def __init__(self, generator: ReferenceGenerator):
        super().__init__()
        self.mapping = generator.mapping
        self.z_dim = generator.config.z_dim

    def forward(self, code):
        return self.mapping(code[:, :self.z_dim], code[:, self.z_dim:])


class WToImage(nn.Module):
    """Bundle graph `synthesis`: w [B, W] -> image [B, 3, R, R] clipped to [-1, 1].

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


class WsToImage(WToImage):
    """Bundle graph `synthesis` for W+: ws [B, num_ws, W] (one code per layer) -> image [B, 3, R, R]
    clipped to [-1, 1] as in WToImage; the same w in every layer gives WToImage's image."""

    def forward(self, ws):
        if not torch.jit.is_tracing() and (ws.dim() != 3 or ws.shape[1] != self.truncation.num_ws):
            raise ValueError(f"ws must be [batch, {self.truncation.num_ws}, w_dim], got {list(ws.shape)}")
        return super().forward(ws)
