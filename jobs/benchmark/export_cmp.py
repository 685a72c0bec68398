"""export: synthesis + scoring of the built-in model, torch eager vs ONNX Runtime, same
codes, same thread count."""
from __future__ import annotations

import numpy as np

from compute.seeding import draw_codes
from compute.sessions import make_session, run_single
from jobs.benchmark.timing import sustained_rate


def bench_export(batch_size: int, seconds: float, threads: int) -> dict[str, float]:
    import torch

    from export.onnx_bundle import export_graphs
    from export.synthetic import synthetic_spec

    torch.set_num_threads(threads)
    spec = synthetic_spec()
    z = torch.from_numpy(draw_codes(0, np.arange(batch_size), spec.z_dim))
    with torch.no_grad():
        w = spec.mapping(z)
    sessions = {stem: make_session(graph, threads) for stem, graph in export_graphs(spec).items()}
    w_np = w.numpy()

    def torch_step():
        with torch.no_grad():
            spec.scorer(spec.synthesis(w))

    def ort_step():
        run_single(sessions["scorer"], run_single(sessions["synthesis"], w_np))

    rates = {"torch eager": sustained_rate(torch_step, batch_size, seconds),
             "onnx runtime": sustained_rate(ort_step, batch_size, seconds)}
    print(f"synthesis + scoring, synthetic model {spec.resolution} px, batch {batch_size}, {threads} threads:")
    for name, rate in rates.items():
        print(f"  {name:14s} {rate:9.1f} images/s")
    print(f"  ratio onnx runtime / torch eager: {rates['onnx runtime'] / rates['torch eager']:.2f}x")
    return rates
