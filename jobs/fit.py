"""Fit the property directions: 8 groups x (eyes, mouth, pose) = 24 linear SVMs as Ray tasks.

    python -m jobs.fit --run RUN [--space w|z] [--ratio 0.2] [--medians manifest|samples]

Reads RUN/samples.parquet, writes RUN/vectors.parquet (or --out). The latent matrix goes
into the Ray object store once; each task receives the row indices of its fit.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from compute.tables import read_metadata, vector_matrix, with_metadata, write_parquet_atomic
from compute.vectors_table import VECTORS_FILE, read_vectors, vectors_to_table
from jobs.cli import UsageError, parser, run_main
from jobs.raycluster import add_ray_arguments, init_ray
from vectors.groups import (GLOBAL, GROUP_NAMES, GROUPING_SCORES, PROPERTIES, assign_groups, check_ratio,
                            group_sizes, measured_medians, select)
from vectors.interop import boundary_name, reference_csv_name, write_boundary, write_reference_csv
from vectors.svm import SOLVERS, SvmConfig, fit_selection, orthogonalize

SPACES = ("w", "z")
NEEDED = PROPERTIES + GROUPING_SCORES


def load_samples(run: Path, space: str, drop_nonfinite: bool = False):
    """(latents (N, D) float32, {score: (N,)}, sampling config, rows dropped) from RUN."""
    if space not in SPACES:
        raise UsageError(f"unknown --space {space!r}; choose w (v7) or z (v6)")
    path = Path(run) / "samples.parquet"
    if not path.is_file():
        raise UsageError(f"no samples at {path}: run `python -m jobs.sample --out {run}` first")
    columns = pq.read_schema(path).names
    missing = [c for c in (space, *NEEDED) if c not in columns]
    if missing:
        raise UsageError(f"{path} lacks columns {', '.join(missing)}")
    table = pq.read_table(path, columns=[space, *NEEDED])
    scores = {name: table[name].to_numpy().astype(np.float64) for name in NEEDED}
    latents = vector_matrix(table[space])
    finite = np.isfinite(latents).all(axis=1)
    for values in scores.values():
        finite &= np.isfinite(values)
    dropped = int((~finite).sum())
    if dropped and not drop_nonfinite:
        raise UsageError(f"{path} has {dropped} rows with NaN or inf scores or latents; "
                         f"pass --drop-nonfinite to drop them")
    if dropped:
        latents = latents[finite]
        scores = {k: v[finite] for k, v in scores.items()}
    return latents, scores, read_metadata(path).get("sampling", {}), dropped


def plan_selections(scores: dict, groups: np.ndarray, ratio: float, seed: int) -> list:
    """Every (group, property) selection; a too-small group is reported before any work starts.
    All samples in the GLOBAL group give 3 selections (one per property), else 24."""
    names = (GLOBAL,) if (groups == GLOBAL).all() else GROUP_NAMES
    return [select(scores, groups, g, p, ratio, seed) for g in names for p in PROPERTIES]


def submit_fits(latents_ref, selections: list, cfg: SvmConfig) -> dict:
    """One Ray task per selection on the shared latent matrix; returns {future: selection}."""
    import ray

    fit_task = ray.remote(num_cpus=1)(fit_selection)
    return {fit_task.remote(latents_ref, s, cfg): s for s in selections}


def direction_rows(results: dict, ratio: float, space: str, orthogonal: bool = False) -> list[dict]:
    """Rows of compute.vectors_table from {(group, prop): (selection, FitResult)}."""
    directions = {key: r.direction for key, (_, r) in results.items()}
    if orthogonal:
        for g in sorted({g for g, _ in results}):
            for p, d in orthogonalize({p: directions[(g, p)] for p in PROPERTIES}).items():
                directions[(g, p)] = d
    return [{"space": space, "group": s.group, "property": s.prop, "direction": directions[key],
             "val_accuracy": r.val_accuracy, "group_size": s.group_size, "k": s.k, "ratio": ratio,
             "converged": r.converged, "fit_seconds": r.fit_seconds}
            for key, (s, r) in sorted(results.items())]


def fit_all(latents: np.ndarray, scores: dict, groups: np.ndarray, ratio: float, seed: int,
            cfg: SvmConfig, space: str, orthogonal: bool = False, progress: bool = True) -> list[dict]:
    """The 24 fits (3 if every sample is in the GLOBAL group) as Ray tasks; the latent
    matrix goes into the object store once. Returns one row per direction."""
    import ray

    selections = plan_selections(scores, groups, ratio, seed)
    pending = submit_fits(ray.put(latents), selections, cfg)
    results = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        s = pending.pop(done[0])
        r = ray.get(done[0])
        results[(s.group, s.prop)] = (s, r)
        if progress:
            note = "" if r.converged else "  (did not converge)"
            print(f"  [{len(results):2d}/{len(selections)}] {s.group} {s.prop:5s} k={s.k:<6d} "
                  f"val acc {r.val_accuracy:.3f}  {r.fit_seconds:5.1f}s{note}", flush=True)
    return direction_rows(results, ratio, space, orthogonal)


def export_directions(rows: list[dict], csv_dir: Path | None, boundary_dir: Path | None) -> None:
    for directory, name, write in ((csv_dir, reference_csv_name, write_reference_csv),
                                   (boundary_dir, boundary_name, write_boundary)):
        if directory is None:
            continue
        Path(directory).mkdir(parents=True, exist_ok=True)
        for r in rows:
            write(r["direction"], Path(directory) / name(r["property"], r["space"], r["group"]))


def print_summary(rows: list[dict]) -> None:
    print("mean validation accuracy: " + "  ".join(
        f"{p} {np.mean([r['val_accuracy'] for r in rows if r['property'] == p]):.3f}" for p in PROPERTIES))
    unconverged = [f"{r['group']}/{r['property']}" for r in rows if not r["converged"]]
    if unconverged:
        print(f"{len(unconverged)} of {len(rows)} fits did not converge ({', '.join(unconverged[:6])}"
              f"{', ...' if len(unconverged) > 6 else ''}): consider --scale or a larger --max-iter")


def run_fit(run: Path, space: str = "w", ratio: float = 0.2, medians_source: str = "manifest",
            cfg: SvmConfig = SvmConfig(), seed: int = 0, orthogonal: bool = False, global_fit: bool = False,
            drop_nonfinite: bool = False, out: Path | None = None, progress: bool = True) -> Path:
    """Fit (or reuse, if `out` already holds this exact fit) the directions of RUN; returns `out`."""
    try:
        ratio = check_ratio(ratio)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if seed < 0:
        raise UsageError(f"--seed must be >= 0, got {seed}")
    latents, scores, sampling, dropped = load_samples(run, space, drop_nonfinite)
    if medians_source == "manifest":
        if "group_medians" not in sampling:
            raise UsageError("samples.parquet records no bundle group medians; use --medians samples")
        medians = sampling["group_medians"]
    else:
        medians = measured_medians(scores)
    groups = np.full(len(latents), GLOBAL) if global_fit else assign_groups(scores, medians)
    sizes = {GLOBAL: len(latents)} if global_fit else group_sizes(groups)
    config = {"space": space, "ratio": ratio, "medians_source": medians_source, "medians": medians,
              "svm": cfg.as_dict(), "seed": seed, "orthogonalize": orthogonal, "global": global_fit,
              "n": len(latents), "dropped_nonfinite": dropped, "group_sizes": sizes, "sampling": sampling,
              "bundle_manifest_sha256": sampling.get("bundle_manifest_sha256")}
    out = Path(out or Path(run) / VECTORS_FILE)
    if out.is_file() and read_metadata(out).get("fit") == config:
        if progress:
            print(f"reusing {out} (same samples and fit settings)")
        return out
    if progress:
        print(f"{len(latents):,} samples in {space} ({latents.shape[1]} dims), medians from {medians_source}"
              + (f", {dropped} non-finite rows dropped" if dropped else ""))
        print("group sizes: " + "  ".join(f"{g} {n}" for g, n in sizes.items()))
    started = time.perf_counter()
    try:
        rows = fit_all(latents, scores, groups, ratio, seed, cfg, space, orthogonal, progress)
    except ValueError as exc:  # a group too small for its fit
        raise UsageError(str(exc)) from exc
    elapsed = time.perf_counter() - started
    write_parquet_atomic(with_metadata(vectors_to_table(rows), {"fit": config}), out)
    if progress:
        print_summary(rows)
        print(f"{len(rows)} fits in {elapsed:.1f}s; wrote {out}")
    return out


def add_fit_arguments(p) -> None:
    p.add_argument("--space", default="w", help="latent space: w (v7) or z (v6, 512 + 3 label dims)")
    p.add_argument("--ratio", type=float, default=0.2, help="k = max(int(ratio * group size), 1), in (0, 0.5]")
    p.add_argument("--medians", default="manifest", choices=("manifest", "samples"),
                   help="group medians: the bundle manifest's fixed ones, or measured on these samples")
    p.add_argument("--svm", default="linearsvc", choices=SOLVERS,
                   help="linearsvc (the reference) or svc (kernel='linear', scikit-learn-intelex if installed)")
    p.add_argument("--C", type=float, default=1.0, help="SVM regularisation")
    p.add_argument("--scale", action="store_true", help="standardise latent dims before fitting")
    p.add_argument("--dual", default="auto", choices=("auto", "true", "false"), help="LinearSVC dual/primal")
    p.add_argument("--max-iter", type=int, default=1000, help="solver iteration limit")


def svm_config_from(args) -> SvmConfig:
    try:
        return SvmConfig(args.svm, args.C, args.scale, args.dual, args.max_iter)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def main(argv=None) -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, required=True, help="run directory with samples.parquet")
    add_fit_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the 80/20 train/validation split")
    p.add_argument("--orthogonalize", action="store_true",
                   help="make each property's direction orthogonal to the other two in its group")
    p.add_argument("--global", dest="global_fit", action="store_true",
                   help="one direction per property from all samples (group 'all'): what grouping buys")
    p.add_argument("--drop-nonfinite", action="store_true", help="drop samples with NaN or inf values")
    p.add_argument("--out", type=Path, default=None, help=f"vectors file (default: RUN/{VECTORS_FILE})")
    p.add_argument("--export-csv", type=Path, default=None, help="also write the reference's CSV layout here")
    p.add_argument("--export-boundaries", type=Path, default=None, help="also write InterFaceGAN .npy boundaries here")
    add_ray_arguments(p)
    args = p.parse_args(argv)
    cfg = svm_config_from(args)
    try:
        check_ratio(args.ratio)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if args.space not in SPACES:
        raise UsageError(f"unknown --space {args.space!r}; choose w (v7) or z (v6)")
    init_ray(args.address, args.num_cpus)
    out = run_fit(args.run, args.space, args.ratio, args.medians, cfg, args.seed, args.orthogonalize,
                  args.global_fit, args.drop_nonfinite, args.out)
    if args.export_csv or args.export_boundaries:
        table, directions, _ = read_vectors(out)
        rows = [{"space": args.space, "group": g, "property": p, "direction": d} for (g, p), d in directions.items()]
        export_directions(rows, args.export_csv, args.export_boundaries)


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
