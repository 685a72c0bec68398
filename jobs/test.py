"""The image generation test: edit fresh faces along the directions and check the scores.

    python -m jobs.test --run RUN [--cases 500] [--seed 0] [--cutoffs 0.92,0.88,0.92]

Reads RUN/vectors.parquet (or --vectors), writes RUN/cases.parquet, RUN/summary.json,
RUN/passed.parquet and RUN/passed.csv, and prints the seeds' results table. The method
defaults to the run's own (RUN/run.json, with its last test's settings) where the vectors were
fitted with it, else to the one the vectors were fitted with; flags change its test settings. A test
already in RUN with the same settings is reused without starting Ray; a new one marks the
run's report and gallery STALE (compute.staleness) until they are drawn again.
"""
from __future__ import annotations

import sys

from compute.run_record import recorded_method
from compute.runs import CASES_FILE, SUMMARY_FILE, VECTORS_FILE, reusable
from compute.staleness import watching_results
from compute.storage import Place, as_place
from compute.testing import load_direction_set, run_test, test_config
from compute.vectors_table import read_vectors
from jobs.cli import UsageError, location_arg, parser, run_location, run_main
from jobs.cli.bundles import run_bundle
from jobs.cli.method_args import add_method_arguments, method_from
from jobs.cli.ray import add_ray_arguments, add_resource_arguments, start
from vectors.method import Method
from vectors.summary import results_table


def main(argv=None) -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--run", type=location_arg, required=True, help="run directory")
    p.add_argument("--vectors", type=location_arg, default=None, help=f"vectors file (default: RUN/{VECTORS_FILE})")
    p.add_argument("--cases", type=int, default=500, help="test cases (fresh faces)")
    p.add_argument("--seed", type=int, default=0, help="test seed; case i's code is a function of (seed, i)")
    p.add_argument("--bundle", type=location_arg, default=None,
                   help="model bundle (default: the one the run recorded, else the built-in synthetic model); "
                        "must have the run's manifest hash")
    add_method_arguments(p, fit=False)
    add_resource_arguments(p)
    add_ray_arguments(p)
    args = p.parse_args(argv)
    args.run = run_location(args.run)
    if args.cases < 1:
        raise UsageError(f"--cases must be >= 1, got {args.cases}")
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    vectors_path = as_place(args.vectors) if args.vectors is not None else args.run / VECTORS_FILE
    method = method_from(args, base_method(args.run, vectors_path))
    bundle = run_bundle(args.run, args.bundle)  # the run's own; another is refused before any work
    with watching_results(args.run, "jobs.test"):  # holds RUN's lock: the reuse decided here stands
        reuse = reused_test(args.run, bundle, method, args.cases, args.seed, vectors_path)  # before Ray starts
        summary = run_test(args.run, bundle, method, args.cases, args.seed, None if reuse else start(args),
                           vectors_path)
        print(results_table(summary, summary.get("svm_val_accuracy")))
        if not reuse:
            print(f"wrote {args.run / CASES_FILE}, {SUMMARY_FILE}, passed.parquet, passed.csv")


def base_method(run: Place, vectors_path: Place) -> Method:
    """The run's recorded method where it is the one these vectors were fitted with (its test
    settings, e.g. the cutoffs of the last test, kept), else the vectors' own method."""
    table, _, meta = read_vectors(vectors_path)
    # Older vectors files record only their space.
    fitted = Method.from_dict(meta["method"]) if "method" in meta else Method(space=table["space"][0].as_py())
    own = vectors_path.key() == (run / VECTORS_FILE).key()
    recorded = recorded_method(run) if own else None
    return recorded if recorded is not None and recorded.fit_config() == fitted.fit_config() else fitted


def reused_test(run: Place, bundle, method: Method, cases: int, seed: int, vectors_path: Place) -> bool:
    """Check what needs no cluster, and say whether RUN already holds this very test (then
    run_test reuses it and Ray is not started at all)."""
    method.check_scores(bundle.score_names)
    method.check_layers(bundle.num_ws)
    direction_set, _, _ = load_direction_set(vectors_path, bundle, method)
    config = test_config(method, cases, seed, run, vectors_path, bundle, direction_set)
    return reusable(run / CASES_FILE, "test", config, progress=False) and (run / SUMMARY_FILE).is_file()


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
