"""Benchmarks that print figures measured side by side in one run.

    python -m jobs.benchmark export [--batch-size 64] [--seconds 5] [--threads 2]

export: images/s of synthesis + scoring of the built-in synthetic model at its default
        resolution, torch eager vs ONNX Runtime, same codes, same thread count.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from compute.seeding import draw_codes
from compute.sessions import make_session, run_single
from jobs.cli import UsageError, parser, run_main


def _rate(step, batch_size: int, seconds: float) -> float:
    """Images/s of `step()` (one batch), after a warm-up call, over at least `seconds`."""
    step()
    started, batches = time.perf_counter(), 0
    while True:
        step()
        batches += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds and batches >= 3:
            return batches * batch_size / elapsed


def bench_export(batch_size: int, seconds: float, threads: int) -> dict[str, float]:
    import torch

    from export.scorer import WEIGHTS
    from export.synthetic import synthetic_spec
    from export.onnx_bundle import GRAPHS, to_onnx_bytes

    torch.set_num_threads(threads)
    spec = synthetic_spec()
    z = torch.from_numpy(draw_codes(0, np.arange(batch_size), spec.z_dim))
    with torch.no_grad():
        w = spec.mapping(z)
    examples = {"synthesis": w[:2], "scorer": torch.zeros(2, 3, spec.resolution, spec.resolution)}
    sessions = {stem: make_session(to_onnx_bytes(getattr(spec, stem), examples[stem], i, o), threads)
                for stem, i, o in GRAPHS if stem in examples}
    w_np = w.numpy()

    def torch_step():
        with torch.no_grad():
            spec.scorer(spec.synthesis(w))

    def ort_step():
        run_single(sessions["scorer"], run_single(sessions["synthesis"], w_np))

    rates = {"torch eager": _rate(torch_step, batch_size, seconds),
             "onnx runtime": _rate(ort_step, batch_size, seconds)}
    print(f"synthesis + scoring, synthetic model {spec.resolution} px, batch {batch_size}, "
          f"{threads} threads (weights {WEIGHTS.name}):")
    for name, rate in rates.items():
        print(f"  {name:14s} {rate:9.1f} images/s")
    print(f"  ratio onnx runtime / torch eager: {rates['onnx runtime'] / rates['torch eager']:.2f}x")
    return rates


def main(argv=None) -> None:
    p = parser(__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="which", required=True)
    export = sub.add_parser("export", help="torch eager vs ONNX Runtime, synthesis + scoring")
    export.add_argument("--batch-size", type=int, default=64)
    export.add_argument("--seconds", type=float, default=5.0, help="minimum timed seconds per path")
    export.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.seconds <= 0 or args.threads < 1:
        raise UsageError("--batch-size and --threads must be >= 1 and --seconds > 0")
    if args.which == "export":
        bench_export(args.batch_size, args.seconds, args.threads)


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
