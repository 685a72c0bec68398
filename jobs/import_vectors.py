"""Import directions saved in the reference implementation's CSV layout.

    python -m jobs.import_vectors --csv-dir DIR --out RUN/vectors.parquet [--space w]

Reads one file {property}_change_{space}_vector_{group}.csv per group and property of the
method (the seeds': 8 groups x eyes, mouth, pose = 24 files), flips their sign to this
project's convention (toward larger scores) and writes a vectors file that `jobs.test`
can use; the method is recorded in it. Fit statistics the CSVs do not carry are null.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from compute.staleness import is_run, watching_results
from compute.storage import as_place, check_reachable
from compute.vectors_table import write_vectors
from jobs.cli import UsageError, location_arg, parser, run_main
from jobs.cli.bundles import resolve_bundle
from jobs.cli.method_args import add_method_arguments, method_from
from vectors.interop import read_reference_csv, reference_csv_name


def import_reference_csvs(csv_dir: Path, method, dim: int) -> list[dict]:
    csv_dir = Path(csv_dir)
    expected = {(g, p): csv_dir / reference_csv_name(p, method.latent, g)
                for g in method.group_names for p in method.property_names}
    missing = [path.name for path in expected.values() if not path.is_file()]
    if missing:
        raise UsageError(f"{csv_dir} lacks {len(missing)} of the {len(expected)} vector files, "
                         f"e.g. {', '.join(missing[:3])}")
    rows = []
    for (group, prop), path in expected.items():
        try:
            direction = read_reference_csv(path)
        except (ValueError, OSError) as exc:
            raise UsageError(str(exc)) from exc
        if len(direction) != dim:
            raise UsageError(f"{path} has {len(direction)} dims, but this bundle's {method.latent} has {dim}; "
                             f"these vectors belong to another model (pass its --bundle)")
        norm = float(np.linalg.norm(direction))
        if not norm > 0:
            raise UsageError(f"{path} is an all-zero vector: it has no direction")
        rows.append({"space": method.latent, "group": group, "property": prop, "direction": direction / norm,
                     "val_accuracy": None, "group_size": None, "k": None, "ratio": None,
                     "converged": None, "fit_seconds": None})
    return rows


def main(argv=None) -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--csv-dir", type=Path, required=True, help="directory with the reference's CSV files")
    p.add_argument("--out", type=location_arg, required=True,
                   help="vectors file to write (e.g. RUN/vectors.parquet, or in s3://...)")
    p.add_argument("--bundle", type=location_arg, default=None,
                   help="the model the vectors are for; their dims are checked against it (default: built-in model)")
    add_method_arguments(p, fit=False)
    args = p.parse_args(argv)
    method = method_from(args)
    out = as_place(args.out)
    check_reachable(out.parent)
    bundle = resolve_bundle(args.bundle)
    rows = import_reference_csvs(args.csv_dir, method, bundle.z_dim if method.latent == "z" else bundle.w_dim)
    run = out.parent if is_run(out.parent) else None  # vectors written into a run: its results change
    with watching_results(run, "jobs.import_vectors"):
        write_vectors(rows, {"fit": {"space": method.latent, "imported_from": str(args.csv_dir.resolve()),
                                     "bundle_manifest_sha256": bundle.manifest_sha256},
                             "method": method.to_dict()}, out)
        print(f"imported {len(rows)} {method.latent} directions ({len(rows[0]['direction'])} dims) into {args.out}")


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
