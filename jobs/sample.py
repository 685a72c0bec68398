"""Sample n faces on Ray: codes -> w -> image -> scores, gathered into RUN/samples.parquet.

    python -m jobs.sample --out RUN [--n 8000] [--seed 0] [--bundle DIR]

Rerunning the same command after an interruption recomputes only the missing chunks. The
run records its bundle (path and manifest hash) in RUN/run.json, so the jobs that go on with
it (jobs.fit, jobs.test, jobs.report, ...) find it without --bundle.
"""
from __future__ import annotations

import sys

from compute.run_record import read_record, write_record
from compute.runlock import run_lock
from compute.sampling import check_sampling_input, sample_table
from jobs.cli import location_arg, parser, run_location, run_main
from jobs.cli.bundles import resolve_bundle, run_bundle
from jobs.cli.ray import add_ray_arguments, add_resource_arguments, start


def main(argv=None) -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--out", type=location_arg, required=True, help="run directory")
    p.add_argument("--n", type=int, default=8000, help="number of samples")
    p.add_argument("--seed", type=int, default=0, help="run seed; sample i's code is a function of (seed, i)")
    p.add_argument("--bundle", type=location_arg, default=None, help="model bundle (default: the one recorded in the run directory's run.json, else the "
                        "built-in synthetic model)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="samples per resumable chunk, each one actor call (default: n / 64, within 1,024..16,384)")
    add_resource_arguments(p)
    add_ray_arguments(p)
    args = p.parse_args(argv)
    args.out = run_location(args.out)
    bundle = run_bundle(args.out, args.bundle) if read_record(args.out) else resolve_bundle(args.bundle)
    check_sampling_input(bundle, args.n, args.seed, args.out, args.chunk_size)  # before Ray starts
    with run_lock(args.out):  # sampling takes it again; the record is written holding it
        resources = start(args)
        write_record(args.out, bundle)  # before the first chunk: a resumed run finds its bundle too
        sample_table(bundle, args.n, args.seed, args.out, batch_size=args.batch_size, resources=resources,
                     chunk_size=args.chunk_size, read_back=False)
    print(f"wrote {args.out / 'samples.parquet'}")


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
