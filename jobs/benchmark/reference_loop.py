"""The reference implementation's way of generating and scoring, as one loop.

The reference ran its generator on a few codes at a time and its scorer on one image at a
time, converting every image to 8-bit numpy and back (and, in its generation test, through
a JPEG file). `reference_loop` does exactly that with any engine: torch modules or ONNX
Runtime sessions wrapped as numpy callables.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np


def to_uint8_and_back(image: np.ndarray, jpeg: Path | None = None) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> 8-bit pixels (optionally saved as JPEG and read back) -> (1, 3, H, W)."""
    pixels = ((image.transpose(1, 2, 0) + 1) * 127.5).clip(0, 255).astype(np.uint8)
    if jpeg is not None:
        from PIL import Image

        Image.fromarray(pixels).save(jpeg, quality=95)
        pixels = np.asarray(Image.open(jpeg).convert("RGB"))
    return (pixels.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1)[None]


def reference_loop(generate, score, latents: np.ndarray, generator_batch: int = 4, jpeg: bool = False) -> np.ndarray:
    """Scores (N, P) of the images of `latents`: `generate` on `generator_batch` latents at a
    time, `score` on one 8-bit image at a time (through a JPEG file if `jpeg`)."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for lo in range(0, len(latents), generator_batch):
            for i, image in enumerate(generate(latents[lo:lo + generator_batch])):
                path = Path(tmp) / f"{lo + i}.jpg" if jpeg else None
                out.append(score(to_uint8_and_back(image, path))[0])
    return np.stack(out)


def torch_engine(module, device=None):
    """A torch module as a numpy -> numpy callable (no grad), on `device` if given."""
    import torch

    def call(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
            return module(tensor.to(device) if device is not None else tensor).cpu().numpy()
    return call


def onnx_engine(session):
    """An ONNX Runtime session as a numpy -> numpy callable."""
    from compute.sessions import run_single

    return lambda x: run_single(session, np.ascontiguousarray(x, dtype=np.float32))
