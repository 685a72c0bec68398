"""The seeds' n x k grid in one job: sample once at the largest n, fit every cell as Ray
tasks, test every cell on the same cases in one Ray Data pipeline.

    python -m jobs.grid --out runs/grid --n 4000,10000,20000,50000,80000 \\
        --ratio 0.01,0.025,0.05,0.1,0.15,0.2,0.25,0.3,0.35,0.4,0.45,0.5 --cases 500 [--space w|z|w,z]
        [--estimator svm,ridge,...]

Cells are persisted under RUN/grid/ as they finish and reused only when made with the same
settings. Writes RUN/grid.parquet (one row per cell) and RUN/grid.md with tables and plots.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from compute.grid import Cell, run_grid
from compute.grid_report import write_grid_md
from compute.sampling import check_sampling_input
from compute.seeding import draw_codes
from compute.sessions import images_per_call, make_session, run_single, synthesize_and_score
from jobs.cli import UsageError, location_arg, parse_list, parser, run_location, run_main
from jobs.cli.bundles import resolve_bundle
from jobs.cli.method_args import add_method_arguments, method_from
from jobs.cli.ray import add_ray_arguments, add_resource_arguments, start
from vectors.estimators import ESTIMATORS


def calibrate(bundle, images: int = 256, seconds: float = 5.0) -> float:
    """Images/s of synthesis + scoring in one process, for the plan's time estimate: calls
    sized as the sampling stage sizes them, until `images` are drawn or `seconds` have
    passed (a 1024-px generator draws about one image a second here)."""
    mapping, synthesis, scorer = (make_session(bundle.graph_bytes(s), threads=2)
                                  for s in ("mapping", "synthesis", "scorer"))
    w = run_single(mapping, draw_codes(0, np.arange(images), bundle.z_dim))
    step = images_per_call(synthesis)
    synthesize_and_score(synthesis, scorer, w[:step])  # warm-up
    drawn, started = 0, time.perf_counter()
    while drawn < images and (drawn == 0 or time.perf_counter() - started < seconds):
        drawn += len(synthesize_and_score(synthesis, scorer, w[drawn:drawn + step]))
    return drawn / (time.perf_counter() - started)


def main(argv=None) -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--out", type=location_arg, default=Path("runs/grid"), help="run directory")
    p.add_argument("--n", default="4000,10000,20000,50000,80000", help="sample counts (comma-separated)")
    # dest "ratios" and "spaces": the method flags' ratio and space are the grid's axes here
    p.add_argument("--ratio", dest="ratios", default="0.01,0.025,0.05,0.1,0.15,0.2,0.25,0.3,0.35,0.4,0.45,0.5",
                   help="k ratios (comma-separated)")
    p.add_argument("--space", dest="spaces", default="w", help="w, z, or w,z")
    p.add_argument("--estimator", dest="estimators", default="svm",
                   help="direction estimators, compared on the same samples and cases: any of "
                        f"{', '.join(ESTIMATORS)} (comma-separated)")
    p.add_argument("--cases", type=int, default=500, help="test cases, the same for every cell")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bundle", type=location_arg, default=None, help="model bundle (default: built-in synthetic model)")
    add_method_arguments(p, grid_axes=True)
    add_resource_arguments(p)
    add_ray_arguments(p)
    args = p.parse_args(argv)
    args.out = run_location(args.out)
    ns = parse_list(args.n, "--n", int)
    ratios = parse_list(args.ratios, "--ratio", float)
    spaces = parse_list(args.spaces, "--space", str)
    estimators = parse_list(args.estimators, "--estimator", str)
    unknown = [e for e in estimators if e not in ESTIMATORS]
    if unknown:
        raise UsageError(f"--estimator {', '.join(unknown)}: unknown; choose from {', '.join(ESTIMATORS)}")
    if ns[0] <= 0:
        raise UsageError(f"--n values must be positive, got {ns[0]}")
    if args.cases < 1:
        raise UsageError(f"--cases must be >= 1, got {args.cases}")
    method = method_from(args)
    for space in spaces:
        for ratio in ratios:
            Cell(space, ns[0], ratio).method(method)  # a bad ratio or space is refused here
    bundle = resolve_bundle(args.bundle)
    method.check_scores(bundle.score_names)
    check_sampling_input(bundle, ns[-1], args.seed, args.out)
    cells = len(spaces) * len(ns) * len(ratios) * len(estimators)
    rate = calibrate(bundle)
    images = args.cases * (1 + cells * method.edits_per_case)
    fits = cells * len(method.group_names) * len(method.properties)
    print(f"plan: {cells} cells ({', '.join(spaces)} x {len(ns)} n x {len(ratios)} ratios x {len(estimators)} "
          f"estimators), {ns[-1]:,} samples "
          f"once, {fits} fits, {images:,} test images; calibration {rate:,.0f} images/s in one process, so "
          f"about {(ns[-1] + images) / (rate * 0.8) / 60:.1f} min of sampling and testing", flush=True)
    started = time.perf_counter()
    table = run_grid(args.out, bundle, method, ns, ratios, spaces, args.cases, args.seed, start(args),
                     args.batch_size, rate, estimators=estimators)
    write_grid_md(table, args.out, method.property_names)
    print(f"done in {time.perf_counter() - started:.0f}s: {args.out / 'grid.parquet'}, {args.out / 'grid.md'}")


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
