"""Load any genforce StyleGAN (v1) generator, its shape read from the checkpoint's keys.

    config, generator = load_genforce(Path("stylegan_ffhq256.pth"))
    config.resolution, config.label_dim, config.num_ws   # 256, 0, 14

The file is read with torch.load(weights_only=True), unwrapped from genforce's training
checkpoint ("generator_smooth", the averaged generator, first) and loaded strictly into a
`ReferenceGenerator` built from what its shapes say (see `infer_config`). Variants of genforce's
StyleGAN this generator does not implement are refused by name rather than half-loaded.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from export.checkpoints import CheckpointError, check_fit, expected_shapes, fit_state_dict, read_state_dict
from export.stylegan import INIT_RES, RESOLUTIONS, GenforceConfig, ReferenceGenerator, channels

# Keys under which training code commonly nests a state dict (genforce keeps its averaged
# generator as "generator_smooth"); a bare state dict, as the reference saved, needs none.
GENERATOR_WRAPPERS = ("generator_smooth", "generator", "state_dict", "model_state_dict")
SUPPORTED = ("genforce StyleGAN (v1) generators with a learned constant input, spatial noise, "
             "one w for every layer and an RGB output are supported")


def load_genforce(path: Path, config: GenforceConfig | None = None) -> tuple[GenforceConfig, ReferenceGenerator]:
    """The generator in `path` and its config, in eval mode. With `config` the file must fit
    that config exactly; without, the config is inferred from the file's keys and shapes.

    Raises CheckpointError (one line) for a file that cannot be read, is no genforce StyleGAN,
    has missing, unexpected or mis-shaped keys, or is still growing progressively (lod != 0).
    """
    state = read_state_dict(path, GENERATOR_WRAPPERS)
    what = None
    if config is None:
        config = infer_config(state, path)
        what = f"the {config.resolution} px genforce StyleGAN its keys describe"
    check_fit(expected_shapes(lambda: ReferenceGenerator(config)), state, path,  # before anything is allocated
              what or "ReferenceGenerator")
    generator = fit_state_dict(ReferenceGenerator(config), state, path, what).eval()
    lod = float(generator.synthesis.lod)
    if lod != 0.0:
        raise CheckpointError(f"{path} has synthesis.lod = {lod:g}: a generator still growing progressively; "
                              f"only a fully grown one (lod 0, {config.resolution} px) is supported")
    return config, generator


def _indices(keys, pattern: str) -> list[int]:
    """The numbers N of every key matching `pattern` (with one (\\d+) group), sorted."""
    return sorted({int(m.group(1)) for k in keys if (m := re.fullmatch(pattern, k))})


def infer_config(state: dict[str, torch.Tensor], path: Path) -> GenforceConfig:
    """The GenforceConfig whose state dict `state` is, read off its keys and shapes:

    - resolution: the count of synthesis layers (synthesis.layer{i}.*), two per resolution from 4 px;
    - mapping_layers: the count of mapping.dense{i}.*;
    - label_dim, embed_dim: mapping.label_weight [label, embed] (absent: unconditional);
    - z_dim: mapping.dense0.weight's input width less embed_dim; mapping_fmaps: its output width;
    - w_dim: synthesis.layer0.style.weight's input width (else truncation.w_avg's);
    - channels per resolution: synthesis.layer{2b}.bias (else layer{2b+1}.bias).

    One key read per quantity: any other key that disagrees is then reported as mis-shaped by
    the strict load, and a missing one falls back to genforce's default so that the load names
    it. The mapping's lr multiplier (0.01) and the fused-scale threshold (128 px, genforce's
    "auto") leave no trace in a state dict and keep genforce's defaults; no final tanh.
    """
    dense = _indices(state, r"mapping\.dense(\d{1,9})\..+")  # a longer number is no layer: an unexpected key
    layers = _indices(state, r"synthesis\.layer(\d{1,9})\..+")
    if any(k.startswith(("synthesis.early_layer.", "synthesis.output0.style.")) for k in state):
        raise CheckpointError(f"{path} looks like a genforce StyleGAN2 generator; only StyleGAN (v1) is supported")
    if not dense or not layers:
        raise CheckpointError(f"{path} is not a genforce StyleGAN generator: it has no mapping.dense*/"
                              f"synthesis.layer* keys (it has e.g. {', '.join(sorted(state)[:3]) or 'no keys'})")
    n_layers = layers[-1] + 1
    blocks = n_layers // 2
    if n_layers % 2 or n_layers > 2 * len(RESOLUTIONS) + 2 or (INIT_RES << (blocks - 1)) not in RESOLUTIONS:
        raise CheckpointError(f"{path} has synthesis layers 0-{n_layers - 1}; a genforce StyleGAN has two per "
                              f"resolution from 4 px, 4 to 18 layers for 8 to 1024 px")

    def width(key: str, axis: int, default: int) -> int:
        tensor = state.get(key)
        return int(tensor.shape[axis]) if tensor is not None and tensor.dim() > axis else default

    _refuse_variants(state, path, n_layers, blocks)
    label = state.get("mapping.label_weight")
    label_dim, embed_dim = (0, None) if label is None or label.dim() != 2 else tuple(label.shape)
    z_dim = width("mapping.dense0.weight", 1, 512 + (embed_dim or 0)) - (embed_dim or 0)
    w_dim = width("synthesis.layer0.style.weight", 1, width("truncation.w_avg", 0, 512))
    table = tuple(width(f"synthesis.layer{2 * b}.bias", 0, width(f"synthesis.layer{2 * b + 1}.bias", 0,
                                                                 channels(INIT_RES << b))) for b in range(blocks))
    try:
        return GenforceConfig(
            resolution=INIT_RES << (blocks - 1), z_dim=z_dim, w_dim=w_dim, label_dim=label_dim, embed_dim=embed_dim,
            mapping_layers=dense[-1] + 1,
            mapping_fmaps=width("mapping.dense0.weight", 0, 512) if dense[-1] > 0 else 512,
            channels=table)
    except ValueError as exc:
        raise CheckpointError(f"{path} does not describe a genforce StyleGAN: {exc}") from exc


def _refuse_variants(state: dict[str, torch.Tensor], path: Path, n_layers: int, blocks: int) -> None:
    """genforce options that change the keys or their meaning, and which this generator lacks."""
    first_noise = state.get("synthesis.layer0.apply_noise.noise")
    w_avg, style = state.get("truncation.w_avg"), state.get("synthesis.layer0.style.weight")
    rgb = state.get(f"synthesis.output{blocks - 1}.weight")
    found = None
    if "synthesis.layer0.weight" in state and "synthesis.layer0.const" not in state:
        found = "a dense first layer instead of a learned constant (const_input=False)"
    elif first_noise is not None and first_noise.dim() == 4 and first_noise.shape[1] != 1:
        found = "per-channel noise (noise_type='channel')"
    elif w_avg is not None and style is not None and style.dim() == 2 and w_avg.numel() == n_layers * style.shape[1]:
        found = "one w per layer from the mapping (repeat_w=False)"
    elif rgb is not None and rgb.dim() == 4 and rgb.shape[0] != 3:
        found = f"{rgb.shape[0]} image channels"
    if found:
        raise CheckpointError(f"{path} is a genforce StyleGAN with {found}; only {SUPPORTED}")


@torch.no_grad()
def perturb_terms(generator: ReferenceGenerator) -> ReferenceGenerator:
    """Give every bias, noise weight and the constant small random values besides genforce's
    initialisation (zeros and ones), so that each term of the forward pass changes the output."""
    for name, tensor in generator.state_dict().items():
        if name.endswith(("bias", "apply_noise.weight", "const")):
            tensor.add_(0.1 * torch.randn_like(tensor))
    return generator


def write_random_genforce_checkpoint(path: Path, config: GenforceConfig, seed: int = 0) -> Path:
    """A random-init generator of `config` saved as a bare state dict in genforce's key layout
    (for tests and benchmarks); returns `path`."""
    if not isinstance(config, GenforceConfig):
        raise ValueError(f"config must be a GenforceConfig, got {type(config).__name__}")
    with torch.random.fork_rng(devices=[]):  # seeded without touching the caller's random state
        torch.manual_seed(seed)
        generator = perturb_terms(ReferenceGenerator(config))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(generator.state_dict(), path)
    return path
