"""Import directions saved in the reference implementation's CSV layout.

    python -m jobs.import_vectors --csv-dir DIR --out RUN/vectors.parquet [--space w]

Reads the 24 files {property}_change_{space}_vector_{group}.csv (8 groups x eyes, mouth,
pose), flips their sign to this project's convention (toward larger scores) and writes a
vectors file that `jobs.test` can use. Fit statistics the CSVs do not carry are null.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from compute.tables import with_metadata, write_parquet_atomic
from compute.vectors_table import vectors_to_table
from jobs.cli import UsageError, parser, run_main
from vectors.groups import GROUP_NAMES, PROPERTIES
from vectors.interop import read_reference_csv, reference_csv_name


def import_reference_csvs(csv_dir: Path, space: str) -> list[dict]:
    if space not in ("w", "z"):
        raise UsageError(f"unknown --space {space!r}; choose w or z")
    csv_dir = Path(csv_dir)
    expected = {(g, p): csv_dir / reference_csv_name(p, space, g) for g in GROUP_NAMES for p in PROPERTIES}
    missing = [path.name for path in expected.values() if not path.is_file()]
    if missing:
        raise UsageError(f"{csv_dir} lacks {len(missing)} of the 24 vector files, e.g. {', '.join(missing[:3])}")
    rows = []
    for (group, prop), path in expected.items():
        try:
            direction = read_reference_csv(path)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        norm = float(np.linalg.norm(direction))
        rows.append({"space": space, "group": group, "property": prop, "direction": direction / norm,
                     "val_accuracy": None, "group_size": None, "k": None, "ratio": None,
                     "converged": None, "fit_seconds": None})
    dims = {len(r["direction"]) for r in rows}
    if len(dims) != 1:
        raise UsageError(f"vectors in {csv_dir} have different lengths: {sorted(dims)}")
    return rows


def main(argv=None) -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--csv-dir", type=Path, required=True, help="directory with the reference's CSV files")
    p.add_argument("--out", type=Path, required=True, help="vectors file to write (e.g. RUN/vectors.parquet)")
    p.add_argument("--space", default="w", help="w (v7) or z (v6)")
    args = p.parse_args(argv)
    rows = import_reference_csvs(args.csv_dir, args.space)
    table = with_metadata(vectors_to_table(rows), {"fit": {"space": args.space, "imported_from": str(args.csv_dir)}})
    write_parquet_atomic(table, args.out)
    print(f"imported {len(rows)} {args.space} directions ({len(rows[0]['direction'])} dims) into {args.out}")


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
