"""reference: images/s of synthesis + scoring of the reference architecture (genforce
StyleGAN 256 px + Property Score CNN, random weights in the reference's key layout): the
reference style (generator batch 4, scorer batch 1, 8-bit conversions), torch eager
batched, and ONNX Runtime batched with IO binding (images stay on the device between
synthesis and scoring) over a batch-size sweep. --gpu runs ONNX Runtime on CUDA and torch
on the GPU; --fp16 adds fp16 graphs (fp32 inputs and outputs) and their difference from fp32."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from compute.seeding import draw_codes
from compute.sessions import make_session, run_single, score_images
from jobs.benchmark.reference_loop import reference_loop, torch_engine
from jobs.benchmark.timing import images_per_second

REFERENCE = "reference style (torch, 4 / 1)"


def bench_reference(images: int, batch_sizes: list[int], threads: int, gpu: bool, fp16: bool) -> dict[str, float]:
    import torch

    from export.ohlora import ohlora_spec, write_random_checkpoints
    from export.onnx_bundle import export_graphs

    torch.set_num_threads(threads)
    device = torch.device("cuda" if gpu else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        spec = ohlora_spec(*write_random_checkpoints(Path(tmp), seed=0))
    graphs = export_graphs(spec)
    sessions = {stem: make_session(graph, threads, gpu) for stem, graph in graphs.items()}
    half = {}
    if fp16:
        from compute.fp16 import to_fp16

        half = {stem: make_session(to_fp16(graphs[stem]), threads, gpu, fp16=True) for stem in ("synthesis", "scorer")}
    mapping, synthesis, scorer = (torch_engine(m.to(device), device) for m in (spec.mapping, spec.synthesis, spec.scorer))
    codes = draw_codes(0, np.arange(images), spec.z_dim)
    rates = {}

    def timed(name, run):
        rates[name] = images_per_second(lambda: run(codes), images, warm_up=lambda: run(codes[:min(4, images)]))
        print(f"  {name:40s} {rates[name]:8.2f} images/s", flush=True)

    def batched(size, step):
        return lambda z: [step(z[lo:lo + size]) for lo in range(0, len(z), size)]

    where = "CUDA" if gpu else f"CPU, {threads} threads"
    print(f"reference architecture (256 px, random weights), synthesis + scoring of {images} images, {where}:")
    timed(REFERENCE, lambda z: reference_loop(lambda c: synthesis(mapping(c)), scorer, z))
    for size in batch_sizes:
        timed(f"torch eager, batch {size}", batched(size, lambda z: scorer(synthesis(mapping(z)))))
    for label, graphs_used in (("onnx runtime", sessions), ("onnx runtime fp16", half)):
        for size in batch_sizes if graphs_used else ():
            timed(f"{label} + io binding, batch {size}", batched(size, lambda z, g=graphs_used: score_images(
                g["synthesis"], g["scorer"], run_single(sessions["mapping"], z))))
    if fp16:
        w = run_single(sessions["mapping"], codes[:4])
        pictures = [run_single(s["synthesis"], w) for s in (sessions, half)]
        scores = [score_images(s["synthesis"], s["scorer"], w) for s in (sessions, half)]
        print(f"  fp16 vs fp32 on 4 codes: max abs diff image {np.abs(pictures[0] - pictures[1]).max():.3g}, "
              f"scores {np.abs(scores[0] - scores[1]).max():.3g}")
    best_ort = max(v for k, v in rates.items() if k.startswith("onnx"))
    best_torch = max(v for k, v in rates.items() if k.startswith("torch"))
    print(f"  best onnx runtime / reference style: {best_ort / rates[REFERENCE]:.1f}x; "
          f"/ best torch eager: {best_ort / best_torch:.2f}x")
    return rates
