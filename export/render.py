"""Face renderer: true face parameters [B, 10] -> RGB image [B, 3, H, W] in [-1, 1].

A cartoon face drawn from soft-edged ellipses (background, hair, head, fringe, eyes with
pupils, nose, lips and mouth), composited back to front. Every shape's edge is a sigmoid
of an approximate signed distance, so images are anti-aliased and every pixel is a smooth
function of the parameters. Only elementwise ONNX
operators (Sub, Mul, Div, Sqrt, Sigmoid, Tanh, ...) appear; nothing is random.

Coordinates: x and y in [-1, 1], y pointing down, origin at the image centre.
"""
from __future__ import annotations

import torch
from torch import nn

from export.world import PARAMS

_P = {name: i for i, name in enumerate(PARAMS)}


def _minimum(a, b):
    """Elementwise min of two radii, each a float or a (B, 1, 1) tensor."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return torch.minimum(a, b)
    if isinstance(a, torch.Tensor):
        return a.clamp(max=b)
    if isinstance(b, torch.Tensor):
        return b.clamp(max=a)
    return min(a, b)


def _rgb(r, g, b):
    return torch.tensor([r, g, b]).view(1, 3, 1, 1)


class FaceRenderer(nn.Module):
    def __init__(self, resolution: int = 64):
        super().__init__()
        if resolution < 16:
            raise ValueError(f"resolution must be >= 16, got {resolution}")
        self.resolution = resolution
        coords = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution * 2 - 1
        self.register_buffer("gx", coords.view(1, 1, resolution))  # (1, 1, W)
        self.register_buffer("gy", coords.view(1, resolution, 1))  # (1, H, 1)
        # Edge softness is one pixel of the 64-px default at every resolution: a larger
        # rendering is the same continuous image sampled more finely, so the scorer (which
        # area-averages down to 64 px) sees the same face.
        self.edge = 2.0 / 64

        palette = {
            "hair_dark": (0.12, 0.08, 0.06), "hair_light": (0.95, 0.82, 0.50),
            "skin_dark": (0.45, 0.30, 0.22), "skin_light": (0.98, 0.84, 0.72),
            "bg_tint": (0.92, 0.97, 1.05), "sclera": (0.97, 0.97, 0.97),
            "pupil": (0.10, 0.14, 0.25), "lips": (0.78, 0.33, 0.36),
            "mouth_inside": (0.30, 0.05, 0.08), "nose": (0.0, 0.0, 0.0),
        }
        for name, rgb in palette.items():
            self.register_buffer(name, _rgb(*rgb))

    def _ellipse(self, cx, cy, rx, ry):
        """Soft mask (B, H, W) of an ellipse; parameters are (B, 1, 1) tensors or floats."""
        dx = (self.gx - cx) / rx
        dy = (self.gy - cy) / ry
        radius = torch.sqrt(dx * dx + dy * dy + 1e-6)
        # (radius - 1) * min-axis approximates the signed distance near the edge.
        signed = (radius - 1.0) * _minimum(rx, ry)
        return torch.sigmoid(-signed / self.edge * 1.5)

    @staticmethod
    def _paint(image, mask, color):
        return image + mask.unsqueeze(1) * (color - image)

    def forward(self, params):  # (B, 10) standardised true parameters
        p = params.unsqueeze(-1).unsqueeze(-1)  # (B, 10, 1, 1)

        def squash(name, gain=0.6):  # -> (0, 1), smooth and still graded at +-4 sd
            return 0.5 + 0.45 * torch.tanh(gain * p[:, _P[name]])

        eyes, mouth = squash("eyes"), squash("mouth")
        turn = 0.85 * torch.tanh(0.5 * p[:, _P["pose"]])
        hair_tone, hair_len = squash("hair_color"), squash("hair_length")
        bg = squash("background_mean")
        width = 1.0 + 0.14 * torch.tanh(0.6 * p[:, _P["face_width"]])
        skin = squash("skin_tone")
        spacing = 0.20 + 0.05 * torch.tanh(0.6 * p[:, _P["eye_spacing"]])
        parting = 0.30 * torch.tanh(0.6 * p[:, _P["hair_parting"]])

        x, y = self.gx, self.gy
        background = (0.08 + 0.84 * bg).unsqueeze(1) * self.bg_tint * (1.0 - 0.12 * y.unsqueeze(1))
        image = background.expand(-1, 3, self.resolution, self.resolution)

        hair_color = self.hair_dark + hair_tone.unsqueeze(1) * (self.hair_light - self.hair_dark)
        hair_top, hair_bottom = -0.86, 0.05 + 0.95 * hair_len
        hair = self._ellipse(0.0, (hair_top + hair_bottom) / 2, 0.70 * width, (hair_bottom - hair_top) / 2)
        image = self._paint(image, hair, hair_color)

        skin_color = self.skin_dark + skin.unsqueeze(1) * (self.skin_light - self.skin_dark)
        head = self._ellipse(0.0, 0.06, 0.52 * width, 0.66)
        image = self._paint(image, head, skin_color)

        # Fringe: hair over the forehead above a V-shaped line that peaks at the parting.
        fringe_line = -0.30 - 0.35 * torch.sqrt((x - parting) ** 2 + 0.004)
        fringe = head * torch.sigmoid((fringe_line - y) / self.edge * 1.5)
        image = self._paint(image, fringe, hair_color)

        # Head turn shifts the features sideways (the nose most) and narrows the far eye.
        face_x = 0.30 * turn
        eye_y, eye_rx = -0.06, 0.11
        eye_ry = 0.006 + 0.09 * eyes
        for side in (-1.0, 1.0):
            ex = face_x + side * spacing * (1.0 - 0.25 * turn * turn)
            rx = eye_rx * (1.0 + 0.35 * side * turn)
            sclera = self._ellipse(ex, eye_y, rx, eye_ry)
            image = self._paint(image, sclera, self.sclera)
            pupil = sclera * self._ellipse(ex + 0.03 * turn, eye_y, 0.045, 0.045)
            image = self._paint(image, pupil, self.pupil)

        nose = self._ellipse(1.4 * face_x, 0.17, 0.045, 0.08)
        image = self._paint(image, 0.35 * nose, self.nose)

        mouth_x, mouth_y = 1.1 * face_x, 0.42
        mouth_ry = 0.008 + 0.12 * mouth
        lips = self._ellipse(mouth_x, mouth_y, 0.19, mouth_ry + 0.03)
        image = self._paint(image, lips, self.lips)
        inside = self._ellipse(mouth_x, mouth_y, 0.16, mouth_ry)
        image = self._paint(image, inside, self.mouth_inside)

        return image.clamp(0.0, 1.0) * 2.0 - 1.0  # (B, 3, H, W)
