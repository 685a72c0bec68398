"""stylegan2: images/s of a StyleGAN2 generator (random weights in rosinality's layout,
config-f widths by default), torch eager vs ONNX Runtime, same codes, same thread count,
over a batch sweep; with the analytic cost per image in multiply-adds and the parity of
the two on the same codes. --gpu runs torch on the GPU and ONNX Runtime on CUDA."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from compute.seeding import draw_codes
from compute.sessions import make_session, run_single
from jobs.benchmark.reference_loop import torch_engine
from jobs.benchmark.timing import images_per_second


def bench_stylegan2(resolution: int, channel_multiplier: int, images: int, batch_sizes: list[int], threads: int,
                    gpu: bool) -> dict[str, float]:
    import torch

    from export.checkpoint_specs import MappingGraph, SynthesisGraph, load_generator
    from export.onnx_bundle import to_onnx_bytes
    from export.rosinality import write_random_rosinality_checkpoint
    from export.stylegan2 import StyleGAN2Config

    torch.set_num_threads(threads)
    device = torch.device("cuda" if gpu else "cpu")
    config = StyleGAN2Config.rosinality(resolution, channel_multiplier=channel_multiplier)
    with tempfile.TemporaryDirectory() as tmp:
        generator = load_generator(write_random_rosinality_checkpoint(Path(tmp) / "g.pt", config, seed=0))
    mapping, synthesis = MappingGraph(generator).eval(), SynthesisGraph(generator).eval()
    print(f"exporting the {resolution}-px StyleGAN2 (channel multiplier {channel_multiplier}, {config.num_ws} "
          f"style layers) to ONNX", flush=True)
    sessions = {"mapping": make_session(to_onnx_bytes(mapping, torch.zeros(2, config.z_dim), "z", "w"), threads, gpu),
                "synthesis": make_session(to_onnx_bytes(synthesis, torch.zeros(2, config.num_ws, config.w_dim), "ws",
                                                        "image"), threads, gpu)}
    engines = {stem: torch_engine(m.to(device), device) for stem, m in (("mapping", mapping), ("synthesis", synthesis))}
    codes = draw_codes(0, np.arange(images), config.z_dim)

    def ws(w):
        return np.ascontiguousarray(np.repeat(w[:, None], config.num_ws, axis=1))

    def torch_step(z):
        return engines["synthesis"](ws(engines["mapping"](z)))

    def ort_step(z):
        return run_single(sessions["synthesis"], ws(run_single(sessions["mapping"], z)))

    where = "CUDA" if gpu else f"CPU, {threads} threads"
    gmacs = config.multiply_adds() / 1e9
    print(f"StyleGAN2 {resolution} px, mapping + synthesis of {images} images, {where}; "
          f"{gmacs:.1f} G multiply-adds per image:")
    rates = {}
    for size in batch_sizes:
        for name, step in (("torch eager", torch_step), ("onnx runtime", ort_step)):
            def run(z, step=step):
                return [step(z[lo:lo + size]) for lo in range(0, len(z), size)]

            key = f"{name}, batch {size}"
            rates[key] = images_per_second(lambda: run(codes), images, warm_up=lambda: run(codes[:size]))
            print(f"  {key:28s} {rates[key]:8.2f} images/s  ({rates[key] * gmacs:7.1f} G multiply-adds/s)", flush=True)
    sample = codes[:2]
    image_torch, image_ort = torch_step(sample), ort_step(sample)
    print(f"  parity on 2 codes: max abs diff {np.abs(image_torch - image_ort).max():.2e} "
          f"(relative {np.abs(image_torch - image_ort).max() / np.abs(image_torch).max():.2e})")
    best = {name: max(v for k, v in rates.items() if k.startswith(name)) for name in ("torch eager", "onnx runtime")}
    print(f"  best onnx runtime / best torch eager: {best['onnx runtime'] / best['torch eager']:.2f}x")
    return rates
