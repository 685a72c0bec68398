"""The whole method in one job: export (if needed), sample, fit, test, report.

    python -m jobs.vectorfind [--out runs/vectorfind] [--n 80000] [--ratio 0.2] [--cases 500]

With no arguments it runs on the built-in synthetic model in a few minutes on two cores
and ends with the seeds' results table. Stages already complete in the run directory are
reused (the same command twice does the work once).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from compute.sampling import SamplingError, plan_resources, sample_table
from jobs.bundles import resolve_bundle
from jobs.cli import UsageError, parser, run_main
from jobs.fit import SPACES, add_fit_arguments, run_fit, svm_config_from
from jobs.raycluster import add_ray_arguments, init_ray
from jobs.report import write_report
from jobs.sample import add_resource_arguments
from jobs.test import add_test_arguments, parse_floats, results_table, run_test, schedule_from
from vectors.groups import check_ratio
from vectors.stats import check_cutoffs


def main(argv=None) -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/vectorfind"), help="run directory")
    p.add_argument("--bundle", type=Path, default=None, help="model bundle (default: built-in synthetic model)")
    p.add_argument("--n", type=int, default=80000, help="training samples (the reference v7 used 80,000)")
    p.add_argument("--seed", type=int, default=0, help="seed of samples, split and test cases")
    add_fit_arguments(p)
    add_test_arguments(p)
    p.set_defaults(cases=500)  # the seeds' test size
    add_resource_arguments(p)
    add_ray_arguments(p)
    args = p.parse_args(argv)
    # Every argument is checked before any work starts.
    if args.n <= 0:
        raise UsageError(f"--n must be a positive integer, got {args.n}")
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    if args.cases < 1:
        raise UsageError(f"--cases must be >= 1, got {args.cases}")
    if args.space not in SPACES:
        raise UsageError(f"unknown --space {args.space!r}; choose w (v7) or z (v6)")
    try:
        check_ratio(args.ratio)
        cutoffs = check_cutoffs(parse_floats(args.cutoffs, "--cutoffs"))
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    cfg, schedule = svm_config_from(args), schedule_from(args)

    started = time.perf_counter()
    bundle = resolve_bundle(args.bundle)
    init_ray(args.address, args.num_cpus)
    resources = plan_resources(args.actors, args.cpus_per_actor, args.gpus_per_actor)
    run = args.out
    print(f"[1/4] sampling {args.n:,} faces into {run}", flush=True)
    sample_table(bundle, args.n, args.seed, run, batch_size=args.batch_size, resources=resources)
    print(f"[2/4] fitting 24 directions in {args.space} (ratio {args.ratio})", flush=True)
    vectors = run_fit(run, args.space, args.ratio, args.medians, cfg, args.seed)
    print(f"[3/4] testing {args.cases} cases x {len(schedule.weights())} edits", flush=True)
    summary = run_test(run, bundle, vectors, args.cases, args.seed, schedule, cutoffs, args.max_spread, resources)
    print("[4/4] writing the report", flush=True)
    report = write_report(run, bundle, vectors)
    print(results_table(summary, summary.get("svm_val_accuracy")))
    print(f"\ndone in {time.perf_counter() - started:.0f}s: {report} (cases.parquet, summary.json, "
          f"passed.csv beside it)")


if __name__ == "__main__":
    run_main(main, sys.argv[1:], user_errors=(SamplingError,))
