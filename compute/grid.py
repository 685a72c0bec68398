"""The seeds' n x k grid in one pass: sample once at the largest n, fit every cell as Ray
tasks submitted together, test every cell on the same cases in one Ray Data pipeline.
Cells may also differ in latent space and in direction estimator (vectors.estimators), so
that estimators are judged on the same samples and the same test cases.

Smaller n are prefixes of the largest sample (a code depends only on seed and id), so a
cell at n = 10,000 is exactly a 10,000-sample run. Each cell lives in RUN/grid/<cell>/
with the same vectors.parquet and cases.parquet as a single run, and is reused only when
the settings it was made with equal the ones asked for (compute.runs), so rerunning a
grid with other cases, medians or cutoffs recomputes what they change and nothing else.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from compute.fitting import direction_rows, load_samples, plan_fit, read_selected, selected_rows, submit_fits
from compute.generation import run_cases
from compute.runs import CASES_FILE, GRID_DIR, GRID_FILE, SUMMARY_FILE, VECTORS_FILE, reusable
from compute.sampling import sample_table
from compute.storage import Place, as_place
from compute.tables import with_metadata, write_parquet_atomic
from compute.testing import evaluate, load_direction_set, test_config, write_test_outputs
from compute.vectors_table import read_vectors, write_vectors
from vectors.method import Method
from vectors.summary import mean_by_property


@dataclass(frozen=True)
class Cell:
    space: str
    n: int
    ratio: float
    estimator: str = "svm"

    @property
    def name(self) -> str:
        # w:0-6 -> w0-6; the reference estimator keeps the names grids had before estimators
        suffix = "" if self.estimator == "svm" else f"-{self.estimator}"
        return f"{self.space.replace(':', '')}-n{self.n}-r{self.ratio:g}{suffix}"

    def method(self, base: Method) -> Method:
        return replace(base, space=self.space, ratio=self.ratio, estimator=self.estimator)


def cell_dir(run: Place | Path, cell: Cell) -> Place:
    return as_place(run) / GRID_DIR / cell.name


def fit_cells(run: Place | Path, cells: list[Cell], method: Method, seed: int, progress: bool = True) -> None:
    """Fit every cell whose vectors are missing or stale, all cells' tasks submitted at once."""
    import ray

    samples = {space: load_samples(run, replace(method, space=space)) for space in {c.space for c in cells}}
    plans = {c: plan_fit(samples[c.space], c.method(method), seed, c.n) for c in cells}
    todo = [c for c in cells if not reusable(cell_dir(run, c) / VECTORS_FILE, "fit", plans[c].config, progress)]
    if not todo:
        return
    # Per space, the codes of the rows some cell to fit selects (a ridge cell: all its n rows).
    selected = {space: read_selected(samples[space], np.unique(np.concatenate(
        [selected_rows(plans[c].selections, c.estimator) for c in todo if c.space == space])))
        for space in {c.space for c in todo}}
    refs = {space: (ray.put(chosen.latents), ray.put(chosen.scores)) for space, chosen in selected.items()}
    pending, owners, results = {}, {}, {c: {} for c in todo}
    for cell in todo:
        latents_ref, scores_ref = refs[cell.space]
        selections = selected[cell.space].compact(plans[cell].selections, cell.estimator)
        for future, s in submit_fits(latents_ref, selections, method.svm, cell.estimator, method.stability_splits,
                                     seed, scores_ref).items():
            pending[future], owners[future] = s, cell
    total, started = len(pending), time.perf_counter()
    while pending:
        done, _ = ray.wait(list(pending), num_returns=min(len(pending), 24), timeout=5)
        for future in done:
            s, cell = pending.pop(future), owners.pop(future)
            results[cell][(s.group, s.prop)] = (s, ray.get(future))
            if len(results[cell]) == len(plans[cell].selections):
                cell_method = cell.method(method)
                write_vectors(direction_rows(results[cell], cell_method),
                              {"fit": plans[cell].config, "method": cell_method.to_dict()},
                              cell_dir(run, cell) / VECTORS_FILE)
        if progress:
            print(f"  fits {total - len(pending)}/{total} ({time.perf_counter() - started:.0f}s)", flush=True)


def test_cells(run: Place | Path, bundle, cells: list[Cell], method: Method, cases: int, seed: int, resources,
               rate: float | None = None, progress: bool = True) -> None:
    """Test every cell whose results are missing or stale, all on the same cases (drawn from
    `seed`) in one pipeline."""
    todo, sets, configs = [], [], {}
    for cell in cells:
        directory, cell_method = cell_dir(run, cell), cell.method(method)
        direction_set, _, _ = load_direction_set(directory / VECTORS_FILE, bundle, cell_method)
        configs[cell] = test_config(cell_method, cases, seed, directory, directory / VECTORS_FILE, bundle,
                                    direction_set)
        if not (reusable(directory / CASES_FILE, "test", configs[cell], progress)
                and (directory / SUMMARY_FILE).is_file()):
            todo.append(cell)
            sets.append(direction_set)
    if not todo:
        return
    weights = method.edit_weights()
    images = cases * (1 + len(todo) * len(weights))
    if progress:
        estimate = f", about {images / (rate * 0.8):.0f}s" if rate else ""
        print(f"  testing {len(todo)} cells on the same {cases} cases: {images:,} images{estimate}", flush=True)
    started, last = time.perf_counter(), [0.0]

    def report(done: int) -> None:
        elapsed = time.perf_counter() - started
        if progress and (elapsed - last[0] >= 10 or done == cases):
            last[0] = elapsed
            print(f"  tested {done}/{cases} cases, {elapsed:.0f}s elapsed, "
                  f"ETA {elapsed / done * (cases - done):.0f}s", flush=True)

    results = run_cases(bundle, cases, seed, sets, method.group_by, weights, resources, progress=False,
                        on_batch=report)
    for k, cell in enumerate(todo):
        table, summary = evaluate(results, k, cell.method(method), bundle)
        keys = {"space": pa.array([cell.space] * table.num_rows), "n": pa.array([cell.n] * table.num_rows, pa.int64()),
                "ratio": pa.array([cell.ratio] * table.num_rows, pa.float64())}
        for i, (name, column) in enumerate(keys.items()):
            table = table.add_column(i, name, column)
        write_test_outputs(cell_dir(run, cell), table, summary, configs[cell])


def grid_table(run: Place | Path, cells: list[Cell], method: Method) -> pa.Table:
    """One row per cell: k per group; per property SVM accuracy, stability, the mean of |corr|
    (`mean_abs_corr_<p>`), the signed mean corr (`mean_corr_<p>`) and the cases with a negative
    corr (`negative_corr_<p>`); passes, consistency, the fits that did not converge, fit seconds
    (summed over the cell's fits) and, for bundles with a ground truth, the spread of the true
    identity traits."""
    rows = []
    for cell in cells:
        directory = cell_dir(run, cell)
        vectors, _, _ = read_vectors(directory / VECTORS_FILE)
        summary = json.loads((directory / SUMMARY_FILE).read_text(limit=1 << 26))
        props = vectors["property"].to_pylist()
        acc = mean_by_property(props, vectors["val_accuracy"].to_pylist(), method.property_names)
        stability = mean_by_property(props, vectors["stability"].to_pylist(), method.property_names)
        k = dict(zip(vectors["group"].to_pylist(), vectors["k"].to_pylist()))
        negative = summary.get("negative_corr") or {}  # (a reused cell tested before it was recorded: null)
        rows.append({"space": cell.space, "n": cell.n, "ratio": cell.ratio, "estimator": cell.estimator,
                     "k": [k[g] for g in method.group_names],
                     **{f"svm_acc_{p}": acc[p] for p in method.property_names},
                     **{f"stability_{p}": stability[p] for p in method.property_names},
                     **{f"mean_abs_corr_{p}": summary["mean_abs_corr"][p] for p in method.property_names},
                     **{f"mean_corr_{p}": summary["mean_corr"][p] for p in method.property_names},
                     **{f"negative_corr_{p}": negative.get(p) for p in method.property_names},
                     "sum_mean_abs_corr": summary["sum_mean_abs_corr"], "passed": summary["passed"],
                     "cases": summary["cases"], "consistency": summary["mean_consistency"],
                     "identity_spread": summary.get("mean_identity_spread"),
                     "fits_not_converged": vectors["converged"].to_pylist().count(False),
                     "fit_seconds": float(sum(vectors["fit_seconds"].to_pylist()))})
    return pa.Table.from_pylist(rows)


def run_grid(run: Place | Path, bundle, method: Method, ns: list[int], ratios: list[float], spaces: list[str],
             cases: int, seed: int, resources, batch_size: int | None = None, rate: float | None = None,
             progress: bool = True, estimators: list[str] | None = None, case_seed: int | None = None) -> pa.Table:
    """Sample, fit and test every cell (space x n x ratio x estimator; default the method's
    estimator) with `seed`; test cases are drawn from `case_seed` (default `seed`), so grids
    of several seeds can share them. Writes RUN/grid.parquet and returns it."""
    run = as_place(run)
    method.check_scores(bundle.score_names)
    estimators = estimators or [method.estimator]
    case_seed = seed if case_seed is None else case_seed
    cells = [Cell(s, n, r, e) for s in spaces for n in ns for r in ratios for e in estimators]
    for cell in cells:
        cell.method(method).check_layers(bundle.num_ws)  # a bad space or ratio fails here, before any work
    if progress:
        print(f"[1/3] sampling {max(ns):,} faces (smaller n are prefixes)", flush=True)
    sample_table(bundle, max(ns), seed, run, batch_size=batch_size, resources=resources, progress=progress,
                 read_back=False)
    if progress:
        print(f"[2/3] fitting {len(cells)} cells x {len(method.group_names) * len(method.properties)} directions",
              flush=True)
    fit_cells(run, cells, method, seed, progress)
    if progress:
        print(f"[3/3] testing {len(cells)} cells on {cases} cases", flush=True)
    test_cells(run, bundle, cells, method, cases, case_seed, resources, rate, progress)
    table = with_metadata(grid_table(run, cells, method), {"grid": {
        "n": ns, "ratio": ratios, "space": spaces, "estimator": estimators, "cases": cases, "seed": seed,
        "case_seed": case_seed, "method": method.to_dict()}})
    write_parquet_atomic(table, run / GRID_FILE)
    return table

