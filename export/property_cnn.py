"""The reference's Property Score CNN: image [B, 3, 256, 256] in [-1, 1] -> 7 scores.

Six sub-networks, each on a fixed crop of the image, keyed as in the reference checkpoint
(`eyes_score_cnn.conv1.0.weight`, ...). Each is a stack of unpadded 3x3 convs with
LeakyReLU (slope 0.01, PyTorch's default) and 2x2 max pools after some of them, then
Linear -> Tanh -> Linear. Outputs are concatenated in the reference's column order.

Inference only. The reference also had Dropout2d(0.05) after every conv and Dropout(0.45)
after the hidden layer, and never switched them off when scoring (its scores were random
draws); dropout is the identity at inference, so it is simply absent here.
"""
from __future__ import annotations

import torch
from torch import nn

SIZE = 256
SCORE_NAMES = ("eyes", "hair_color", "hair_length", "mouth", "pose", "background_mean", "background_std")
CONV_CHANNELS = (32, 64, 64, 128, 128, 128)

# name: ((row0, row1), (col0, col1)) of its crop, convs followed by a 2x2 max pool
# (1-based), number of outputs. Order = output order.
SUBNETS = {
    "eyes": (((96, 144), (64, 192)), 4, (2, 3, 4), 1),
    "hair_color": (((0, 256), (0, 256)), 6, (2, 3, 4, 5, 6), 1),
    "hair_length": (((128, 256), (0, 256)), 6, (2, 3, 4, 5), 1),
    "mouth": (((160, 208), (96, 160)), 4, (2, 3, 4), 1),
    "pose": (((112, 160), (88, 168)), 5, (2, 3), 1),
    "background": (((0, 128), (0, 256)), 6, (2, 3, 4, 5), 2),  # background_mean, background_std
}


def _features_shape(crop, n_convs: int, pools) -> tuple[int, int]:
    (r0, r1), (c0, c1) = crop
    h, w = r1 - r0, c1 - c0
    for i in range(1, n_convs + 1):
        h, w = h - 2, w - 2
        if i in pools:
            h, w = h // 2, w // 2
    return h, w


class CropCNN(nn.Module):
    def __init__(self, crop, n_convs: int, pools, outputs: int):
        super().__init__()
        (self.r0, self.r1), (self.c0, self.c1) = crop
        self.pools = tuple(pools)
        self.n_convs = n_convs
        c_in = 3
        for i, c_out in enumerate(CONV_CHANNELS[:n_convs], start=1):
            self.add_module(f"conv{i}", nn.Sequential(nn.Conv2d(c_in, c_out, 3), nn.LeakyReLU()))
            c_in = c_out
        h, w = _features_shape(crop, n_convs, pools)
        self.fc1 = nn.Sequential(nn.Linear(c_in * h * w, 256), nn.Tanh())
        self.fc_final = nn.Linear(256, outputs)
        self.pool = nn.MaxPool2d(2, 2)

    def forward(self, image):
        x = image[:, :, self.r0:self.r1, self.c0:self.c1]
        for i in range(1, self.n_convs + 1):
            x = getattr(self, f"conv{i}")(x)
            if i in self.pools:
                x = self.pool(x)
        return self.fc_final(self.fc1(torch.flatten(x, 1)))


class PropertyScoreCNN(nn.Module):
    def __init__(self):
        super().__init__()
        for name, spec in SUBNETS.items():
            self.add_module(f"{name}_score_cnn", CropCNN(*spec))

    def forward(self, image):  # (B, 3, 256, 256)
        return torch.cat([getattr(self, f"{name}_score_cnn")(image) for name in SUBNETS], dim=1)  # (B, 7)
