"""The image generation test: edit fresh faces along the directions and check the scores.

    python -m jobs.test --run RUN [--cases 200] [--seed 0] [--cutoffs 0.92,0.88,0.92]

Reads RUN/vectors.parquet (or --vectors), writes RUN/cases.parquet, RUN/summary.json,
RUN/passed.parquet and RUN/passed.csv, and prints the seeds' results table.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from compute.generation import Schedule, direction_matrices, run_cases
from compute.sampling import plan_resources
from compute.tables import (read_metadata, vector_column, vector_matrix, with_metadata, write_json_atomic,
                            write_parquet_atomic)
from compute.vectors_table import VECTORS_FILE, read_vectors
from jobs.bundles import resolve_bundle
from jobs.cli import UsageError, parser, run_main
from jobs.raycluster import add_ray_arguments, init_ray
from jobs.sample import add_resource_arguments
from vectors.groups import PROPERTIES
from vectors.stats import DEFAULT_CUTOFFS, case_statistics, check_cutoffs, passes, summarize

CASES_FILE, SUMMARY_FILE = "cases.parquet", "summary.json"
IDENTITY = ("face_width", "skin_tone", "eye_spacing", "hair_parting")


def parse_floats(text: str, name: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{name} must be comma-separated numbers, got {text!r}") from None


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_directions(vectors_path: Path, bundle):
    """(space, {group: (3, D)}, vectors table, fit metadata), checked against the bundle."""
    try:
        table, directions, meta = read_vectors(vectors_path)
        matrices = direction_matrices(directions)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    fit_meta = meta.get("fit", {})
    recorded = fit_meta.get("bundle_manifest_sha256")
    if recorded and recorded != bundle.manifest_sha256:
        raise UsageError(f"{vectors_path} was fitted on samples of another bundle (manifest sha256 "
                         f"{recorded[:12]}..., this bundle {bundle.manifest_sha256[:12]}...); pass the "
                         f"matching --bundle")
    space = table["space"][0].as_py()
    return space, matrices, table, fit_meta


def cases_table(results, stats: dict, passed: np.ndarray, identity_spread) -> pa.Table:
    columns = {"case_id": pa.array(results.case_id, pa.int64()), "z": vector_column(results.z),
               "w": vector_column(results.w), "group": pa.array(results.group.tolist(), pa.string())}
    for key in ("corr_eyes", "corr_mouth", "corr_pose", "sum_abs_corr", "spread_hair_color",
                "spread_hair_length", "spread_background_mean", "consistency"):
        columns[key] = pa.array(stats[key], pa.float64())
    if identity_spread is not None:
        columns["identity_spread"] = pa.array(identity_spread, pa.float64())
    columns["degenerate"] = pa.array(stats["degenerate"], pa.bool_())
    columns["passed"] = pa.array(passed, pa.bool_())
    return pa.table(columns)


def write_passed(cases: pa.Table, run: Path) -> None:
    chosen = cases.filter(cases["passed"])
    write_parquet_atomic(chosen, run / "passed.parquet")
    z_dim = cases.schema.field("z").type.list_size
    z = vector_matrix(chosen["z"]) if chosen.num_rows else np.zeros((0, z_dim), np.float32)
    flat = chosen.select(["case_id", "group", "corr_eyes", "corr_mouth", "corr_pose", "sum_abs_corr", "consistency"])
    for i in range(z.shape[1]):
        flat = flat.append_column(f"z_{i}", pa.array(z[:, i], pa.float32()))
    tmp = run / ".passed.csv.partial"
    pacsv.write_csv(flat, tmp)
    tmp.replace(run / "passed.csv")


def results_table(summary: dict, accuracy: dict | None) -> str:
    lines = ["", f"{'property':10s} {'SVM val acc':>11s} {'mean corr':>10s} {'cutoff':>7s}"]
    for p in PROPERTIES:
        acc = f"{accuracy[p]:.4f}" if accuracy and accuracy.get(p) is not None else "-"
        lines.append(f"{p:10s} {acc:>11s} {summary['mean_corr'][p]:10.4f} {summary['cutoffs'][p]:7.2f}")
    lines.append(f"sum of mean |corr|: {summary['sum_mean_abs_corr']:.4f}   passed: {summary['passed']} / "
                 f"{summary['cases']} ({100 * summary['passed_ratio']:.1f}%)"
                 + (f", {summary['degenerate']} degenerate" if summary["degenerate"] else ""))
    lines.append("passes per group: " + "  ".join(f"{g} {v['passed']}/{v['cases']}"
                                                   for g, v in summary["per_group"].items()))
    return "\n".join(lines)


def mean_accuracy(vectors: pa.Table) -> dict:
    acc = {}
    for p in PROPERTIES:
        values = [a for a, q in zip(vectors["val_accuracy"].to_pylist(), vectors["property"].to_pylist())
                  if q == p and a is not None]
        acc[p] = float(np.mean(values)) if values else None
    return acc


def run_test(run: Path, bundle, vectors_path: Path, cases: int, seed: int, schedule: Schedule,
             cutoffs, max_spread: float | None, resources, progress: bool = True) -> dict:
    """Run (or reuse) the generation test of RUN; returns the summary."""
    if cases < 1:
        raise UsageError(f"--cases must be >= 1, got {cases}")
    if seed < 0:
        raise UsageError(f"--seed must be >= 0, got {seed}")
    try:
        cutoffs = check_cutoffs(cutoffs)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    space, matrices, vectors, fit_meta = load_directions(vectors_path, bundle)
    medians = fit_meta.get("medians") or bundle.manifest["group_medians"]
    config = {"cases": cases, "seed": seed, "space": space, "schedule": schedule.as_dict(),
              "cutoffs": dict(zip(PROPERTIES, cutoffs)), "max_spread": max_spread, "medians": medians,
              "vectors": str(vectors_path), "vectors_sha256": file_sha256(vectors_path),
              "bundle_manifest_sha256": bundle.manifest_sha256}
    cases_path = run / CASES_FILE
    if cases_path.is_file() and read_metadata(cases_path).get("test") == config:
        summary = json.loads((run / SUMMARY_FILE).read_text())
        if progress:
            print(f"reusing {cases_path} ({cases} cases, seed {seed})")
        return summary

    started = time.perf_counter()
    results = run_cases(bundle, cases, seed, space, [matrices], medians, schedule, resources, progress=progress)
    elapsed = time.perf_counter() - started
    weights = schedule.weights()
    stats = case_statistics(weights, results.edit_scores[:, 0], bundle.score_names)
    identity_spread = None
    if results.edit_truth is not None:
        names = bundle.manifest["truth_names"]
        identity_spread = np.mean([results.edit_truth[:, 0, :, names.index(t)].std(axis=1) for t in IDENTITY], axis=0)
    passed = passes(stats, cutoffs, max_spread)
    table = with_metadata(cases_table(results, stats, passed, identity_spread), {"test": config})
    summary = summarize(results.group, stats, passed, cutoffs, max_spread)
    summary.update({"space": space, "seed": seed, "schedule": schedule.as_dict(), "edits_per_case": len(weights),
                    "svm_val_accuracy": mean_accuracy(vectors), "ratio": fit_meta.get("ratio"),
                    "n_samples": fit_meta.get("n"), "seconds": round(elapsed, 2),
                    "images_per_second": round(cases * (len(weights) + 1) / elapsed, 1)})
    if identity_spread is not None:
        summary["mean_identity_spread"] = float(np.mean(identity_spread))
    run.mkdir(parents=True, exist_ok=True)
    write_passed(table, run)
    write_json_atomic(summary, run / SUMMARY_FILE)
    write_parquet_atomic(table, cases_path)  # last: its metadata marks the stage complete
    if progress:
        print(f"tested {cases} cases x {len(weights)} edits in {elapsed:.1f}s "
              f"({summary['images_per_second']:,.0f} images/s)")
    return summary


def add_test_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cases", type=int, default=200, help="test cases (fresh faces)")
    p.add_argument("--cutoffs", default=",".join(map(str, DEFAULT_CUTOFFS)),
                   help="|corr| cutoffs for eyes,mouth,pose (v6 used 0.75,0.77,0.80)")
    p.add_argument("--max-spread", type=float, default=None,
                   help="also require consistency (mean std of the grouping scores over the edits) <= this")
    s = Schedule()
    p.add_argument("--eyes", default=",".join(map(str, s.eyes)), help="eyes edit weights")
    p.add_argument("--mouth", default=",".join(map(str, s.mouth)), help="mouth edit weights")
    p.add_argument("--pose", default=",".join(map(str, s.pose)), help="pose edit weights")


def schedule_from(args) -> Schedule:
    try:
        return Schedule(parse_floats(args.eyes, "--eyes"), parse_floats(args.mouth, "--mouth"),
                        parse_floats(args.pose, "--pose"))
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def main(argv=None) -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, required=True, help="run directory")
    p.add_argument("--vectors", type=Path, default=None, help=f"vectors file (default: RUN/{VECTORS_FILE})")
    p.add_argument("--seed", type=int, default=0, help="test seed; case i's code is a function of (seed, i)")
    p.add_argument("--bundle", type=Path, default=None, help="model bundle (default: built-in synthetic model)")
    add_test_arguments(p)
    add_resource_arguments(p)
    add_ray_arguments(p)
    args = p.parse_args(argv)
    schedule = schedule_from(args)
    try:
        cutoffs = check_cutoffs(parse_floats(args.cutoffs, "--cutoffs"))
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if args.cases < 1:
        raise UsageError(f"--cases must be >= 1, got {args.cases}")
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    vectors_path = args.vectors or args.run / VECTORS_FILE
    if not vectors_path.is_file():
        raise UsageError(f"no vectors at {vectors_path}: run `python -m jobs.fit --run {args.run}` first")
    bundle = resolve_bundle(args.bundle)
    load_directions(vectors_path, bundle)  # a mismatched bundle is refused before Ray starts
    init_ray(args.address, args.num_cpus)
    resources = plan_resources(args.actors, args.cpus_per_actor, args.gpus_per_actor)
    summary = run_test(args.run, bundle, vectors_path, args.cases, args.seed, schedule, cutoffs,
                       args.max_spread, resources)
    print(results_table(summary, summary.get("svm_val_accuracy")))
    print(f"wrote {args.run / CASES_FILE}, {SUMMARY_FILE}, passed.parquet, passed.csv")


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
