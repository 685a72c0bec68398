"""estimators: every direction estimator (vectors/estimators.py) judged side by side on
held-out faces: one grid run per seed (sampling, fits and stability with that seed) over
the estimators, every run tested on the same cases. Prints per estimator the mean over
seeds and the seed-to-seed range of mean |corr| per property, passes, consistency,
stability and fit time; on the synthetic worlds also the spread of the true identity
traits and the cosine of each direction to the world's true direction for its group (the
group's mean gradient of the true property in w)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from compute import samples_store
from compute.fitting import load_samples
from compute.grid import Cell, cell_dir, run_grid
from compute.runs import VECTORS_FILE
from compute.tables import vector_matrix
from compute.vectors_table import read_vectors
from vectors.groups import assign_groups, group_medians
from vectors.method import Method

CASE_SEED = 1000  # the test cases every seed's grid shares


def true_directions(bundle, run: Path, method: Method) -> dict[tuple[str, str], np.ndarray] | None:
    """{(group, property): unit mean gradient of the true property over the group's samples},
    from the synthetic world the bundle was exported from; None for other bundles."""
    world = bundle.manifest.get("world")
    if world is None or method.latent != "w":
        return None
    import torch

    from export.world import PARAMS, WorldConfig, build_world

    _, readout = build_world(WorldConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in world.items()}))
    if any(prop not in PARAMS for prop in method.property_names):
        return None
    samples = load_samples(run, method)  # refuses non-finite rows, so table rows are sample rows
    groups = assign_groups(samples.scores, method.group_by,
                           group_medians(method, samples.sampling.get("group_medians", {}), samples.scores))
    # Streamed a batch of codes at a time: the driver never holds every sample's w.
    sums = {(g, p): np.zeros(samples.dim) for g in method.group_names for p in method.property_names}
    start = 0
    for batch in samples_store.iter_batches(samples.path, [samples.latent]):
        w = torch.tensor(vector_matrix(batch.column(0)), requires_grad=True)
        batch_groups, start = groups[start:start + len(w)], start + len(w)
        for prop in method.property_names:
            grad = torch.autograd.grad(readout(w)[:, PARAMS.index(prop)].sum(), w)[0].numpy()
            for group in method.group_names:
                sums[(group, prop)] += grad[batch_groups == group].sum(axis=0, dtype=np.float64)
    return {key: total / np.linalg.norm(total) for key, total in sums.items()}  # the mean's direction


def truth_cosines(run: Path, cell: Cell, truth: dict, method: Method) -> dict[str, float]:
    """Mean over groups of cos(fitted direction, true direction), per property."""
    _, directions, _ = read_vectors(cell_dir(run, cell) / VECTORS_FILE)
    return {p: float(np.mean([directions[(g, p)] @ truth[(g, p)] / np.linalg.norm(directions[(g, p)])
                              for g in method.group_names])) for p in method.property_names}


def bench_estimators(bundle, out: Path, n: int, seeds: list[int], cases: int, estimators: list[str],
                     ratio: float, resources) -> list[dict]:
    method = Method(ratio=ratio)
    rows = []
    for seed in seeds:
        run = out / f"seed-{seed}"
        print(f"seed {seed}: grid of {len(estimators)} estimators at n = {n:,}, ratio {ratio:g}, "
              f"{cases} cases (case seed {CASE_SEED}) in {run}", flush=True)
        table = run_grid(run, bundle, method, [n], [ratio], ["w"], cases, seed, resources,
                         estimators=estimators, case_seed=CASE_SEED)
        truth = true_directions(bundle, run, method)
        for row in table.to_pylist():
            cell = Cell("w", n, ratio, row["estimator"])
            cosines = truth_cosines(run, cell, truth, method) if truth else {}
            rows.append(dict(row, seed=seed, **{f"truth_cos_{p}": c for p, c in cosines.items()}))
    print_table(rows, method, estimators, bundle, n, ratio, cases, seeds)
    return rows


def _cell(values: list[float], digits: int) -> str:
    values = [v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ±{(max(values) - min(values)) / 2:.{digits}f}"


def print_table(rows: list[dict], method: Method, estimators: list[str], bundle, n: int, ratio: float, cases: int,
                seeds: list[int]) -> None:
    props = method.property_names
    truth = any(f"truth_cos_{props[0]}" in r for r in rows)
    columns = ([f"mean abs corr {p}" for p in props] + ["sum", "passed", "consistency"] + [f"stab {p}" for p in props]
               + (["identity"] + [f"truth cos {p}" for p in props] if truth else []) + ["fit s"])
    print(f"\n{bundle.manifest['model']}, n = {n:,}, ratio {ratio:g}, {cases} cases (the same for all), seeds "
          f"{','.join(map(str, seeds))}: mean over seeds ± half the seed-to-seed range")
    print("| estimator | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for e in estimators:
        mine = [r for r in rows if r["estimator"] == e]
        get = lambda key: [r.get(key) for r in mine]  # noqa: E731
        cells = ([_cell(get(f"mean_abs_corr_{p}"), 4) for p in props] + [_cell(get("sum_mean_abs_corr"), 4),
                 _cell([float(v) for v in get("passed")], 1), _cell(get("consistency"), 4)]
                 + [_cell(get(f"stability_{p}"), 3) for p in props]
                 + ([_cell(get("identity_spread"), 4)] + [_cell(get(f"truth_cos_{p}"), 3) for p in props]
                    if truth else []) + [_cell(get("fit_seconds"), 1)])
        print(f"| {e} | " + " | ".join(cells) + " |")
    if "svm" in estimators and len(seeds) > 1:
        print_verdicts(rows, estimators)


# Held-out measures an estimator must beat the reference on: (column, larger is better).
JUDGED = (("sum_mean_abs_corr", True), ("passed", True), ("consistency", False))


def print_verdicts(rows: list[dict], estimators: list[str]) -> None:
    """Each estimator minus svm on the same seed, per judged measure, against svm's own
    seed-to-seed range: a win needs every seed's difference beyond that range."""
    base = {r["seed"]: r for r in rows if r["estimator"] == "svm"}
    print("\nestimator - svm on the same seed, per seed; svm's seed-to-seed range in brackets:")
    for key, larger in JUDGED:
        spread = max(r[key] for r in base.values()) - min(r[key] for r in base.values())
        print(f"  {key} [{spread:.4g}]:")
        for e in estimators:
            if e == "svm":
                continue
            gains = [(r[key] - base[r["seed"]][key]) * (1 if larger else -1) for r in rows if r["estimator"] == e]
            verdict = "better" if min(gains) > spread else ("worse" if max(gains) < -spread else "within the spread")
            print(f"    {e:11s} {' '.join(f'{g:+.4g}' for g in gains)} (+ = better) -> {verdict}")
