"""Sampling's unit of work: one chunk of sample ids, computed and encoded by an actor.

A chunk holds the ids [c * chunk_size, (c + 1) * chunk_size) (the last one fewer), so its
file is the same whatever the actor count, batch size, arrival order or retries. The actor
that computes a chunk encodes its Parquet file. Into an object store, and on the driver's
node into a local run directory, it writes the file itself (one PUT, or a temp file renamed)
and returns only a record (chunk, rows, sha256); on another node it cannot know whether a
local run directory there is the driver's (a head node's disk is not a worker's), so it
returns the file's bytes with the record and the driver writes them. Either
way the driver holds at most a chunk's bytes at a time: its memory does not grow with n.
"""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from compute.engine import EngineSpec, NullEngine, SampleEngine
from compute.seeding import draw_codes
from compute.sessions import resolve
from compute.storage import Place
from compute.tables import read_metadata, read_table, vector_column, with_metadata

if TYPE_CHECKING:  # not at run time: the actors of this module never load a bundle, nor onnx with it
    from compute.bundle import Bundle

CHUNK_DIR = "sample_chunks"


def chunk_name(chunk: int) -> str:
    return f"{chunk:06d}.parquet"


def chunk_ids(chunk: int, n: int, chunk_size: int) -> np.ndarray:
    return np.arange(chunk * chunk_size, min((chunk + 1) * chunk_size, n), dtype=np.int64)


def samples_schema(bundle: Bundle) -> pa.Schema:
    fields = [pa.field("sample_id", pa.int64()),
              pa.field("z", pa.list_(pa.float32(), bundle.z_dim)),
              pa.field("w", pa.list_(pa.float32(), bundle.w_dim))]
    fields += [pa.field(name, pa.float32()) for name in bundle.score_names]
    return pa.schema(fields)


class SampleActor:
    """{"id": int64[B]} -> sample_id, z, w and one column per score; images never leave it.

    Testable without Ray: `SampleActor(graphs={stem: bytes}, seed=..., spec=engine_spec(...),
    score_names=...)({"id": ids})`. `null=True` replaces inference by zeros (the pipeline's ceiling).
    """

    def __init__(self, graphs: dict, seed: int, spec: EngineSpec, score_names: list[str], null: bool = False):
        graphs = {stem: resolve(graphs[stem]) for stem in graphs}
        self.engine = NullEngine(graphs, spec) if null else SampleEngine(graphs, spec)
        self.seed, self.z_dim, self.score_names = seed, spec.z_dim, list(score_names)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = np.asarray(batch["id"], dtype=np.int64)
        z = draw_codes(self.seed, ids, self.z_dim)
        w, scores = self.engine(z)
        out = {"sample_id": ids, "z": z, "w": w}
        for i, name in enumerate(self.score_names):
            out[name] = np.ascontiguousarray(scores[:, i])
        return out


def _table(parts: list[dict], schema: pa.Schema) -> pa.Table:
    columns = []
    for field in schema:
        values = np.concatenate([p[field.name] for p in parts])
        columns.append(vector_column(values) if pa.types.is_fixed_size_list(field.type) else pa.array(values))
    return pa.Table.from_arrays(columns, schema=schema)


def parquet_bytes(table: pa.Table) -> bytes:
    """The table as a Parquet file's bytes, written as compute.tables writes every table."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, use_dictionary=False)  # as write_parquet_atomic (see its DICTIONARY_NOTE)
    return sink.getvalue().to_pybytes()


def node_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # outside Ray (tests call actors in-process): no node to compare
        return None


class ChunkWriter:
    """Callable class for `map_batches` over {"chunk": int64[B]}: computes each chunk with an
    `actor_class` (SampleActor or a subclass) in calls of `batch_size` ids and returns
    {"chunk", "rows", "sha256", "size", "data"}: where it can reach `chunk_dir` (an object store, or
    a local directory on `driver_node`) it writes the file there itself and `data` is empty;
    elsewhere `data` holds the file's bytes for the driver."""

    def __init__(self, actor_class: type, actor_kwargs: dict, n: int, chunk_size: int, batch_size: int,
                 chunk_dir: Place, schema: pa.Schema, config: dict, driver_node: str | None = None):
        self.actor = actor_class(**actor_kwargs)
        self.n, self.chunk_size, self.batch_size = n, chunk_size, batch_size
        self.chunk_dir, self.schema, self.config = chunk_dir, schema, config
        self.writes_here = chunk_dir.remote or (driver_node is not None and node_id() == driver_node)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        chunks, rows, hashes, sizes, data = [], [], [], [], []
        for chunk in np.asarray(batch["chunk"], dtype=np.int64):
            ids = chunk_ids(int(chunk), self.n, self.chunk_size)
            parts = [self.actor({"id": ids[lo:lo + self.batch_size]}) for lo in range(0, len(ids), self.batch_size)]
            encoded = parquet_bytes(with_metadata(_table(parts, self.schema), {"sampling": self.config}))
            if self.writes_here:
                (self.chunk_dir / chunk_name(int(chunk))).write_bytes(encoded)
            chunks.append(int(chunk))
            rows.append(len(ids))
            hashes.append(hashlib.sha256(encoded).hexdigest())
            sizes.append(len(encoded))
            data.append(b"" if self.writes_here else encoded)
        return {"chunk": np.array(chunks, np.int64), "rows": np.array(rows, np.int64), "sha256": np.array(hashes),
                "size": np.array(sizes, np.int64), "data": np.array(data, dtype=object)}


def chunk_config(path: Place) -> dict | None:
    try:
        return read_metadata(path).get("sampling")
    except Exception:  # a damaged chunk is recomputed, not trusted
        return None


def valid_chunk(path: Place, config: dict, first_id: int, rows: int) -> bool:
    """A finished chunk is reused only if readable, of this run, and holding exactly its ids."""
    if chunk_config(path) != config:
        return False
    try:
        ids = read_table(path, columns=["sample_id"])["sample_id"].to_numpy()
    except Exception:
        return False
    return len(ids) == rows and np.array_equal(ids, np.arange(first_id, first_id + rows))
