"""The seeds' n x k grid in one job: sample once at the largest n, fit every cell as Ray
tasks, test every cell on the same cases in one Ray Data pipeline.

    python -m jobs.grid --out runs/grid --n 4000,10000,20000,50000,80000 \\
        --ratio 0.01,0.025,0.05,0.1,0.15,0.2,0.25,0.3,0.35,0.4,0.45,0.5 --cases 500 [--space w|z|w,z]

Smaller n are prefixes of the largest sample (a code depends only on seed and id). Cells
are persisted under RUN/grid/ as they finish, so an interrupted grid resumes by cell.
Writes RUN/grid.parquet (one row per cell) and RUN/grid.md with the seeds' tables and plots.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from compute.generation import Schedule, direction_matrices, run_cases
from compute.sampling import SamplingError, plan_resources, sample_table
from compute.seeding import draw_codes
from compute.sessions import make_session, run_single
from compute.tables import with_metadata, write_json_atomic, write_parquet_atomic
from compute.vectors_table import read_vectors, vectors_to_table
from jobs.bundles import resolve_bundle
from jobs.cli import UsageError, parser, run_main
from jobs.fit import SPACES, direction_rows, load_samples, plan_selections, submit_fits
from jobs.raycluster import add_ray_arguments, init_ray
from jobs.sample import add_resource_arguments
from jobs.test import mean_accuracy, parse_floats
from vectors.groups import GROUP_NAMES, PROPERTIES, assign_groups, check_ratio, measured_medians
from vectors.stats import DEFAULT_CUTOFFS, case_statistics, check_cutoffs, passes, summarize
from vectors.svm import SvmConfig

BYTES_PER_SAMPLE_FACTOR = 2.0  # driver peak / raw table size, measured at n = 300,000


def parse_list(text: str, name: str, kind) -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{name} must be a comma-separated list, got {text!r}") from None
    if not values:
        raise UsageError(f"{name} is empty")
    duplicates = sorted({v for v in values if values.count(v) > 1})
    if duplicates:
        raise UsageError(f"{name} has duplicates: {', '.join(map(str, duplicates))}")
    return sorted(values)


def check_memory(n: int, bundle) -> None:
    """Refuse an n whose samples would not fit in the driver's memory, before any work."""
    need = n * (bundle.z_dim + bundle.w_dim + len(bundle.score_names)) * 4 * BYTES_PER_SAMPLE_FACTOR
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        available = info["MemAvailable"]
    except (OSError, KeyError, ValueError):
        return  # not Linux: no reliable figure, no check
    if need > 0.8 * available:
        raise UsageError(f"--n {n:,} needs about {need / 2**30:.1f} GiB in the driver, more than 80% of the "
                         f"{available / 2**30:.1f} GiB available; use a smaller n or a bigger head node")


def cell_name(space: str, n: int, ratio: float) -> str:
    return f"{space}-n{n}-r{ratio:g}"


def calibrate(bundle, images: int = 256) -> float:
    """Images/s of synthesis + scoring in one process, for the plan's time estimate."""
    synthesis = make_session(bundle.graph_bytes("synthesis"), threads=2)
    scorer = make_session(bundle.graph_bytes("scorer"), threads=2)
    w = run_single(make_session(bundle.graph_bytes("mapping"), threads=2),
                   draw_codes(0, np.arange(images), bundle.z_dim))
    run_single(scorer, run_single(synthesis, w[:8]))
    started = time.perf_counter()
    run_single(scorer, run_single(synthesis, w))
    return images / (time.perf_counter() - started)


def fit_cells(run: Path, cells: list, seed: int, cfg: SvmConfig, medians_by_space, samples_by_space) -> None:
    """Fit every cell without a vectors file, all cells' tasks submitted at once."""
    import ray

    todo = [c for c in cells if not (run / "grid" / cell_name(*c) / "vectors.parquet").is_file()]
    if not todo:
        return
    pending, owners = {}, {}
    refs = {space: ray.put(samples_by_space[space][0]) for space in {c[0] for c in todo}}
    for cell in todo:
        space, n, ratio = cell
        latents, scores = samples_by_space[space]
        prefix = {k: v[:n] for k, v in scores.items()}
        groups = assign_groups(prefix, medians_by_space[space])
        try:
            selections = plan_selections(prefix, groups, ratio, seed)  # prefix rows only: indices < n
        except ValueError as exc:
            raise UsageError(f"cell {cell_name(*cell)}: {exc}") from exc
        for future, s in submit_fits(refs[space], selections, cfg).items():
            pending[future], owners[future] = s, cell
    results = {c: {} for c in todo}
    total, started = len(pending), time.perf_counter()
    while pending:
        done, _ = ray.wait(list(pending), num_returns=min(len(pending), 24), timeout=5)
        for future in done:
            s, cell = pending.pop(future), owners.pop(future)
            results[cell][(s.group, s.prop)] = (s, ray.get(future))
            if len(results[cell]) == 24:
                rows = direction_rows(results[cell], cell[2], cell[0])
                write_parquet_atomic(with_metadata(vectors_to_table(rows), {"fit": {
                    "space": cell[0], "n": cell[1], "ratio": cell[2], "seed": seed, "svm": cfg.as_dict(),
                    "medians": medians_by_space[cell[0]]}}), run / "grid" / cell_name(*cell) / "vectors.parquet")
        finished = total - len(pending)
        print(f"  fits {finished}/{total} ({time.perf_counter() - started:.0f}s)", flush=True)


def test_cells(run: Path, bundle, cells: list, cases: int, seed: int, schedule: Schedule, cutoffs,
               medians: dict, resources, rate: float) -> None:
    """Test every cell without results, all on the same case ids in one pipeline."""
    todo = [c for c in cells if not (run / "grid" / cell_name(*c) / "summary.json").is_file()]
    if not todo:
        return
    weights = schedule.weights()
    images = cases * (1 + len(todo) * len(weights))
    print(f"  testing {len(todo)} cells on the same {cases} cases: {images:,} images, "
          f"about {images / (rate * 0.8):.0f}s", flush=True)
    sets, spaces = [], []
    for cell in todo:
        _, directions, _ = read_vectors(run / "grid" / cell_name(*cell) / "vectors.parquet")
        sets.append(direction_matrices(directions))
        spaces.append(cell[0])
    started = time.perf_counter()
    last = [0.0]

    def report(done: int) -> None:
        elapsed = time.perf_counter() - started
        if elapsed - last[0] >= 10 or done == cases:
            last[0] = elapsed
            eta = elapsed / done * (cases - done)
            print(f"  tested {done}/{cases} cases, {elapsed:.0f}s elapsed, ETA {eta:.0f}s", flush=True)

    results = run_cases(bundle, cases, seed, "w", sets, medians, schedule, resources, progress=False,
                        set_spaces=spaces, on_batch=report)
    for k, cell in enumerate(todo):
        stats = case_statistics(weights, results.edit_scores[:, k], bundle.score_names)
        ok = passes(stats, cutoffs)
        summary = summarize(results.group, stats, ok, cutoffs)
        directory = run / "grid" / cell_name(*cell)
        table = pa.table({"case_id": results.case_id, "group": results.group.tolist(),
                          **{key: stats[key] for key in ("corr_eyes", "corr_mouth", "corr_pose", "sum_abs_corr",
                                                         "consistency")}, "passed": ok})
        write_parquet_atomic(table, directory / "cases.parquet")
        write_json_atomic(summary, directory / "summary.json")  # last: marks the cell complete


def grid_table(run: Path, cells: list) -> pa.Table:
    rows = []
    for cell in cells:
        directory = run / "grid" / cell_name(*cell)
        vectors, _, _ = read_vectors(directory / "vectors.parquet")
        summary = json.loads((directory / "summary.json").read_text())
        acc = mean_accuracy(vectors)
        k = dict(zip(vectors["group"].to_pylist(), vectors["k"].to_pylist()))
        rows.append({"space": cell[0], "n": cell[1], "ratio": cell[2], "k": [k[g] for g in GROUP_NAMES],
                     **{f"svm_acc_{p}": acc[p] for p in PROPERTIES},
                     **{f"mean_corr_{p}": summary["mean_abs_corr"][p] for p in PROPERTIES},
                     "sum_mean_abs_corr": summary["sum_mean_abs_corr"], "passed": summary["passed"],
                     "cases": summary["cases"], "consistency": summary["mean_consistency"]})
    return pa.Table.from_pylist(rows)


def write_grid_md(table: pa.Table, run: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table.to_pylist()
    lines = ["# vectorfind grid", ""]
    for space in sorted({r["space"] for r in rows}):
        mine = [r for r in rows if r["space"] == space]
        ns, ratios = sorted({r["n"] for r in mine}), sorted({r["ratio"] for r in mine})
        cell = {(r["n"], r["ratio"]): r for r in mine}
        lines += [f"## Space {space}: passed cases (of {mine[0]['cases']}) and sum of mean |corr| by n and ratio", "",
                  "| n \\ ratio | " + " | ".join(f"{r:g}" for r in ratios) + " |",
                  "|---|" + "---|" * len(ratios)]
        for n in ns:
            lines.append(f"| {n:,} | " + " | ".join(f"{cell[(n, r)]['passed']} ({cell[(n, r)]['sum_mean_abs_corr']:.3f})"
                                                  for r in ratios) + " |")
        top = ns[-1]
        lines += ["", f"## Space {space}: by ratio at n = {top:,}", "",
                  "| ratio | SVM acc eyes | mouth | pose | mean corr eyes | mouth | pose | sum | passed |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in ratios:
            c = cell[(top, r)]
            lines.append(f"| {r:g} | " + " | ".join(f"{c[f'svm_acc_{p}']:.4f}" for p in PROPERTIES) + " | "
                         + " | ".join(f"{c[f'mean_corr_{p}']:.4f}" for p in PROPERTIES)
                         + f" | {c['sum_mean_abs_corr']:.4f} | {c['passed']} |")
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
        for n in ns:
            axes[0].plot(ratios, [cell[(n, r)]["sum_mean_abs_corr"] for r in ratios], marker="o", label=f"n={n:,}")
            axes[1].plot(ratios, [cell[(n, r)]["passed"] for r in ratios], marker="o", label=f"n={n:,}")
        axes[0].set_ylabel("sum of mean |corr|")
        axes[1].set_ylabel("passed cases")
        for ax in axes:
            ax.set_xlabel("ratio")
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(run / f"grid_{space}_sum_and_passed.png", dpi=90)
        plt.close(fig)
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.3))
        for ax, p in zip(axes, PROPERTIES):
            for n in ns:
                ax.plot(ratios, [cell[(n, r)][f"mean_corr_{p}"] for r in ratios], marker="o", label=f"n={n:,}")
            ax.set_title(f"mean |corr| {p}")
            ax.set_xlabel("ratio")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(run / f"grid_{space}_per_property.png", dpi=90)
        plt.close(fig)
        lines += ["", f"![sum and passed]({f'grid_{space}_sum_and_passed.png'})", "",
                  f"![per property]({f'grid_{space}_per_property.png'})", ""]
    (run / "grid.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/grid"), help="run directory")
    p.add_argument("--n", default="4000,10000,20000,50000,80000", help="sample counts (comma-separated)")
    p.add_argument("--ratio", default="0.01,0.025,0.05,0.1,0.15,0.2,0.25,0.3,0.35,0.4,0.45,0.5",
                   help="k ratios (comma-separated)")
    p.add_argument("--cases", type=int, default=500, help="test cases, the same for every cell")
    p.add_argument("--space", default="w", help="w, z, or w,z")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--medians", default="manifest", choices=("manifest", "samples"))
    p.add_argument("--cutoffs", default=",".join(map(str, DEFAULT_CUTOFFS)), help="|corr| cutoffs eyes,mouth,pose")
    p.add_argument("--bundle", type=Path, default=None, help="model bundle (default: built-in synthetic model)")
    add_resource_arguments(p)
    add_ray_arguments(p)
    args = p.parse_args(argv)
    ns = parse_list(args.n, "--n", int)
    ratios = parse_list(args.ratio, "--ratio", float)
    spaces = parse_list(args.space, "--space", str)
    if ns[0] <= 0:
        raise UsageError(f"--n values must be positive, got {ns[0]}")
    try:
        for r in ratios:
            check_ratio(r)
        cutoffs = check_cutoffs(parse_floats(args.cutoffs, "--cutoffs"))
    except ValueError as exc:
        raise UsageError(f"--ratio: {exc}" if "ratio" in str(exc) else str(exc)) from exc
    if any(s not in SPACES for s in spaces):
        raise UsageError(f"--space must list w and/or z, got {args.space!r}")
    if args.cases < 1:
        raise UsageError(f"--cases must be >= 1, got {args.cases}")
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    bundle = resolve_bundle(args.bundle)
    check_memory(ns[-1], bundle)
    cells = [(s, n, r) for s in spaces for n in ns for r in ratios]
    schedule = Schedule()
    rate = calibrate(bundle)
    images = args.cases * (1 + len(cells) * len(schedule.weights()))
    print(f"plan: {len(cells)} cells ({', '.join(spaces)} x {len(ns)} n x {len(ratios)} ratios), "
          f"{ns[-1]:,} samples once, {len(cells) * 24} fits, {images:,} test images; "
          f"calibration {rate:,.0f} images/s in one process, so about "
          f"{(ns[-1] + images) / (rate * 0.8) / 60:.1f} min of sampling and testing", flush=True)

    started = time.perf_counter()
    init_ray(args.address, args.num_cpus)
    resources = plan_resources(args.actors, args.cpus_per_actor, args.gpus_per_actor)
    run = args.out
    print(f"[1/3] sampling {ns[-1]:,} faces (smaller n are prefixes)", flush=True)
    sample_table(bundle, ns[-1], args.seed, run, batch_size=args.batch_size, resources=resources)
    samples_by_space, medians_by_space = {}, {}
    for space in spaces:
        latents, scores, sampling, _ = load_samples(run, space)
        samples_by_space[space] = (latents, scores)
        medians_by_space[space] = (sampling["group_medians"] if args.medians == "manifest"
                                   else measured_medians(scores))
    print(f"[2/3] fitting {len(cells)} cells x 24 directions", flush=True)
    fit_cells(run, cells, args.seed, SvmConfig(), medians_by_space, samples_by_space)
    print(f"[3/3] testing {len(cells)} cells on {args.cases} cases", flush=True)
    test_cells(run, bundle, cells, args.cases, args.seed, schedule, cutoffs, medians_by_space[spaces[0]],
               resources, rate)
    table = with_metadata(grid_table(run, cells), {"grid": {"n": ns, "ratio": ratios, "space": spaces,
                                                            "cases": args.cases, "seed": args.seed,
                                                            "cutoffs": list(cutoffs), "medians": args.medians}})
    write_parquet_atomic(table, run / "grid.parquet")
    write_grid_md(table, run)
    print(f"done in {time.perf_counter() - started:.0f}s: {run / 'grid.parquet'}, {run / 'grid.md'}")


if __name__ == "__main__":
    run_main(main, sys.argv[1:], user_errors=(SamplingError,))
