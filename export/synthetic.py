"""The built-in synthetic face model as an exportable ModelSpec: `synthetic` (the default
world) or `synthetic-hard` (export.world.HARD_WORLD: the same faces and scorer, with the
entanglement and cross-talk calibrated to the seeds' figures)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from export.checkpoints import load_state_dict_strict
from export.onnx_bundle import ModelSpec
from export.render import FaceRenderer
from export.scorer import WEIGHTS, ScoreCNN
from export.world import (GROUPING, HARD_WORLD, LABEL_DIM, LAYER_BANDS, NUM_WS, PARAMS, SCORED, W_DIM, Z_DIM,
                          SemanticReadout, WorldConfig, build_world)

DEFAULT_RESOLUTION = 64
MEDIAN_SAMPLES = 2048
MEDIAN_SEED = 7
# Bundle model name -> the world it draws. Both use the shipped scorer: the hard world's
# parameters are standardised like the default's, and the renderer is the same.
WORLD_MODELS = {"synthetic": WorldConfig(), "synthetic-hard": HARD_WORLD}


class SyntheticSynthesis(nn.Module):
    """w [B, 512] or ws [B, NUM_WS, 512] -> image [B, 3, R, R]: read the face parameters out
    of the codes, then draw them. The bundle's graph takes ws."""

    def __init__(self, readout: SemanticReadout, resolution: int):
        super().__init__()
        self.readout = readout
        self.renderer = FaceRenderer(resolution)

    def forward(self, w):
        return self.renderer(self.readout(w))


@torch.no_grad()
def _median_scores(mapping, synthesis, scorer) -> dict[str, float]:
    """Default group medians: the scorer's medians over a fixed seeded sample."""
    generator = torch.Generator().manual_seed(MEDIAN_SEED)
    scores = []
    for _ in range(MEDIAN_SAMPLES // 256):
        z = torch.randn(256, Z_DIM + LABEL_DIM, generator=generator)
        scores.append(scorer(synthesis(mapping(z))))
    scores = torch.cat(scores).numpy()
    return {name: round(float(np.median(scores[:, SCORED.index(name)])), 6) for name in GROUPING}


def synthetic_spec(resolution: int = DEFAULT_RESOLUTION, weights: Path = WEIGHTS,
                   cfg: WorldConfig | None = None, name: str = "synthetic") -> ModelSpec:
    """The bundle spec of the world WORLD_MODELS[name], or of `cfg` under that name."""
    if cfg is None:
        if name not in WORLD_MODELS:
            raise ValueError(f"unknown synthetic world {name!r}; choose from: {', '.join(WORLD_MODELS)}")
        cfg = WORLD_MODELS[name]
    scorer = load_state_dict_strict(ScoreCNN(resolution), weights).eval()  # fail fast on bad weights
    mapping, readout = build_world(cfg)
    synthesis = SyntheticSynthesis(readout, resolution).eval()
    world = cfg.record()
    # The layer bands join the hash: a cached bundle from before per-layer codes is not this one.
    source = hashlib.sha256(Path(weights).read_bytes() + json.dumps(world, sort_keys=True).encode()
                            + json.dumps(LAYER_BANDS, sort_keys=True).encode())
    return ModelSpec(
        name=name,
        mapping=mapping, synthesis=synthesis, scorer=scorer,
        z_dim=Z_DIM + LABEL_DIM, label_dim=LABEL_DIM, w_dim=W_DIM,
        resolution=resolution,
        score_names=list(SCORED),
        group_medians=_median_scores(mapping, synthesis, scorer),
        source_sha256=source.hexdigest(),
        parity_tolerance=1e-4,
        # The world's ground truth, so runtime stages can measure true properties without torch.
        num_ws=NUM_WS,
        extra_graphs={"truth": (readout, "ws", "params")},
        extra_manifest={"truth_names": list(PARAMS), "world": world, "layer_bands": dict(LAYER_BANDS)},
    )
