"""The synthetic world's Property Score CNN: image [B, 3, H, W] in [-1, 1] -> scores [B, 6].

Scores are the standardised true parameters in SCORED order (eyes, mouth, pose,
hair_color, hair_length, background_mean); the bundle manifest records that order. The
network sees 64 x 64 images; a larger rendering is area-averaged down to 64 first, so the
same trained weights serve every resolution.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from export.world import SCORED

SCORER_RESOLUTION = 64
WEIGHTS = Path(__file__).parent / "assets" / "synthetic_scorer.pt"


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.2),
        nn.MaxPool2d(2),
    )


class ScoreCNN(nn.Module):
    def __init__(self, resolution: int = SCORER_RESOLUTION):
        super().__init__()
        if resolution < SCORER_RESOLUTION or resolution % SCORER_RESOLUTION:
            raise ValueError(f"resolution must be a positive multiple of {SCORER_RESOLUTION}, got {resolution}")
        factor = resolution // SCORER_RESOLUTION
        self.downsample = nn.AvgPool2d(factor) if factor > 1 else nn.Identity()
        self.features = nn.Sequential(  # 64 -> 32 -> 16 -> 8 -> 4
            _block(3, 16), _block(16, 32), _block(32, 48), _block(48, 64),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.LeakyReLU(0.2), nn.Linear(128, len(SCORED)),
        )

    def forward(self, image):  # (B, 3, H, W)
        return self.head(self.features(self.downsample(image)))  # (B, 6)


def load_shipped_scorer(resolution: int = SCORER_RESOLUTION, weights: Path = WEIGHTS) -> ScoreCNN:
    """The trained scorer shipped in the repo, in eval mode."""
    if not weights.is_file():
        raise FileNotFoundError(
            f"scorer weights not found at {weights}; train them with `python -m export.train_scorer`"
        )
    model = ScoreCNN(resolution)
    model.load_state_dict(torch.load(weights, weights_only=True))
    return model.eval()
