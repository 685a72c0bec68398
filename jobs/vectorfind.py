"""The whole method in one job: export (if needed), sample, fit, test, report.

    python -m jobs.vectorfind [--out runs/vectorfind] [--n 80000] [--cases 500] [method flags]

With no arguments it runs the seeds' method on the built-in synthetic model in about a
minute on two cores and ends with the seeds' results table. Stages already complete in
the run directory are reused when made with the same settings (the same command twice
does the work once).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from compute.pipeline import check_run_input, run_method
from compute.run_record import read_record
from compute.staleness import watching_results
from jobs.cli import location_arg, parser, run_location, run_main
from jobs.cli.bundles import resolve_bundle, run_bundle
from jobs.cli.method_args import add_method_arguments, method_from
from jobs.cli.ray import add_ray_arguments, add_resource_arguments, start
from vectors.summary import results_table


def main(argv=None) -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--out", type=location_arg, default=Path("runs/vectorfind"), help="run directory")
    p.add_argument("--bundle", type=location_arg, default=None, help="model bundle (default: the one recorded in the run directory's run.json, else the "
                        "built-in synthetic model)")
    p.add_argument("--n", type=int, default=80000, help="training samples (the reference v7 used 80,000)")
    p.add_argument("--cases", type=int, default=500, help="test cases (the seeds used 500)")
    p.add_argument("--seed", type=int, default=0, help="seed of samples, split and test cases")
    p.add_argument("--drop-nonfinite", action="store_true", help="drop samples with NaN or inf values before fitting")
    add_method_arguments(p)
    add_resource_arguments(p)
    add_ray_arguments(p)
    args = p.parse_args(argv)
    args.out = run_location(args.out)
    method = method_from(args)
    started = time.perf_counter()
    bundle = run_bundle(args.out, args.bundle) if read_record(args.out) else resolve_bundle(args.bundle)
    check_run_input(bundle, method, args.n, args.cases, args.seed, args.out)  # every check before Ray starts
    # The method draws report.md and gallery.html again at its end; should it stop before, the
    # watch marks the ones drawn from results it rewrote as stale.
    with watching_results(args.out, "jobs.vectorfind"):
        summary = run_method(args.out, bundle, method, args.n, args.cases, args.seed, start(args),
                             args.batch_size, args.drop_nonfinite)
        print(results_table(summary, summary.get("svm_val_accuracy")))
        print(f"\ndone in {time.perf_counter() - started:.0f}s: {args.out / 'report.md'} "
              f"(cases.parquet, summary.json, passed.csv beside it)")


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
