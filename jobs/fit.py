"""Fit the method's property directions: one fit per (group, property) as Ray tasks.

    python -m jobs.fit --run RUN [--space w|z] [--ratio 0.2] [--medians manifest|samples]
                       [--estimator svm] [--stability-splits 5]

Reads RUN/samples.parquet, writes RUN/vectors.parquet (or --out). The method defaults to the
one the run recorded (RUN/run.json), else the seeds'; flags change it. When the vectors file
already holds a fit with the same settings it is reused without starting Ray; a new fit says
that the run's test, report and gallery are stale (and marks the last two). With the seeds' method
that is 8 groups x (eyes, mouth, pose) = 24 fits, each with the method's estimator (the
reference's linear SVM by default) and its stability (mean cosine between resampled fits).
"""
from __future__ import annotations

import sys
from pathlib import Path

from compute.fitting import export_directions, export_names, fit_directions
from compute.run_record import recorded_method
from compute.staleness import watching_results
from compute.vectors_table import read_vectors
from jobs.cli import UsageError, location_arg, parser, run_location, run_main
from jobs.cli.method_args import add_method_arguments, method_from
from jobs.cli.ray import add_ray_arguments, init_ray


def main(argv=None) -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--run", type=location_arg, required=True, help="run directory with samples.parquet")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/validation split")
    p.add_argument("--drop-nonfinite", action="store_true", help="drop samples with NaN or inf values")
    p.add_argument("--out", type=location_arg, default=None, help="vectors file (default: RUN/vectors.parquet)")
    p.add_argument("--export-csv", type=Path, default=None, help="also write the reference's CSV layout here")
    p.add_argument("--export-boundaries", type=Path, default=None, help="also write InterFaceGAN .npy boundaries here")
    add_method_arguments(p, test=False)
    add_ray_arguments(p)
    args = p.parse_args(argv)
    args.run = run_location(args.run)
    method = method_from(args, recorded_method(args.run))  # the run's own method, then the flags
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    if args.export_csv or args.export_boundaries:
        export_names(method)  # a property name that would leave the export directory: refused before any work
    with watching_results(args.run, "jobs.fit"):  # new vectors: the run's test, report and gallery go stale
        # Ray starts only once the fit knows it cannot reuse the vectors file (and its samples are read)
        out = fit_directions(args.run, method, args.seed, args.drop_nonfinite, args.out,
                             start_ray=lambda: init_ray(args.address, args.num_cpus))
        if args.export_csv or args.export_boundaries:
            _, directions, _ = read_vectors(out)
            export_directions(directions, method.latent, args.export_csv, args.export_boundaries)


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
