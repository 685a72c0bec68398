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
from compute.vectors_table import VECTORS_FILE, vectors_to_table
from jobs.cli import UsageError, parser, run_main
from jobs.raycluster import add_ray_arguments, init_ray
from vectors.groups import (GROUP_NAMES, GROUPING_SCORES, PROPERTIES, assign_groups, check_ratio,
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


def fit_all(latents: np.ndarray, scores: dict, groups: np.ndarray, ratio: float, seed: int,
            cfg: SvmConfig, space: str, orthogonal: bool = False, progress: bool = True) -> list[dict]:
    """The 24 fits as Ray tasks; returns one row per direction (see compute.vectors_table)."""
    import ray

    # Every selection is made (and every too-small group reported) before any work starts.
    selections = [select(scores, groups, g, p, ratio, seed) for g in GROUP_NAMES for p in PROPERTIES]
    latents_ref = ray.put(latents)
    fit_task = ray.remote(num_cpus=1)(fit_selection)
    pending = {fit_task.remote(latents_ref, s, cfg): s for s in selections}
    results = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        s = pending.pop(done[0])
        results[(s.group, s.prop)] = (s, ray.get(done[0]))
        if progress:
            r = results[(s.group, s.prop)][1]
            note = "" if r.converged else "  (did not converge)"
            print(f"  [{len(results):2d}/{len(selections)}] {s.group} {s.prop:5s} k={s.k:<6d} "
                  f"val acc {r.val_accuracy:.3f}  {r.fit_seconds:5.1f}s{note}", flush=True)
    directions = {key: r.direction for key, (_, r) in results.items()}
    if orthogonal:
        for g in GROUP_NAMES:
            for p, d in orthogonalize({p: directions[(g, p)] for p in PROPERTIES}).items():
                directions[(g, p)] = d
    return [{"space": space, "group": s.group, "property": s.prop, "direction": directions[key],
             "val_accuracy": r.val_accuracy, "group_size": s.group_size, "k": s.k, "ratio": ratio,
             "converged": r.converged, "fit_seconds": r.fit_seconds}
            for key, (s, r) in sorted(results.items())]


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


def main(argv=None) -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, required=True, help="run directory with samples.parquet")
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
    p.add_argument("--seed", type=int, default=0, help="seed of the 80/20 train/validation split")
    p.add_argument("--orthogonalize", action="store_true",
                   help="make each property's direction orthogonal to the other two in its group")
    p.add_argument("--drop-nonfinite", action="store_true", help="drop samples with NaN or inf values")
    p.add_argument("--out", type=Path, default=None, help=f"vectors file (default: RUN/{VECTORS_FILE})")
    p.add_argument("--export-csv", type=Path, default=None, help="also write the reference's CSV layout here")
    p.add_argument("--export-boundaries", type=Path, default=None, help="also write InterFaceGAN .npy boundaries here")
    add_ray_arguments(p)
    args = p.parse_args(argv)
    try:
        ratio = check_ratio(args.ratio)
        cfg = SvmConfig(args.svm, args.C, args.scale, args.dual, args.max_iter)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")

    latents, scores, sampling, dropped = load_samples(args.run, args.space, args.drop_nonfinite)
    if args.medians == "manifest":
        if "group_medians" not in sampling:
            raise UsageError("samples.parquet records no bundle group medians; use --medians samples")
        medians = sampling["group_medians"]
    else:
        medians = measured_medians(scores)
    groups = assign_groups(scores, medians)
    sizes = group_sizes(groups)
    print(f"{len(latents):,} samples in {args.space} ({latents.shape[1]} dims), medians from {args.medians}"
          + (f", {dropped} non-finite rows dropped" if dropped else ""))
    print("group sizes: " + "  ".join(f"{g} {n}" for g, n in sizes.items()))

    init_ray(args.address, args.num_cpus)
    started = time.perf_counter()
    try:
        rows = fit_all(latents, scores, groups, ratio, args.seed, cfg, args.space, args.orthogonalize)
    except ValueError as exc:  # a group too small for its fit
        raise UsageError(str(exc)) from exc
    elapsed = time.perf_counter() - started
    config = {"space": args.space, "ratio": ratio, "medians_source": args.medians, "medians": medians,
              "svm": cfg.as_dict(), "seed": args.seed, "orthogonalize": args.orthogonalize,
              "n": len(latents), "dropped_nonfinite": dropped, "group_sizes": sizes, "sampling": sampling,
              "bundle_manifest_sha256": sampling.get("bundle_manifest_sha256")}
    out = args.out or args.run / VECTORS_FILE
    write_parquet_atomic(with_metadata(vectors_to_table(rows), {"fit": config}), out)
    export_directions(rows, args.export_csv, args.export_boundaries)
    print_summary(rows)
    print(f"24 fits in {elapsed:.1f}s; wrote {out}")


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
