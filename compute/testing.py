"""The image generation test stage: directions in, per-case results and the summary out.

`run_test` is the stage as `jobs.test` and `jobs.vectorfind` run it; `evaluate` turns the
actors' scores for one direction set into the cases table and the summary, and is the one
evaluator the grid uses too, so every cases.parquet has the same schema (grid cells add
their cell keys).
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from compute.generation import CaseResults, DirectionSet, run_cases
from compute.run_record import write_record
from compute.runlock import holding_run_lock
from compute.runs import CASES_FILE, PASSED_CSV, PASSED_PARQUET, SUMMARY_FILE, VECTORS_FILE, relative_to_run, reusable
from compute.storage import Place, as_place
from compute.tables import vector_column, vector_matrix, with_metadata, write_json_atomic, write_parquet_atomic
from compute.vectors_table import VectorsError, read_vectors
from vectors.edits import direction_matrices
from vectors.groups import group_medians
from vectors.method import Method
from vectors.stats import case_statistics, passes
from vectors.summary import mean_accuracy_by_property, mean_by_property, summarize

# The synthetic world's traits that no score measures: their spread over a case's edits
# says how much an edit changes identity.
IDENTITY = ("face_width", "skin_tone", "eye_spacing", "hair_parting")


def file_sha256(path: Place | Path) -> str:
    return as_place(path).sha256()


def load_direction_set(vectors_path: Place | Path, bundle, method: Method) -> tuple[DirectionSet, pa.Table, dict]:
    """The directions of a vectors file as a DirectionSet, checked against bundle and method."""
    table, directions, meta = read_vectors(vectors_path)
    fit = meta.get("fit", {})
    recorded = fit.get("bundle_manifest_sha256")
    if recorded and recorded != bundle.manifest_sha256:
        raise VectorsError(f"{vectors_path} was fitted on samples of another bundle (manifest sha256 "
                           f"{recorded[:12]}..., this bundle {bundle.manifest_sha256[:12]}...); use the "
                           f"matching bundle")
    space = table["space"][0].as_py()
    if space != method.latent:
        raise VectorsError(f"{vectors_path} holds {space} directions but the method's space is "
                           f"{method.space}; set the space to {space}")
    groups = sorted({g for g, _ in directions})
    if groups != sorted(method.group_names):
        raise VectorsError(f"{vectors_path} has directions for groups {', '.join(groups)}, the method "
                           f"groups faces into {', '.join(method.group_names)}; use the same grouping scores")
    matrices = direction_matrices(directions, method.property_names)
    medians = fit.get("median_values")
    if medians is None:  # imported vectors record none: group test faces by the bundle's fixed medians
        medians = group_medians(replace(method, medians="manifest"), bundle.manifest.get("group_medians", {}), {})
    return DirectionSet(matrices, method.space, medians), table, meta


def evaluate(results: CaseResults, k: int, method: Method, bundle) -> tuple[pa.Table, dict]:
    """The cases table and summary of direction set k of `results`."""
    stats = case_statistics(method, results.edit_scores[:, k], bundle.score_names)
    passed = passes(stats, method)
    groups = results.group[:, k]
    columns = {"case_id": pa.array(results.case_id, pa.int64()), "z": vector_column(results.z),
               "w": vector_column(results.w), "group": pa.array(groups.tolist(), pa.string())}
    for key in [f"corr_{p}" for p in method.property_names] + ["sum_abs_corr"] + \
               [f"spread_{g}" for g in method.group_by] + ["consistency"]:
        columns[key] = pa.array(stats[key], pa.float64())
    summary = summarize(groups, stats, passed, method)
    if results.edit_truth is not None:
        names = bundle.manifest["truth_names"]
        spread = np.mean([results.edit_truth[:, k, :, names.index(t)].std(axis=1) for t in IDENTITY], axis=0)
        columns["identity_spread"] = pa.array(spread, pa.float64())
        summary["mean_identity_spread"] = float(np.mean(spread))
    columns["degenerate"] = pa.array(stats["degenerate"], pa.bool_())
    columns["passed"] = pa.array(passed, pa.bool_())
    return pa.table(columns), summary


def write_test_outputs(directory: Place | Path, cases: pa.Table, summary: dict, config: dict) -> None:
    """cases.parquet (its metadata marks the stage complete, so it goes last), summary.json,
    and the passed cases as Parquet and as CSV (z spelled out, one column per dimension)."""
    directory = as_place(directory)
    chosen = cases.filter(cases["passed"])
    write_parquet_atomic(chosen, directory / PASSED_PARQUET)
    z = vector_matrix(chosen["z"]) if chosen.num_rows else np.zeros((0, cases.schema.field("z").type.list_size))
    keep = ["case_id", "group"] + [c for c in cases.column_names if c.startswith("corr_")] + \
           ["sum_abs_corr", "consistency"]
    flat = chosen.select(keep)
    for i in range(z.shape[1]):
        flat = flat.append_column(f"z_{i}", pa.array(z[:, i], pa.float32()))
    with (directory / PASSED_CSV).open_write() as f:
        pacsv.write_csv(flat, f)
    write_json_atomic(summary, directory / SUMMARY_FILE)
    write_parquet_atomic(with_metadata(cases, {"test": config}), directory / CASES_FILE)


def test_config(method: Method, cases: int, seed: int, run: Place | Path, vectors_path: Place | Path, bundle,
                direction_set: DirectionSet) -> dict:
    return {"method": method.to_dict(), "cases": cases, "seed": seed,
            "vectors": relative_to_run(vectors_path, run), "vectors_sha256": file_sha256(vectors_path),
            "median_values": direction_set.medians, "bundle_manifest_sha256": bundle.manifest_sha256}


@holding_run_lock("run", create=False)
def run_test(run: Place | Path, bundle, method: Method = Method(), cases: int = 500, seed: int = 0, resources=None,
             vectors_path: Place | Path | None = None, progress: bool = True) -> dict:
    """Run (or reuse, if RUN holds a test made with the same settings) the generation test."""
    from compute.resources import plan_resources

    run = as_place(run)
    vectors_path = as_place(vectors_path or run / VECTORS_FILE)
    method.check_scores(bundle.score_names)
    method.check_layers(bundle.num_ws)
    direction_set, vectors, meta = load_direction_set(vectors_path, bundle, method)
    config = test_config(method, cases, seed, run, vectors_path, bundle, direction_set)
    own = vectors_path.key() == (run / VECTORS_FILE).key()
    write_record(run, bundle, method if own else None)  # the run remembers its bundle (where it is now), method
    if reusable(run / CASES_FILE, "test", config, progress) and (run / SUMMARY_FILE).is_file():
        return json.loads((run / SUMMARY_FILE).read_text(limit=1 << 26))

    weights = method.edit_weights()
    started = time.perf_counter()
    results = run_cases(bundle, cases, seed, [direction_set], method.group_by, weights,
                        resources or plan_resources(), progress=progress)
    elapsed = time.perf_counter() - started
    table, summary = evaluate(results, 0, method, bundle)
    fit = meta.get("fit", {})
    summary.update({"space": method.space, "seed": seed, "schedule": {p.name: list(p.schedule) for p in method.properties},
                    "edits_per_case": len(weights), "group_by": list(method.group_by),
                    "svm_val_accuracy": mean_accuracy_by_property(vectors["property"].to_pylist(),
                                                                   vectors["val_accuracy"].to_pylist(),
                                                                   method.property_names),
                    "stability": mean_by_property(vectors["property"].to_pylist(), vectors["stability"].to_pylist(),
                                                  method.property_names),
                    "fits_not_converged": [f"{g}/{p}" for g, p, c in zip(
                        vectors["group"].to_pylist(), vectors["property"].to_pylist(),
                        vectors["converged"].to_pylist()) if c is False],
                    "ratio": fit.get("ratio"), "n_samples": fit.get("n"), "seconds": round(elapsed, 2),
                    "images_per_second": round(cases * (len(weights) + 1) / elapsed, 1)})
    run.mkdir()
    write_test_outputs(run, table, summary, config)
    if progress:
        print(f"tested {cases} cases x {len(weights)} edits in {elapsed:.1f}s "
              f"({summary['images_per_second']:,.0f} images/s)")
    return summary
