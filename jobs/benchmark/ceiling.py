"""ceiling: images/s of the sampling pipeline itself, with inference replaced by zeros.

Everything a GPU actor does besides inference runs as in `jobs.sample`: code drawing,
fixed-size padded calls, Arrow blocks, Ray Data's hand-offs to the driver and the chunk
writes of a real run directory; the engine returns zero w and scores of the right shapes
at once (compute.engine.NullEngine). The dims are the reference's at the asked resolution
(z 512 + label 3, w 512, 2 log2(R) - 2 per-layer codes, 7 scores). A GPU pipeline can never
run faster than this, so it must be well above the GPU's own rate.
"""
from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from pathlib import Path

from compute.bundle import Bundle


def reference_shaped(bundle: Bundle, resolution: int) -> Bundle:
    """The built-in bundle's files under a manifest with the reference's dims at `resolution`
    (only the null engine runs: no graph is ever evaluated)."""
    names = ["eyes", "hair_color", "hair_length", "mouth", "pose", "background_mean", "background_std"]
    manifest = dict(bundle.manifest, resolution=resolution, z_dim=515, label_dim=3, w_dim=512,
                    num_ws=2 * int(math.log2(resolution)) - 2, score_names=names,
                    group_medians={"hair_color": 0.0, "hair_length": 0.0, "background_mean": 0.0},
                    model=f"null-{resolution}px")
    return dataclasses.replace(bundle, manifest=manifest, manifest_sha256=f"null-{resolution}")


def bench_ceiling(bundle: Bundle, resolution: int, n: int, resources) -> float:
    from compute.sampling import sample_table

    shaped = reference_shaped(bundle, resolution)
    with tempfile.TemporaryDirectory(prefix="vectorfind-ceiling-") as tmp:
        # Ray Data's first pipeline pays one-time costs (worker start, imports): warm up on a small run.
        sample_table(shaped, min(n, 20000), 1, Path(tmp) / "warm", resources=resources, progress=False, null=True)
        started = time.perf_counter()
        sample_table(shaped, n, 0, Path(tmp) / "run", resources=resources, progress=False, null=True,
                     read_back=False)
        rate = n / (time.perf_counter() - started)
    print(f"pipeline with a null engine, {resolution} px reference dims, n = {n:,}, {resources.actors} actors x "
          f"{resources.cpus_per_actor:g} CPU, chunks written to a run directory:")
    print(f"ceiling: {rate:,.0f} images/s")
    return rate
