"""scale: the sampling driver's peak memory and images/s as n grows, on the built-in model.

Each n runs in a fresh driver process (its own local Ray instance), so the peak resident
memory it reports (ru_maxrss) is the driver's alone: the actors are other processes. The
samples go to a run directory under --out, which is removed after each n. Before sample
rows stayed with the actors, the driver's peak grew by about 4 KB per sample (1.23 GB at
n = 80,000, 2.52 GB at 400,000: issue #24); the growth per sample is printed as a share of that.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

GROWTH_BEFORE = 4096  # bytes of driver memory per sample before workers wrote their own chunks

DRIVER = """
import json, resource, sys, time
from pathlib import Path
from jobs.cli.bundles import resolve_bundle
from jobs.cli.ray import init_ray
from compute.sampling import sample_table

n, run = int(sys.argv[1]), Path(sys.argv[2])
bundle = resolve_bundle(None)
init_ray()
started = time.perf_counter()
sample_table(bundle, n, 0, run, progress=False, read_back=False)
seconds = time.perf_counter() - started
print("RESULT " + json.dumps({"n": n, "seconds": seconds,
                              "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def _one(n: int, run: Path) -> dict:
    shutil.rmtree(run, ignore_errors=True)
    try:
        done = subprocess.run([sys.executable, "-c", DRIVER, str(n), str(run)], capture_output=True, text=True, check=False)
    finally:
        shutil.rmtree(run, ignore_errors=True)
    line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"sampling n={n:,} failed: {(done.stderr or done.stdout)[-1500:]}")
    return json.loads(line[len("RESULT "):])


def bench_scale(ns: list[int], out: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    print(f"scale: the built-in model, one fresh driver per n, samples written to {out}:", flush=True)
    results = []
    for n in sorted(ns):
        r = _one(n, out / f"run-{n}")
        r["rate"] = n / r["seconds"]
        results.append(r)
        print(f"  n={n:>10,}: driver peak {r['peak_gb']:.2f} GB, {r['rate']:,.0f} images/s", flush=True)
    if len(results) > 1:
        first, last = results[0], results[-1]
        growth = (last["peak_gb"] - first["peak_gb"]) * 2**30 / (last["n"] - first["n"])
        print(f"  driver growth {growth:,.0f} bytes per sample from n={first['n']:,} to n={last['n']:,} = "
              f"{growth / GROWTH_BEFORE:.3f}x the {GROWTH_BEFORE:,} bytes before workers wrote their chunks; "
              f"images/s at n={last['n']:,} / at n={first['n']:,}: {last['rate'] / first['rate']:.2f}")
    last = results[-1]
    print(f"scale: n={last['n']:,} driver peak {last['peak_gb']:.2f} GB, {last['rate']:,.0f} images/s")
    return results
