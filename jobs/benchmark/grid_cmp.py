"""grid: wall time of one grid run vs the whole method once per cell, same cells, cases and
Ray instance (so Ray's start-up is paid once by both)."""
from __future__ import annotations

import contextlib
import io
import tempfile
from dataclasses import replace

from compute.grid import run_grid
from compute.pipeline import run_method
from compute.resources import plan_resources
from jobs.benchmark.timing import seconds_of
from vectors.method import Method


def bench_grid(bundle, ns: list[int], ratios: list[float], cases: int) -> dict[str, float]:
    method, resources = Method(), plan_resources()
    cells = [(n, r) for n in ns for r in ratios]
    with tempfile.TemporaryDirectory(dir=".") as tmp, contextlib.redirect_stdout(io.StringIO()):
        one_job, _ = seconds_of(lambda: run_grid(f"{tmp}/grid", bundle, method, ns, ratios, ["w"], cases, 0,
                                                 resources, progress=False))
        per_cell, _ = seconds_of(lambda: [run_method(f"{tmp}/cell-{n}-{r}", bundle, replace(method, ratio=r), n,
                                                     cases, 0, resources, progress=False) for n, r in cells])
    print(f"grid of {len(cells)} cells (n {ns}; ratio {ratios}; {cases} cases each):")
    print(f"  one grid run                        {one_job:7.1f} s")
    print(f"  the whole method once per cell      {per_cell:7.1f} s")
    print(f"  speed-up: {per_cell / one_job:.1f}x")
    return {"grid": one_job, "per_cell": per_cell}
