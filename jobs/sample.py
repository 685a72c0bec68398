"""Sample n faces on Ray: codes -> w -> image -> scores, gathered into RUN/samples.parquet.

    python -m jobs.sample --out RUN [--n 8000] [--seed 0] [--bundle DIR]

Rerunning the same command after an interruption recomputes only the missing chunks.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from compute.sampling import SamplingError, plan_resources, sample_table
from jobs.bundles import resolve_bundle
from jobs.cli import parser, run_main
from jobs.raycluster import add_ray_arguments, init_ray


def add_resource_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=None,
                   help="sample ids per actor call (default: up to 2048 at 64 px, 128 at 256 px, "
                        "and at least 4 calls per actor)")
    p.add_argument("--actors", type=int, default=None,
                   help="ONNX Runtime actors (default: one per GPU when --gpus-per-actor > 0, else one per CPU)")
    p.add_argument("--cpus-per-actor", type=float, default=None,
                   help="CPUs reserved per actor; also its ONNX Runtime threads (default: leave one CPU "
                        "of the cluster to Ray Data's own tasks)")
    p.add_argument("--gpus-per-actor", type=float, default=0.0,
                   help="GPUs per actor; > 0 runs sessions on CUDAExecutionProvider")


def main(argv=None) -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.add_argument("--n", type=int, default=8000, help="number of samples")
    p.add_argument("--seed", type=int, default=0, help="run seed; sample i's code is a function of (seed, i)")
    p.add_argument("--bundle", type=Path, default=None, help="model bundle (default: built-in synthetic model)")
    p.add_argument("--chunk-size", type=int, default=16384, help="samples per resumable chunk")
    add_resource_arguments(p)
    add_ray_arguments(p)
    p.add_argument("--crash-once", default=None, help=argparse.SUPPRESS)  # tests: kill one actor once
    args = p.parse_args(argv)
    if args.n <= 0:
        raise SamplingError(f"--n must be a positive integer, got {args.n}")
    if args.seed < 0:
        raise SamplingError(f"--seed must be >= 0, got {args.seed}")
    bundle = resolve_bundle(args.bundle)
    init_ray(args.address, args.num_cpus)
    resources = plan_resources(args.actors, args.cpus_per_actor, args.gpus_per_actor)
    sample_table(bundle, args.n, args.seed, args.out, batch_size=args.batch_size, resources=resources,
                 chunk_size=args.chunk_size, crash_once=args.crash_once)
    print(f"wrote {args.out / 'samples.parquet'}")


if __name__ == "__main__":
    run_main(main, sys.argv[1:], user_errors=(SamplingError,))
