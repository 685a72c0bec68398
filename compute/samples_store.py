"""RUN/samples.parquet: a Parquet dataset directory of the sampling chunks (or, in runs made
before it was one, a single Parquet file), on disk or in an object store. Every reader goes
through here.

Sampling writes each chunk of ids as `sample_chunks/NNNNNN.parquet` as it completes; when
every chunk is there and valid, the chunk directory is renamed to `samples.parquet` in one
step, so the table is visible whole or not at all. Nothing is encoded twice: rewriting the
chunks into one file read back and re-encoded every sample, which alone held the pipeline
under 20,000 images/s on two cores (`jobs.benchmark ceiling`). Parts are read in file-name
order, which is id order. In an object store the actors write the chunks straight into
RUN/samples.parquet/ and a commit object written last lists them (COMMIT): until it is
there the table does not exist, whatever chunks are.

A stage that needs one latent column of many rows never reads the table whole: it streams
the column a batch at a time (`iter_batches`, `finite_rows`) or reads just the rows it
selected (`read_rows`), so the driver holds one batch and what it asked for, at any n.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from compute.storage import Place, as_place
from compute.tables import read_metadata, read_table, vector_matrix

# Rows per streamed batch. Decoding a batch of a list column holds about six times its codes
# (levels, offsets, values): 12 MB for 1,024 rows of 512-dim float32 codes, measured with a
# proxy memory pool; the reader does not hold the whole row group, and larger batches raised
# that peak in proportion without reading faster.
BATCH_ROWS = 1024
# On an object store the table is complete once this object, listing its parts, is written
# (there is no rename to make a directory appear whole; compute.storage).
COMMIT = "_commit.json"


def parts(path: Path | Place) -> list[Place]:
    """The Parquet files of a samples table, in id order (hidden temp files are not parts; in
    an object store, the parts its commit object lists)."""
    table = as_place(path)
    if table.remote:
        record = _commit(table)
        return [table / name for name in record["parts"]] if record else []
    if table.is_dir():
        return [table / name for name in table.files(".parquet")]
    return [table]


def _commit(table: Place) -> dict | None:
    try:
        record = json.loads((table / COMMIT).read_bytes(limit=1 << 24))
    except (OSError, ValueError):
        return None
    names = record.get("parts") if isinstance(record, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) and n.endswith(".parquet") and "/" not in n
                                              and not n.startswith((".", "_")) for n in names):
        return None
    return record


def commit(chunks: Place, table: Place, names: list[str], n: int) -> None:
    """Every chunk is written and valid: make them the samples table, visible whole or not at
    all, nothing encoded twice. On disk the chunk directory is renamed to the table's name; in
    an object store, where the chunks were written under the table's own prefix, the commit
    object listing them is written, last (one object)."""
    if table.remote:
        (table / COMMIT).write_bytes(json.dumps({"parts": sorted(names), "rows": n}).encode())
        return
    chunks.replace_directory(table)


def exists(path: Path | Place) -> bool:
    table = as_place(path)
    return (table / COMMIT).is_file() if table.remote else table.exists()


def open_part(part: Place) -> pq.ParquetFile:
    return pq.ParquetFile(part.path, filesystem=part.fs)


def _existing_parts(path: Path | Place) -> list[Place]:
    files = parts(path)
    if not files:
        raise ValueError(f"{as_place(path)} holds no Parquet parts")
    return files


def _first(path: Path | Place) -> Place:
    return _existing_parts(path)[0]


def read_samples(path: Path | Place, columns: list[str] | None = None) -> pa.Table:
    """The whole table (or these columns), in id order, with the first part's metadata."""
    tables = [read_table(f, columns=columns) for f in _existing_parts(path)]
    metadata = tables[0].schema.metadata
    return pa.concat_tables([t.replace_schema_metadata(None) for t in tables]).replace_schema_metadata(metadata)


def schema(path: Path | Place) -> pa.Schema:
    first = _first(path)
    return pq.read_schema(first.path, filesystem=first.fs)


def metadata(path: Path | Place) -> dict:
    """The project's metadata of the table (every part carries the same)."""
    first = _first(path)
    return read_metadata(first)


def num_rows(path: Path | Place) -> int:
    """Rows of all parts, from their footers (no data read)."""
    return sum(pq.read_metadata(f.path, filesystem=f.fs).num_rows for f in parts(path))


def iter_batches(path: Path | Place, columns: list[str], batch_size: int | None = None) -> Iterator[pa.RecordBatch]:
    """These columns of every row, in id order, one record batch at a time. A batch never
    spans row groups: one that did held both groups' decoded pages at once."""
    for part in _existing_parts(path):
        with open_part(part) as file:
            yield from _batches(file, columns, range(file.num_row_groups), batch_size)


def _batches(file: pq.ParquetFile, columns: list[str], groups, batch_size: int | None = None):
    for group in groups:
        yield from file.iter_batches(batch_size=batch_size or BATCH_ROWS, row_groups=[group], columns=columns)


def finite_rows(path: Path | Place, column: str) -> np.ndarray:
    """(num_rows,) bool: whether each row's code in the fixed-size-list `column` is all
    finite. Streamed: one byte a row is kept, the codes are not."""
    masks = [_finite(batch.column(0)) for batch in iter_batches(path, [column])]
    return np.concatenate(masks) if masks else np.zeros(0, dtype=bool)


def _finite(codes: pa.FixedSizeListArray) -> np.ndarray:
    """Per row: a code that is there (not null) and all finite."""
    if not codes.null_count:
        return np.isfinite(vector_matrix(codes)).all(axis=1)
    valid = codes.is_valid().to_numpy(zero_copy_only=False)
    mask = np.zeros(len(codes), dtype=bool)
    mask[valid] = np.isfinite(vector_matrix(codes.drop_null())).all(axis=1)
    return mask


def _code_width(file: pq.ParquetFile, column: str, part: Place) -> int:
    field = file.schema_arrow.field(column) if column in file.schema_arrow.names else None
    if field is None or not pa.types.is_fixed_size_list(field.type):
        raise ValueError(f"{part.name} has no fixed-size-list column {column}")
    return field.type.list_size


def read_rows(path: Path | Place, column: str, rows: np.ndarray) -> np.ndarray:
    """The codes of these rows (global row indices, sorted, unique) of the fixed-size-list
    `column` as a (len(rows), D) float32 matrix. Each part's footer says which of its row
    groups hold wanted rows; only those are read, a batch at a time, and only the wanted
    rows of each batch are kept. Memory: the output and one batch, whatever the table's size."""
    rows = np.asarray(rows)
    if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
        raise ValueError("rows must be a 1-d array of row indices")
    rows = rows.astype(np.int64, copy=False)
    if len(rows) and (rows[0] < 0 or np.any(np.diff(rows) <= 0)):
        raise ValueError("rows must be sorted, unique and non-negative")
    out, start, width = None, 0, None
    for part in parts(path):
        with open_part(part) as file:
            part_width = _code_width(file, column, part)
            if width is None:
                width, out = part_width, np.empty((len(rows), part_width), dtype=np.float32)
            elif part_width != width:
                raise ValueError(f"{part.name} holds {part_width}-dim codes in {column}, the first part {width}-dim")
            groups, offsets = [], []
            for g in range(file.num_row_groups):
                size = file.metadata.row_group(g).num_rows
                lo, hi = np.searchsorted(rows, [start, start + size])
                if hi > lo:
                    groups.append(g)
                    offsets.append(start)
                start += size
            _take_from_groups(file, column, groups, offsets, rows, out)
    if width is None:
        raise ValueError(f"{as_place(path)} holds no Parquet parts")
    if len(rows) and rows[-1] >= start:
        raise ValueError(f"row {rows[-1]} is beyond the {start} rows of {as_place(path)}")
    return out


def _take_from_groups(file: pq.ParquetFile, column: str, groups: list[int], offsets: list[int],
                      rows: np.ndarray, out: np.ndarray) -> None:
    """Fill out[i] with the code of rows[i] for every wanted row in these row groups (each
    starting at its global row offset), batch by batch."""
    for group, offset in zip(groups, offsets):
        for batch in _batches(file, [column], [group]):
            lo, hi = np.searchsorted(rows, [offset, offset + batch.num_rows])
            if hi > lo:
                taken = batch.column(0).take(pa.array(rows[lo:hi] - offset))
                out[lo:hi] = vector_matrix(taken)
            offset += batch.num_rows
