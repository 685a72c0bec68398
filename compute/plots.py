"""matplotlib without a display, imported only where a figure is drawn."""
from __future__ import annotations


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def to_rgb(image):
    """A (3, H, W) image in [-1, 1] as (H, W, 3) in [0, 1] for imshow."""
    import numpy as np

    return np.clip((image.transpose(1, 2, 0) + 1) / 2, 0, 1)
