"""The fit stage (method steps 2-5): groups, top/bottom-k selections, one fit per (group,
property) as a Ray task with the method's estimator (the reference: a linear SVM), unit
directions toward larger scores, and each direction's stability measured in the same task.

The latent matrix and the scores go into the Ray object store once; each task receives the
row indices of its fit. `fit_directions` is the stage as `jobs.fit` and `jobs.vectorfind` run it;
`plan_fit`, `submit_fits` and `direction_rows` are the pieces the grid shares.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compute import samples_store
from compute.run_record import write_record
from compute.runlock import holding_run_lock
from compute.runs import SAMPLES_FILE, VECTORS_FILE, reusable
from compute.tables import vector_matrix
from compute.vectors_table import write_vectors
from vectors.errors import InputError
from vectors.estimators import fit_and_measure
from vectors.groups import assign_groups, group_medians, group_sizes, plan_selections
from vectors.interop import boundary_name, reference_csv_name, write_boundary, write_reference_csv
from vectors.method import Method
from vectors.summary import mean_by_property
from vectors.svm import SvmConfig, orthogonalize


class FitError(InputError):
    """Samples that cannot be fitted as asked (missing, damaged, too few, non-finite)."""


@dataclass
class Samples:
    """The columns of RUN/samples.parquet one fit needs, as arrays."""

    latents: np.ndarray          # (N, D) float32, the method's space
    scores: dict[str, np.ndarray]  # score name -> (N,) float64
    sampling: dict               # the sampling stage's recorded configuration
    dropped: int                 # rows dropped for NaN or inf values


def load_samples(run: Path, method: Method, drop_nonfinite: bool = False) -> Samples:
    """The latents of the method's space and the scores it uses, from RUN/samples.parquet."""
    path = Path(run) / SAMPLES_FILE
    if not samples_store.exists(path):
        raise FitError(f"no samples at {path}: sample them first (python -m jobs.sample --out {run})")
    needed = [*method.property_names, *method.group_by]
    try:
        columns = samples_store.schema(path).names
        missing = [c for c in (method.latent, *needed) if c not in columns]
        if missing:
            raise FitError(f"{path} has no column {', '.join(missing)} (its columns: {', '.join(columns)})")
        table = samples_store.read_samples(path, columns=[method.latent, *needed])
        sampling = samples_store.metadata(path).get("sampling", {})
    except FitError:
        raise
    except Exception as exc:  # truncated or foreign files: pyarrow raises several types
        raise FitError(f"{path} is not a readable samples table ({str(exc).splitlines()[0]}); "
                       f"delete it and sample again") from exc
    scores = {name: table[name].to_numpy().astype(np.float64) for name in needed}
    latents = vector_matrix(table[method.latent])
    finite = np.isfinite(latents).all(axis=1)
    for values in scores.values():
        finite &= np.isfinite(values)
    dropped = int((~finite).sum())
    if dropped and not drop_nonfinite:
        raise FitError(f"{path} has {dropped} rows with NaN or inf scores or latents; "
                       f"drop them (--drop-nonfinite in jobs.fit and jobs.vectorfind) or sample again")
    if dropped:
        latents, scores = latents[finite], {k: v[finite] for k, v in scores.items()}
    return Samples(latents, scores, sampling, dropped)


@dataclass
class FitPlan:
    """Every selection of one fit, and the configuration its vectors file records."""

    selections: list
    config: dict
    sizes: dict[str, int]


def plan_fit(samples: Samples, method: Method, seed: int, n: int | None = None) -> FitPlan:
    """Groups and selections on the first n samples (all by default); errors before any fit."""
    n = len(samples.latents) if n is None else n
    scores = {k: v[:n] for k, v in samples.scores.items()}
    medians = group_medians(method, samples.sampling.get("group_medians", {}), scores)
    groups = assign_groups(scores, method.group_by, medians)
    selections = plan_selections(scores, groups, method, seed)  # prefix rows only: indices < n
    sizes = group_sizes(groups, method.group_names)
    config = {**method.fit_config(), "seed": seed, "n": n, "median_values": medians,
              "dropped_nonfinite": samples.dropped, "samples": samples.sampling,
              "bundle_manifest_sha256": samples.sampling.get("bundle_manifest_sha256")}
    return FitPlan(selections, config, sizes)


def submit_fits(latents_ref, selections: list, svm: SvmConfig, estimator: str = "svm", stability_splits: int = 0,
                seed: int = 0, scores_ref=None) -> dict:
    """One Ray task per selection on the shared latent matrix (and scores, {name: (N,)}, which
    the ridge estimator needs): the fit and its stability; returns {future: selection}."""
    import ray

    fit_task = ray.remote(num_cpus=1)(fit_and_measure)
    return {fit_task.remote(latents_ref, scores_ref, s, estimator, svm, stability_splits, seed): s
            for s in selections}


def direction_rows(results: dict, method: Method) -> list[dict]:
    """Rows of compute.vectors_table from {(group, prop): (selection, FitResult)}."""
    directions = {key: r.direction for key, (_, r) in results.items()}
    if method.orthogonalize:
        for g in sorted({g for g, _ in results}):
            for p, d in orthogonalize({p: directions[(g, p)] for p in method.property_names}).items():
                directions[(g, p)] = d
    return [{"space": method.latent, "group": s.group, "property": s.prop, "direction": directions[key],
             "val_accuracy": r.val_accuracy, "group_size": s.group_size, "k": s.k, "ratio": method.ratio,
             "converged": r.converged, "fit_seconds": r.fit_seconds, "stability": r.stability,
             "estimator": method.estimator, "svm_c": r.c}
            for key, (s, r) in sorted(results.items())]


def gather_fits(pending: dict, progress: bool = True, show_c: bool = False) -> dict:
    """Wait for every future of `pending` ({future: selection}); {(group, prop): (selection, result)}.
    show_c: print each fit's C (svm_cv chooses one per direction)."""
    import ray

    total, results = len(pending), {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        s = pending.pop(done[0])
        r = ray.get(done[0])
        results[(s.group, s.prop)] = (s, r)
        if progress:
            note = "" if r.converged else "  (did not converge)"
            stable = "" if np.isnan(r.stability) else f"  stability {r.stability:.3f}"
            if show_c:
                stable = f"  C {r.c:g}" + stable
            print(f"  [{len(results):2d}/{total}] {s.group} {s.prop:10s} k={s.k:<6d} "
                  f"val acc {r.val_accuracy:.3f}{stable}  {r.fit_seconds:5.1f}s{note}", flush=True)
    return results


@holding_run_lock("run", create=False)  # one job at a time in RUN
def fit_directions(run: Path, method: Method = Method(), seed: int = 0, drop_nonfinite: bool = False,
                   out: Path | None = None, progress: bool = True, start_ray=None) -> Path:
    """Fit (or reuse, if `out` holds a fit made with the same settings) the directions of RUN.
    start_ray: called only when there is a fit to run (jobs.fit starts Ray with it)."""
    import ray

    samples = load_samples(run, method, drop_nonfinite)
    plan = plan_fit(samples, method, seed)
    out = Path(out or Path(run) / VECTORS_FILE)
    if reusable(out, "fit", plan.config, progress):
        return out
    if start_ray is not None:
        start_ray()
    if progress:
        print(f"{len(samples.latents):,} samples in {method.latent} ({samples.latents.shape[1]} dims), "
              f"medians from {method.medians}"
              + (f", {samples.dropped} non-finite rows dropped" if samples.dropped else ""))
        print("group sizes: " + "  ".join(f"{g} {n}" for g, n in plan.sizes.items()))
    started = time.perf_counter()
    pending = submit_fits(ray.put(samples.latents), plan.selections, method.svm, method.estimator,
                          method.stability_splits, seed, ray.put(samples.scores))
    results = gather_fits(pending, progress, show_c=method.estimator == "svm_cv")
    rows = direction_rows(results, method)
    write_vectors(rows, {"fit": plan.config, "method": method.to_dict()}, out)
    if out.resolve() == (Path(run) / VECTORS_FILE).resolve():
        write_record(run, method=method)  # the run's method is now this one (a run with a record only)
    if progress:
        print(fit_summary(rows, method))
        print(f"{len(rows)} fits in {time.perf_counter() - started:.1f}s; wrote {out}")
    return out


def fit_summary(rows: list[dict], method: Method) -> str:
    lines = [f"estimator {method.estimator}; mean validation accuracy: " + "  ".join(
        f"{p} {np.mean([r['val_accuracy'] for r in rows if r['property'] == p]):.3f}"
        for p in method.property_names)]
    stability = mean_by_property([r["property"] for r in rows], [r["stability"] for r in rows],
                                 method.property_names)
    if any(v is not None for v in stability.values()):
        lines.append(f"mean stability (cosine between {method.stability_splits} resampled fits): " + "  ".join(
            f"{p} {v:.3f}" for p, v in stability.items() if v is not None))
    unconverged = [f"{r['group']}/{r['property']}" for r in rows if not r["converged"]]
    if unconverged:
        lines.append(f"{len(unconverged)} of {len(rows)} fits did not converge ({', '.join(unconverged[:6])}"
                     f"{', ...' if len(unconverged) > 6 else ''}): consider scaled inputs or more iterations")
    return "\n".join(lines)


def export_names(method: Method) -> list[str]:
    """Every file name --export-csv and --export-boundaries write for `method`; refused
    (vectors.names.NameRefused) before any work where a property name would leave the directory."""
    return [name(p, method.latent, g) for name in (reference_csv_name, boundary_name)
            for g in method.group_names for p in method.property_names]


def export_directions(directions: dict, space: str, csv_dir: Path | None, boundary_dir: Path | None) -> None:
    """Write {(group, property): direction} in the reference's CSV layout and/or as
    InterFaceGAN boundaries. Every file name is built (and checked) before anything is written."""
    planned = [(Path(directory), name(prop, space, group), write, d)
               for directory, name, write in ((csv_dir, reference_csv_name, write_reference_csv),
                                              (boundary_dir, boundary_name, write_boundary)) if directory is not None
               for (group, prop), d in directions.items()]
    for directory, file, write, d in planned:
        directory.mkdir(parents=True, exist_ok=True)
        write(d, directory / file)
