"""fit: wall time and mean validation accuracy of the seeds' method's fits (w, ratio 0.2):
(a) parallel Ray tasks with the default solver, (b) the reference set-up (LinearSVC, C=1,
unscaled) sequentially in one process, and each alternative solver as parallel Ray tasks."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import ray

from compute.fitting import (direction_rows, gather_fits, load_samples, plan_fit, read_selected, selected_rows,
                             submit_fits)
from compute.sampling import sample_table
from jobs.benchmark.timing import seconds_of
from vectors.method import Method
from vectors.svm import SvmConfig, fit_selection


def bench_fit(bundle, n: int, run: Path) -> dict:
    if not (run / "samples.parquet").exists():
        sample_table(bundle, n, 0, run)
    samples = load_samples(run, Method())
    if samples.n != n:
        raise ValueError(f"{run} holds {samples.n:,} samples, not n = {n:,}; pass another run")
    plan = plan_fit(samples, Method(), seed=0)
    selected = read_selected(samples, selected_rows(plan.selections, "svm"))  # those codes only
    selections, latents = selected.compact(plan.selections, "svm"), selected.latents

    def parallel(svm):
        results = gather_fits(submit_fits(ray.put(latents), selections, svm), progress=False)
        return float(np.mean([r["val_accuracy"] for r in direction_rows(results, replace(Method(), svm=svm))]))

    def sequential(svm):
        return float(np.mean([fit_selection(latents, s, svm).val_accuracy for s in selections]))

    cases = [("(a) Ray tasks, LinearSVC C=1 unscaled (default)", parallel, SvmConfig()),
             ("(b) one process, LinearSVC C=1 unscaled (reference)", sequential, SvmConfig()),
             ("(c) Ray tasks, LinearSVC scaled inputs", parallel, SvmConfig(scale=True)),
             ("(c) Ray tasks, LinearSVC dual", parallel, SvmConfig(dual="true")),
             ("(c) Ray tasks, LinearSVC primal", parallel, SvmConfig(dual="false")),
             ("(c) Ray tasks, SVC(kernel='linear') C=1", parallel, SvmConfig(solver="svc", max_iter=100000)),
             ("(c) Ray tasks, SVC(kernel='linear') C=0.001", parallel,
              SvmConfig(solver="svc", C=0.001, max_iter=100000))]
    parallel(SvmConfig())  # warm-up: workers import scikit-learn once, untimed
    results = {name: seconds_of(lambda: how(svm)) for name, how, svm in cases}
    print(f"{len(plan.selections)} fits (the seeds' method), w, ratio 0.2, n = {n:,}:")
    for name, (seconds, accuracy) in results.items():
        print(f"  {name:52s} {seconds:7.2f} s   mean val acc {accuracy:.4f}")
    a, b = results[cases[0][0]], results[cases[1][0]]
    print(f"  a/b speed-up = {b[0] / a[0]:.2f}x, accuracy a - b = {a[1] - b[1]:+.4f}")
    return results
