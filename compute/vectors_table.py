"""RUN/vectors.parquet: one row per (space, group, property) direction.

`stability` (mean pairwise cosine between resampled fits; NaN when not measured),
`estimator` and `svm_c` (the SVM's C, which svm_cv chooses per direction; NaN for
mean_diff and ridge) came later: files written before them read back with NaN and null."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from compute.storage import Place, as_place
from compute.tables import read_metadata, read_table, vector_column, vector_matrix, with_metadata, write_parquet_atomic
from vectors.errors import InputError

COLUMNS = ("space", "group", "property", "direction", "val_accuracy", "group_size", "k", "ratio",
           "converged", "fit_seconds")
LATER_COLUMNS = {"stability": pa.float64(), "estimator": pa.string(), "svm_c": pa.float64()}  # absent from older files


class VectorsError(InputError):
    """A vectors file that is missing, damaged or does not fit the bundle or method."""


def vectors_to_table(rows: list[dict]) -> pa.Table:
    """rows: dicts with the COLUMNS keys; `direction` a (D,) array. Sorted by space, group, property."""
    rows = sorted(rows, key=lambda r: (r["space"], r["group"], r["property"]))
    return pa.table({
        "space": pa.array([r["space"] for r in rows], pa.string()),
        "group": pa.array([r["group"] for r in rows], pa.string()),
        "property": pa.array([r["property"] for r in rows], pa.string()),
        "direction": vector_column(np.stack([r["direction"] for r in rows])),
        "val_accuracy": pa.array([r["val_accuracy"] for r in rows], pa.float64()),
        "group_size": pa.array([r["group_size"] for r in rows], pa.int64()),
        "k": pa.array([r["k"] for r in rows], pa.int64()),
        "ratio": pa.array([r["ratio"] for r in rows], pa.float64()),
        "converged": pa.array([r["converged"] for r in rows], pa.bool_()),
        "fit_seconds": pa.array([r["fit_seconds"] for r in rows], pa.float64()),
        "stability": pa.array([r.get("stability", float("nan")) for r in rows], pa.float64()),
        "estimator": pa.array([r.get("estimator") for r in rows], pa.string()),
        "svm_c": pa.array([r.get("svm_c", float("nan")) for r in rows], pa.float64()),
    })


def write_vectors(rows: list[dict], metadata: dict, path: Place | Path) -> Place:
    write_parquet_atomic(with_metadata(vectors_to_table(rows), metadata), path)
    return as_place(path)


def read_vectors(path: Place | Path) -> tuple[pa.Table, dict[tuple[str, str], np.ndarray], dict]:
    """(table, {(group, property): unit direction}, metadata) of a vectors file."""
    path = as_place(path)
    if not path.is_file():
        raise VectorsError(f"no vectors at {path}: fit them first (python -m jobs.fit)")
    try:
        table = read_table(path)
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise VectorsError(f"{path} is not a readable Parquet file ({str(exc).splitlines()[0]}); "
                           f"fit the vectors again") from exc
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise VectorsError(f"{path} lacks columns {', '.join(missing)}")
    for name, kind in LATER_COLUMNS.items():
        if name not in table.column_names:
            fill = [float("nan") if kind == pa.float64() else None] * table.num_rows
            table = table.append_column(name, pa.array(fill, kind))
    spaces = set(table["space"].to_pylist())
    if len(spaces) != 1:
        raise VectorsError(f"{path} mixes latent spaces {sorted(spaces)}; one file holds one space")
    matrix = vector_matrix(table["direction"])
    directions = {(g, p): matrix[i] for i, (g, p) in
                  enumerate(zip(table["group"].to_pylist(), table["property"].to_pylist()))}
    return table, directions, read_metadata(path)
