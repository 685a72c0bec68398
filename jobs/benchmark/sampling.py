"""sampling: images/s of code -> w -> image -> scores on the built-in bundle: (a) the Ray
Data pipeline with the jobs' defaults, (b) one process looping over batched ONNX Runtime
calls on all cores, (c) the reference-style loop (torch eager, generator batch 4, scorer
batch 1, 8-bit conversions; timed on `reference_n` images)."""
from __future__ import annotations

import numpy as np

from compute.seeding import draw_codes
from compute.sessions import make_session, run_single
from jobs.benchmark.reference_loop import reference_loop, torch_engine
from jobs.benchmark.timing import images_per_second


def bench_sampling(bundle, n: int, reference_n: int, batch_size: int = 512) -> dict[str, float]:
    import torch

    from compute.resources import plan_resources
    from compute.sampling import sample_table
    from export.synthetic import synthetic_spec

    mapping, synthesis, scorer = (make_session(bundle.graph_bytes(s), threads=2)
                                  for s in ("mapping", "synthesis", "scorer"))

    def one_process():
        for lo in range(0, n, batch_size):
            z = draw_codes(0, np.arange(lo, min(n, lo + batch_size)), bundle.z_dim)
            run_single(scorer, run_single(synthesis, run_single(mapping, z)))

    torch.set_num_threads(2)
    spec = synthetic_spec(bundle.resolution)
    generate = lambda z: torch_engine(spec.synthesis)(torch_engine(spec.mapping)(z))  # noqa: E731
    codes = draw_codes(0, np.arange(reference_n), bundle.z_dim)

    def pipeline():
        sample_table(bundle, n, 0, None, resources=plan_resources(), progress=False)

    rates = {
        "b": images_per_second(one_process, n, warm_up=lambda: None),
        "c": images_per_second(lambda: reference_loop(generate, torch_engine(spec.scorer), codes), reference_n,
                               warm_up=lambda: None),
        # Ray's start-up and its first pipeline's one-time costs are paid by a short untimed
        # run; the timed run still starts its own actors and sessions.
        "a": images_per_second(pipeline, n, warm_up=lambda: sample_table(
            bundle, min(n, 1000), 1, None, resources=plan_resources(), progress=False)),
    }
    print(f"sampling, {bundle.manifest['model']} model {bundle.resolution} px, n = {n:,} "
          f"(reference loop: {reference_n:,}):")
    print(f"  (a) Ray Data pipeline           {rates['a']:9.1f} images/s")
    print(f"  (b) single-process batched ORT  {rates['b']:9.1f} images/s")
    print(f"  (c) reference-style torch loop  {rates['c']:9.1f} images/s")
    print(f"  a/b = {rates['a'] / rates['b']:.2f}   a/c = {rates['a'] / rates['c']:.1f}")
    return rates
