"""Arrow tables with fixed-size-list vector columns, and atomic Parquet writes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from compute.files import atomic_path, write_text_atomic

METADATA_KEY = b"vectorfind"
# DICTIONARY_NOTE: Parquet's default dictionary encoding tries, for every column, to build a
# dictionary of distinct values; random float codes have none, so it is pure cost: writing
# and reading 200,000 samples took 3.7 s each with it and 1.9 s / 1.8 s without (same size).


def vector_column(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """A (rows, dim) float32 matrix as a fixed_size_list<float32>[dim] column (no copy)."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def vector_matrix(column: pa.ChunkedArray | pa.FixedSizeListArray) -> np.ndarray:
    """The inverse of vector_column: a fixed-size-list column as a (rows, dim) float32 matrix."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    dim = column.type.list_size
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(-1, dim).astype(np.float32, copy=False)


def with_metadata(table: pa.Table, info: dict) -> pa.Table:
    """Attach `info` (JSON-serialisable) under the project's schema metadata key."""
    metadata = dict(table.schema.metadata or {})
    metadata[METADATA_KEY] = json.dumps(info, sort_keys=True).encode()
    return table.replace_schema_metadata(metadata)


def read_metadata(path: Path | str, filesystem=None) -> dict:
    """The project's metadata of a Parquet file (`filesystem`: a pyarrow filesystem for a path
    on it, e.g. an object store's; None for a local path)."""
    metadata = pq.read_schema(path, filesystem=filesystem).metadata or {}
    return json.loads(metadata[METADATA_KEY]) if METADATA_KEY in metadata else {}


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """Write to a fresh temporary file beside `path`, then rename (compute.files): never a
    half-written result, never written through a symlink or file planted at `path`."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, use_dictionary=False)  # see DICTIONARY_NOTE


def write_json_atomic(data: dict, path: Path) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
