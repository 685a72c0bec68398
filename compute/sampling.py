"""The training phase's sampling stage on Ray Data (SPEC.md "Sample").

    ray.data.range(n) -> drop ids of finished chunks -> map_batches(SampleActor) -> driver

Each actor draws z for its sample ids (a pure function of the run seed and the id), runs
mapping -> synthesis -> scorer in ONNX Runtime and returns sample_id, z, w and one column
per score; images never leave the actor. The driver files rows into fixed chunks of ids
and writes each chunk atomically as soon as it is complete, so a killed run resumes with
only the missing chunks, and the final table is assembled from the chunks in id order:
identical whatever the actor count, batch size, arrival order or retries.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from compute import samples_store
from compute.bundle import Bundle
from compute.files import remove_leftovers
from compute.runlock import check_unlocked, holding_run_lock
from compute.runs import SAMPLES_FILE, check_writable, normalized
from compute.seeding import check_seed, draw_codes
from compute.engine import EngineSpec, NullEngine, SampleEngine, prepare_graphs
from compute.sessions import resolve
from compute.tables import read_metadata, vector_column, with_metadata, write_parquet_atomic
from vectors.errors import InputError

log = logging.getLogger(__name__)

CHUNK_DIR = "sample_chunks"


# Sample ids per actor call (a Ray Data block), whatever the resolution: the engine splits
# a call into inference calls of its own size, so block size only sets Ray Data's per-block
# overhead. The pipeline with no inference (`jobs.benchmark ceiling`) ran 6,197 images/s with
# 128-id blocks on 2 cores and 32,579 with these (and samples no longer rewritten).
BATCH_IDS = 4096
# Driver peak memory / raw table size, measured at n = 300,000 (2.1 GB peak for 1.25 GB of Parquet).
BYTES_PER_SAMPLE_FACTOR = 2.0


class SamplingError(InputError):
    """Bad sampling input, or a run directory that belongs to another run."""


class SampleActor:
    """Callable class for `map_batches`: {"id": int64[B]} -> sample_id, z, w and scores.

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


def engine_spec(bundle: Bundle, resources: Resources) -> EngineSpec:
    """The engine an actor of these resources builds for this bundle."""
    return EngineSpec(z_dim=bundle.z_dim, w_dim=bundle.w_dim, num_ws=bundle.num_ws, resolution=bundle.resolution,
                      scores=len(bundle.score_names), use_gpu=resources.gpus_per_actor > 0,
                      threads=resources.threads, fp16=resources.fp16, gpu_share=min(1.0, resources.gpus_per_actor),
                      call_images=resources.call_images, cuda_graph=resources.cuda_graph)


@dataclass(frozen=True)
class Resources:
    actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    threads: int
    fp16: bool = True                # GPU actors only: fp16 graphs with fp32 islands
    call_images: int | None = None   # images per inference call; None: the device's measured default
    cuda_graph: bool = False


def plan_resources(actors: int | None = None, cpus_per_actor: float | None = None,
                   gpus_per_actor: float | None = None, totals: dict | None = None, *, fp16: bool = True,
                   call_images: int | None = None, cuda_graph: bool = False) -> Resources:
    """Defaults that use the cluster without starving Ray Data's own tasks.

    Actors that take every CPU deadlock the pipeline (its read tasks never get one), so the
    actors together must leave one CPU free (half of a one-CPU cluster); a plan that does
    not is refused rather than left to wait forever. ONNX Runtime gets one intra-op thread
    per whole CPU of the actor, at least one. `gpus_per_actor` None means: the measured
    share (compute.gpus.DEFAULT_GPU_SHARE) where the cluster has GPUs, else CPU actors; GPU
    actors number GPUs / share. `totals` ({"CPU": n, "GPU": m}) defaults to the connected
    cluster's resources; jobs pass a local instance's before starting it.
    """
    from compute.gpus import DEFAULT_GPU_SHARE

    if totals is None:
        import ray

        totals = ray.cluster_resources()
    cpus, gpus = float(totals.get("CPU", 1)), float(totals.get("GPU", 0))
    if gpus_per_actor is None:
        gpus_per_actor = DEFAULT_GPU_SHARE if gpus > 0 else 0.0
    if gpus_per_actor < 0 or (cpus_per_actor is not None and cpus_per_actor <= 0):
        raise SamplingError("CPUs per actor must be > 0 and GPUs per actor >= 0")
    if gpus_per_actor > 0 and gpus < gpus_per_actor:
        log.warning("asked for %s GPU per actor but the cluster has %s GPUs: actors wait until "
                    "GPU nodes join (the cluster autoscaler may add them)", gpus_per_actor, gpus)
    if actors is None:
        actors = max(1, int(gpus // gpus_per_actor + 1e-9)) if gpus_per_actor > 0 and gpus else max(1, int(cpus))
    if actors < 1:
        raise SamplingError(f"the actor count must be >= 1, got {actors}")
    if cpus_per_actor is None:
        cpus_per_actor = max(0.25, min(1.0, (cpus - 1) / actors)) if cpus > 1 else 0.5
    reserve = min(1.0, cpus / 2)
    if cpus - actors * cpus_per_actor < reserve - 1e-9:
        most = max(0.0, (cpus - reserve) / actors)
        raise SamplingError(f"{actors} actors x {cpus_per_actor:g} CPUs leave Ray Data less than {reserve:g} of the "
                            f"cluster's {cpus:g} CPUs for its own tasks, and the pipeline would wait forever; "
                            f"use fewer actors or at most {most:g} CPUs per actor")
    if call_images is not None and call_images < 1:
        raise SamplingError(f"images per call must be >= 1, got {call_images}")
    threads = max(1, int(cpus_per_actor))
    return Resources(actors, float(cpus_per_actor), float(gpus_per_actor), threads, fp16, call_images, cuda_graph)


def samples_schema(bundle: Bundle) -> pa.Schema:
    fields = [pa.field("sample_id", pa.int64()),
              pa.field("z", pa.list_(pa.float32(), bundle.z_dim)),
              pa.field("w", pa.list_(pa.float32(), bundle.w_dim))]
    fields += [pa.field(name, pa.float32()) for name in bundle.score_names]
    return pa.schema(fields)


def _chunk_table(parts: list[dict], schema: pa.Schema) -> pa.Table:
    """One chunk's rows in id order. Each part is a run of consecutive ids (a slice of one
    block of ray.data.range), so ordering the parts orders the rows."""
    parts = sorted(parts, key=lambda p: int(p["sample_id"][0]))
    ids = np.concatenate([p["sample_id"] for p in parts])
    # Should Ray Data ever bundle non-adjacent ranges into one batch, sort the rows instead.
    order = None if np.all(np.diff(ids) == 1) else np.argsort(ids, kind="stable")
    columns = []
    for field in schema:
        values = np.concatenate([p[field.name] for p in parts])
        values = values if order is None else values[order]
        columns.append(vector_column(values) if pa.types.is_fixed_size_list(field.type) else pa.array(values))
    return pa.Table.from_arrays(columns, schema=schema)


def sampling_config(bundle: Bundle, n: int, seed: int, chunk_size: int) -> dict:
    """What defines a sample table; recorded in the table's and every chunk's own metadata.
    Actor counts and batch sizes are not in it: they never change the result."""
    return normalized({"n": int(n), "seed": seed, "chunk_size": chunk_size,
                       "bundle_manifest_sha256": bundle.manifest_sha256, "model": bundle.manifest["model"],
                       "z_dim": bundle.z_dim, "w_dim": bundle.w_dim, "score_names": bundle.score_names,
                       "group_medians": bundle.manifest["group_medians"]})


def _differences(stored: dict, config: dict) -> str:
    keys = [k for k in config if stored.get(k) != config[k]]
    return ", ".join(f"{k}: run has {stored.get(k)!r}, asked {config[k]!r}" for k in keys
                     if k not in ("group_medians", "score_names")) or ", ".join(keys)


def check_run_dir(run_dir: Path, config: dict) -> bool:
    """Whether RUN already holds exactly these samples (True), or holds none (False). A run
    directory with another run's samples or chunks, or a damaged table, is refused. The
    files' own metadata is the authority: nothing beside them can vouch for them. Needs no
    cluster, so jobs call it before Ray starts."""
    samples = Path(run_dir) / SAMPLES_FILE
    if samples_store.exists(samples):
        try:
            stored = samples_store.metadata(samples).get("sampling", {})
            rows = samples_store.num_rows(samples)
        except Exception as exc:  # truncated or foreign: pyarrow raises several types
            raise SamplingError(f"{samples} is damaged ({str(exc).splitlines()[0]}); delete it and rerun "
                                f"to sample again") from exc
        # The chunk size only shaped the resumable pieces, never the finished table.
        if _without_chunking(stored) != _without_chunking(config):
            raise SamplingError(f"{run_dir} holds samples of another run ({_differences(stored, config)}); "
                                f"use a new run directory or the original settings")
        if rows != config["n"]:
            raise SamplingError(f"{samples} is damaged ({rows} rows, its metadata says {config['n']}); "
                                f"delete it and rerun to sample again")
        return True
    for chunk in sorted((Path(run_dir) / CHUNK_DIR).glob("*.parquet")):
        stored = _chunk_config(chunk)
        if stored is not None and stored != config:
            raise SamplingError(f"{run_dir} holds sample chunks of another run ({_differences(stored, config)}); "
                                f"use a new run directory or the original settings")
    return False


def _without_chunking(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "chunk_size"}


def _chunk_config(path: Path) -> dict | None:
    try:
        return read_metadata(path).get("sampling")
    except Exception:  # a damaged chunk is recomputed, not trusted
        return None


def _valid_chunk(path: Path, config: dict, first_id: int, rows: int) -> bool:
    """A finished chunk is reused only if readable, of this run, and holding exactly its ids."""
    if _chunk_config(path) != config:
        return False
    try:
        ids = pq.read_table(path, columns=["sample_id"])["sample_id"].to_numpy()
    except Exception:
        return False
    return len(ids) == rows and np.array_equal(ids, np.arange(first_id, first_id + rows))


def check_memory(n: int, bundle: Bundle) -> None:
    """Refuse an n whose samples would not fit in the driver's memory, before any work."""
    need = n * (bundle.z_dim + bundle.w_dim + len(bundle.score_names)) * 4 * BYTES_PER_SAMPLE_FACTOR
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        available = info["MemAvailable"]
    except (OSError, KeyError, ValueError):
        return  # not Linux: no reliable figure, no check
    if need > 0.8 * available:
        raise SamplingError(f"n = {n:,} samples need about {need / 2**30:.1f} GiB in the driver, more than 80% of "
                            f"the {available / 2**30:.1f} GiB available; use a smaller n or a bigger head node")


def check_sampling_input(bundle: Bundle, n, seed, run_dir: Path | None = None, chunk_size: int = 16384) -> int:
    """Every check that needs no cluster (jobs call it before Ray starts); returns the seed."""
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n <= 0:
        raise SamplingError(f"n must be a positive integer, got {n!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise SamplingError(f"the chunk size must be >= 1, got {chunk_size!r}")
    check_memory(int(n), bundle)
    try:
        seed = check_seed(seed)
    except ValueError as exc:
        raise SamplingError(str(exc)) from exc
    if run_dir is not None:
        check_unlocked(Path(run_dir))  # another job at work there: refused before Ray starts
        check_run_dir(Path(run_dir), sampling_config(bundle, n, seed, chunk_size))
        check_writable(Path(run_dir))
    return seed


class _ChunkProgress:
    """One stdout line when the first chunk is written (the run is resumable from then on),
    then at most one every PERIOD seconds, so a long run shows its rate as it goes."""

    PERIOD = 10.0

    def batch_received(self, rows: int) -> None:
        self.received += rows
        if self.first_batch is None:
            self.first_batch = (time.perf_counter(), rows)

    def steady_rate(self) -> float | None:
        """Images/s from the first batch the driver received to the end: the rate without
        Ray's and the actors' start-up."""
        if self.first_batch is None:
            return None
        seconds = time.perf_counter() - self.first_batch[0]
        return (self.received - self.first_batch[1]) / seconds if seconds > 1.0 else None

    def __init__(self, chunks: int, images: int, enabled: bool):
        self.chunks, self.images, self.enabled = chunks, images, enabled
        self.done_chunks = self.done_images = 0
        self.started = self.last = time.perf_counter()
        self.first = None  # (time, images) when the first chunk was written
        self.first_batch, self.received = None, 0  # (time, rows) of the first batch received

    def chunk_done(self, rows: int) -> None:
        self.done_chunks += 1
        self.done_images += rows
        now = time.perf_counter()
        if self.first is None:
            self.first = (now, self.done_images)
        if not self.enabled or (self.done_chunks > 1 and now - self.last < self.PERIOD):
            return
        self.last = now
        rate = self.done_images / max(now - self.started, 1e-9)
        print(f"chunk {self.done_chunks}/{self.chunks} written: {self.done_images:,} of {self.images:,} images, "
              f"{rate:,.0f} images/s", flush=True)


@holding_run_lock("run_dir")  # one job at a time; clears our stale temp files
def sample_table(bundle: Bundle, n: int, seed: int, run_dir: str | Path | None = None, *,
                 batch_size: int | None = None, resources: Resources | None = None,
                 chunk_size: int = 16384, actor_class: type = SampleActor,
                 progress: bool = True, null: bool = False, read_back: bool = True) -> pa.Table | None:
    """Sample n faces on the Ray cluster; returns the table (id order) and, with run_dir,
    writes RUN/samples.parquet, reusing any chunks a previous attempt completed. With a run
    directory and `read_back=False` it returns None instead of reading the table back.
    `actor_class` may be a subclass of SampleActor (tests use one that crashes once);
    `null` replaces inference by zeros, to measure the pipeline's own ceiling."""
    import ray

    seed = check_sampling_input(bundle, n, seed)
    resources = resources or plan_resources()
    if batch_size is None:
        # BATCH_IDS, but at least 4 calls per actor so work spreads evenly.
        batch_size = max(1, min(BATCH_IDS, math.ceil(n / (4 * resources.actors))))
    if batch_size < 1 or chunk_size < 1:
        raise SamplingError("the batch size and the chunk size must be >= 1")
    schema = samples_schema(bundle)
    config = sampling_config(bundle, n, seed, chunk_size)

    n_chunks = math.ceil(n / chunk_size)
    chunk_len = [min(chunk_size, n - c * chunk_size) for c in range(n_chunks)]
    chunks: dict[int, pa.Table] = {}
    chunk_dir = None
    if run_dir is not None:
        run_dir = Path(run_dir)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SamplingError(f"cannot create run directory {run_dir}: {exc.strerror or exc}") from exc
        if check_run_dir(run_dir, config):  # the stage is complete: reuse it
            if progress:
                print(f"reusing {run_dir / SAMPLES_FILE} (n={n:,}, seed={seed})", flush=True)
            return samples_store.read_samples(run_dir / SAMPLES_FILE) if read_back else None
        chunk_dir = run_dir / CHUNK_DIR
        for c in range(n_chunks):
            path = chunk_dir / f"{c:06d}.parquet"
            if path.is_file():
                if _valid_chunk(path, config, c * chunk_size, chunk_len[c]):
                    chunks[c] = None  # done; read back at the end
                else:
                    if progress:
                        print(f"recomputing {path.name}: damaged or not of this run", flush=True)
                    path.unlink()
    missing = [c for c in range(n_chunks) if c not in chunks]

    started = time.perf_counter()
    if missing:
        done = np.array(sorted(chunks), dtype=np.int64)
        spec = engine_spec(bundle, resources)
        prepared = {} if null else prepare_graphs({s: bundle.graph_bytes(s) for s in ("mapping", "synthesis", "scorer")},
                                                  spec)
        graphs = {stem: ray.put(data) for stem, data in prepared.items()}

        def drop_finished(batch):
            ids = batch["id"]
            return {"id": ids[~np.isin(ids // chunk_size, done)]}

        ds = ray.data.range(n, override_num_blocks=max(1, math.ceil(n / batch_size)))
        if len(done):
            ds = ds.map_batches(drop_finished, batch_format="numpy")
        ds = ds.map_batches(
            actor_class, batch_size=batch_size, batch_format="numpy",
            fn_constructor_kwargs=dict(graphs=graphs, seed=seed, spec=spec,
                                       score_names=bundle.score_names, null=null),
            compute=ray.data.ActorPoolStrategy(size=resources.actors),
            num_cpus=resources.cpus_per_actor, num_gpus=resources.gpus_per_actor or None,
        )
        ray.data.DataContext.get_current().enable_progress_bars = progress
        pending: dict[int, list] = {}
        counts = dict.fromkeys(missing, 0)
        report = _ChunkProgress(len(missing), sum(chunk_len[c] for c in missing), progress)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            if not len(batch["sample_id"]):
                continue
            report.batch_received(len(batch["sample_id"]))
            owner = batch["sample_id"] // chunk_size
            for c in np.unique(owner):
                part = {k: v[owner == c] for k, v in batch.items()}
                pending.setdefault(int(c), []).append(part)
                counts[int(c)] += len(part["sample_id"])
                if counts[int(c)] == chunk_len[c]:
                    table = _chunk_table(pending.pop(int(c)), schema)
                    if chunk_dir is not None:
                        write_parquet_atomic(with_metadata(table, {"sampling": config}),
                                             chunk_dir / f"{int(c):06d}.parquet")
                        table = None  # the chunk files are the result; keeps driver memory to one chunk
                    chunks[int(c)] = table
                    report.chunk_done(chunk_len[c])
        incomplete = [c for c in missing if counts[c] != chunk_len[c]]
        if incomplete:
            raise RuntimeError(f"sampling lost rows of chunks {incomplete[:5]}: got "
                               f"{[counts[c] for c in incomplete[:5]]} of {[chunk_len[c] for c in incomplete[:5]]}")
    elapsed = time.perf_counter() - started

    if run_dir is not None:
        # Every chunk is on disk and valid: the chunk directory becomes the samples table in one
        # rename, so it is visible whole or not at all, and nothing is encoded twice.
        remove_leftovers(chunk_dir)  # temp files of writes that never finished (files and links, never a directory)
        if (run_dir / SAMPLES_FILE).is_symlink():  # a (dangling) link planted at the name: replaced, not followed
            (run_dir / SAMPLES_FILE).unlink()
        os.replace(chunk_dir, run_dir / SAMPLES_FILE)
        table = samples_store.read_samples(run_dir / SAMPLES_FILE) if read_back else None
    else:
        table = pa.concat_tables([chunks[c] for c in range(n_chunks)])
        # Only what defines the result goes in the metadata: the same run with other actor
        # counts or batch sizes makes an identical table.
        table = with_metadata(table, {"sampling": config})
    computed = sum(chunk_len[c] for c in missing)
    if progress:
        rate = computed / elapsed if elapsed > 0 and computed else float("nan")
        import resource

        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux
        steady = report.steady_rate() if missing else None
        steady = f" ({steady:,.0f} after the first batch)" if steady else ""
        device = f"{resources.actors} {'GPU' if resources.gpus_per_actor > 0 else 'CPU'} actors"
        print(f"sampled n={n:,} ({computed:,} computed, {n - computed:,} reused) in {elapsed:.1f}s: "
              f"{rate:,.0f} images/s{steady} with {device}; peak driver memory {peak_gb:.2f} GB",
              flush=True)
    return table
