"""RUN/samples.parquet: a Parquet dataset directory of the sampling chunks (or, in runs made
before it was one, a single Parquet file). Every reader goes through here.

Sampling writes each chunk of ids as `sample_chunks/NNNNNN.parquet` as it completes; when
every chunk is there and valid, the chunk directory is renamed to `samples.parquet` in one
step, so the table is visible whole or not at all. Nothing is encoded twice: rewriting the
chunks into one file read back and re-encoded every sample, which alone held the pipeline
under 20,000 images/s on two cores (`jobs.benchmark ceiling`). `pq.read_table` reads the
directory as one table in file-name order, which is id order.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from compute.tables import read_metadata


def parts(path: Path) -> list[Path]:
    """The Parquet files of a samples table, in id order (hidden temp files are not parts)."""
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.glob("*.parquet") if p.is_file() and not p.name.startswith((".", "_")))
    return [path]


def exists(path: Path) -> bool:
    return Path(path).is_file() or Path(path).is_dir()


def read_samples(path: Path, columns: list[str] | None = None) -> pa.Table:
    """The whole table (or these columns), in id order, with the first part's metadata."""
    files = parts(path)
    if not files:
        raise ValueError(f"{path} holds no Parquet parts")
    tables = [pq.read_table(f, columns=columns) for f in files]
    metadata = tables[0].schema.metadata
    return pa.concat_tables([t.replace_schema_metadata(None) for t in tables]).replace_schema_metadata(metadata)


def schema(path: Path) -> pa.Schema:
    files = parts(path)
    if not files:
        raise ValueError(f"{path} holds no Parquet parts")
    return pq.read_schema(files[0])


def metadata(path: Path) -> dict:
    """The project's metadata of the table (every part carries the same)."""
    files = parts(path)
    if not files:
        raise ValueError(f"{path} holds no Parquet parts")
    return read_metadata(files[0])


def num_rows(path: Path) -> int:
    """Rows of all parts, from their footers (no data read)."""
    return sum(pq.read_metadata(f).num_rows for f in parts(path))
