"""The reference model pair (generator + Property Score CNN) as an exportable ModelSpec.

    spec = ohlora_spec(Path("stylegan_gen_vector_find_v7.pth"), Path("stylegan_gen_fine_tuned_v2_cnn.pth"))

Both checkpoints load with torch.load(weights_only=True) and strictly (export.checkpoints).
The bundle has the same contract as the synthetic one: code [B, 515] (z then label) -> w,
w -> image [B, 3, 256, 256], image -> the CNN's 7 scores, and the reference's fixed group
medians in the manifest.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from compute.files import sha256_file
from export.checkpoints import load_state_dict_strict
from export.genforce import load_genforce, perturb_terms
from export.onnx_bundle import ModelSpec
from export.property_cnn import SCORE_NAMES, PropertyScoreCNN
from export.stylegan import (
    LABEL_DIM,
    RESOLUTION,
    W_DIM,
    Z_DIM,
    CodeToW,
    GenforceConfig,
    ReferenceGenerator,
    WToImage,
)

# Medians the reference measured on its training images (SPEC.md, "Group").
REFERENCE_MEDIANS = {"hair_color": -0.2709, "hair_length": 0.3052, "background_mean": 0.0742}
PARITY_TOLERANCE = 1e-3
PARITY_CODES = 8
SCORER_WRAPPERS = ("state_dict", "model_state_dict", "model")


def load_generator(path: Path) -> ReferenceGenerator:
    """The reference's generator: a genforce StyleGAN that must fit GenforceConfig.ohlora() exactly."""
    return load_genforce(path, GenforceConfig.ohlora())[1]


def load_scorer(path: Path) -> PropertyScoreCNN:
    return load_state_dict_strict(PropertyScoreCNN(), path, SCORER_WRAPPERS).eval()


def ohlora_spec(generator_path: Path, scorer_path: Path) -> ModelSpec:
    generator = load_generator(generator_path)
    scorer = load_scorer(scorer_path)
    source = hashlib.sha256((sha256_file(Path(generator_path)) + sha256_file(Path(scorer_path))).encode())
    return ModelSpec(
        name="ohlora",
        mapping=CodeToW(generator).eval(), synthesis=WToImage(generator).eval(), scorer=scorer,
        z_dim=Z_DIM + LABEL_DIM, label_dim=LABEL_DIM, w_dim=W_DIM,
        resolution=RESOLUTION,
        score_names=list(SCORE_NAMES),
        group_medians=dict(REFERENCE_MEDIANS),
        source_sha256=source.hexdigest(),
        parity_tolerance=PARITY_TOLERANCE,
        parity_codes=PARITY_CODES,
        extra_manifest={"generator": {"truncation_psi": 1.0, "noise": "fixed", "lod": 0,
                                      "image": "clipped to [-1, 1]"}},
    )


@torch.no_grad()
def write_random_checkpoints(out_dir: Path, seed: int = 0) -> tuple[Path, Path]:
    """Random-init models saved in the reference key layout (for tests and benchmarks).

    Besides the genforce initialisation (zero biases and noise weights, a constant of ones)
    every bias, noise weight and the constant get small random values, so that each term
    of the forward pass changes the output.
    """
    torch.manual_seed(seed)
    generator, scorer = ReferenceGenerator(), PropertyScoreCNN()
    perturb_terms(generator)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = out_dir / "generator.pth", out_dir / "property_score_cnn.pth"
    torch.save(generator.state_dict(), paths[0])
    torch.save(scorer.state_dict(), paths[1])
    return paths
