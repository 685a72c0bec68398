"""The fit stage (method steps 2-5): groups, top/bottom-k selections, one fit per (group,
property) as a Ray task with the method's estimator (the reference: a linear SVM), unit
directions toward larger scores, and each direction's stability measured in the same task.

The driver reads every sample's scores but only the codes of the rows the selections use
(`read_selected`); those codes and scores go into the Ray object store once, and each task
receives its fit's indices into them. `fit_directions` is the stage as `jobs.fit` and
`jobs.vectorfind` run it; `load_samples`, `plan_fit`, `selected_rows`, `read_selected`,
`submit_fits` and `direction_rows` are the pieces the grid shares.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from compute import samples_store
from compute.run_record import write_record
from compute.runlock import holding_run_lock
from compute.runs import SAMPLES_FILE, VECTORS_FILE, reusable
from compute.storage import Place, as_place
from compute.vectors_table import write_vectors
from vectors.errors import InputError
from vectors.estimators import fit_and_measure
from vectors.groups import Selection, assign_groups, group_medians, group_sizes, plan_selections
from vectors.interop import boundary_name, reference_csv_name, write_boundary, write_reference_csv
from vectors.method import Method
from vectors.summary import mean_by_property
from vectors.svm import SvmConfig, orthogonalize


class FitError(InputError):
    """Samples that cannot be fitted as asked (missing, damaged, too few, non-finite)."""


@dataclass
class Samples:
    """What the fit reads of RUN/samples.parquet before it selects: every kept row's scores
    (a few bytes a row) and where the codes are; `read_selected` reads the codes it picks."""

    scores: dict[str, np.ndarray]  # score name -> (N,) float64, kept rows only
    sampling: dict               # the sampling stage's recorded configuration
    dropped: int                 # rows dropped for NaN or inf values
    path: Place                  # the samples table
    latent: str                  # its column of the method's space
    dim: int                     # that column's code width
    kept: np.ndarray | None = None  # the table row of each kept row; None: every row kept

    @property
    def n(self) -> int:
        return len(next(iter(self.scores.values())))


def load_samples(run: Place | Path, method: Method, drop_nonfinite: bool = False) -> Samples:
    """The scores the method uses, and which rows have finite codes in its space, from
    RUN/samples.parquet: the codes are streamed for the check, never held."""
    path = as_place(run) / SAMPLES_FILE
    if not samples_store.exists(path):
        raise FitError(f"no samples at {path}: sample them first (python -m jobs.sample --out {run})")
    needed = [*method.property_names, *method.group_by]
    try:
        schema = samples_store.schema(path)
        missing = [c for c in (method.latent, *needed) if c not in schema.names]
        if missing:
            raise FitError(f"{path} has no column {', '.join(missing)} (its columns: {', '.join(schema.names)})")
        table = samples_store.read_samples(path, columns=needed)
        sampling = samples_store.metadata(path).get("sampling", {})
        finite = samples_store.finite_rows(path, method.latent)
        dim = schema.field(method.latent).type.list_size
    except FitError:
        raise
    except Exception as exc:  # truncated or foreign files: pyarrow raises several types
        raise _unreadable(path, exc) from exc
    if len(finite) != table.num_rows:  # the parts changed between the two reads
        raise _unreadable(path, ValueError(f"{len(finite)} codes for {table.num_rows} rows of scores"))
    scores = {name: table[name].to_numpy().astype(np.float64) for name in needed}
    del table
    for values in scores.values():
        finite &= np.isfinite(values)
    dropped = int((~finite).sum())
    if dropped and not drop_nonfinite:
        raise FitError(f"{path} has {dropped} rows with NaN or inf scores or latents; "
                       f"drop them (--drop-nonfinite in jobs.fit and jobs.vectorfind) or sample again")
    kept = np.flatnonzero(finite) if dropped else None
    if dropped:
        scores = {k: v[finite] for k, v in scores.items()}
    return Samples(scores, sampling, dropped, path, method.latent, dim, kept)


def _unreadable(path: Place, exc: Exception) -> FitError:
    return FitError(f"{path} is not a readable samples table ({(str(exc).splitlines() or [type(exc).__name__])[0]}); "
                    f"delete it and sample again")


_CLASS_FIELDS = ("train_pos", "train_neg", "val_pos", "val_neg")  # the top and bottom k


def uses_group_rows(estimator: str) -> bool:
    """Whether the estimator reads every row of the group (Selection.rows): ridge does."""
    return estimator == "ridge"


def selected_rows(selections: list, estimator: str) -> np.ndarray:
    """The sorted union of every row the estimator's fits of these selections read: the top
    and bottom k of each, and for ridge each group's rows."""
    fields = (*_CLASS_FIELDS, "rows") if uses_group_rows(estimator) else _CLASS_FIELDS
    used = [getattr(s, f) for s in selections for f in fields]
    return np.unique(np.concatenate(used)).astype(np.int64) if used else np.zeros(0, dtype=np.int64)


@dataclass
class Selected:
    """The codes of the rows some fits select, and those fits' selections renumbered to them."""

    rows: np.ndarray             # sorted sample (kept-row) indices, the union selected_rows gives
    latents: np.ndarray          # (len(rows), D) float32: latents[i] is the code of rows[i]
    scores: dict[str, np.ndarray]  # score name -> (len(rows),) float64, the same rows

    def compact(self, selections: list, estimator: str) -> list[Selection]:
        """The selections with indices into `latents` instead of into the samples (the group's
        rows only for an estimator that reads them; None otherwise, as they were not read)."""
        def renumber(s):
            fields = {f: np.searchsorted(self.rows, getattr(s, f)) for f in _CLASS_FIELDS}
            group = np.searchsorted(self.rows, s.rows) if uses_group_rows(estimator) else None
            return replace(s, **fields, rows=group)
        return [renumber(s) for s in selections]


def read_selected(samples: Samples, rows: np.ndarray) -> Selected:
    """Read the codes of these rows (sorted kept-row indices, see selected_rows) and nothing
    else: len(rows) x D x 4 B beside the scores, and one batch while reading, whatever N is
    (docs/jobs.md, "Driver memory")."""
    table_rows = rows if samples.kept is None else samples.kept[rows]
    try:
        latents = samples_store.read_rows(samples.path, samples.latent, table_rows)
    except Exception as exc:  # changed or damaged since the scores were read
        raise _unreadable(samples.path, exc) from exc
    return Selected(rows, latents, {k: v[rows] for k, v in samples.scores.items()})


@dataclass
class FitPlan:
    """Every selection of one fit, and the configuration its vectors file records."""

    selections: list
    config: dict
    sizes: dict[str, int]


def plan_fit(samples: Samples, method: Method, seed: int, n: int | None = None) -> FitPlan:
    """Groups and selections on the first n samples (all by default); errors before any fit."""
    n = samples.n if n is None else n
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
def fit_directions(run: Place | Path, method: Method = Method(), seed: int = 0, drop_nonfinite: bool = False,
                   out: Place | Path | None = None, progress: bool = True, start_ray=None) -> Place:
    """Fit (or reuse, if `out` holds a fit made with the same settings) the directions of RUN.
    start_ray: called only when there is a fit to run (jobs.fit starts Ray with it)."""
    import ray

    samples = load_samples(run, method, drop_nonfinite)
    plan = plan_fit(samples, method, seed)
    run = as_place(run)
    out = as_place(out or run / VECTORS_FILE)
    if reusable(out, "fit", plan.config, progress):
        return out
    if start_ray is not None:
        start_ray()
    selected = read_selected(samples, selected_rows(plan.selections, method.estimator))
    if progress:
        print(f"{samples.n:,} samples in {method.latent} ({samples.dim} dims), medians from {method.medians}"
              + (f", {samples.dropped} non-finite rows dropped" if samples.dropped else ""))
        print("group sizes: " + "  ".join(f"{g} {n}" for g, n in plan.sizes.items()))
        print(f"read the codes of the {len(selected.rows):,} selected rows ({selected.latents.nbytes / 1e6:,.0f} MB)")
    started = time.perf_counter()
    pending = submit_fits(ray.put(selected.latents), selected.compact(plan.selections, method.estimator), method.svm,
                          method.estimator, method.stability_splits, seed, ray.put(selected.scores))
    results = gather_fits(pending, progress, show_c=method.estimator == "svm_cv")
    rows = direction_rows(results, method)
    write_vectors(rows, {"fit": plan.config, "method": method.to_dict()}, out)
    if out.key() == (run / VECTORS_FILE).key():
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
