"""The training phase's sampling stage on Ray Data (SPEC.md "Sample").

    missing chunk numbers -> map_batches(ChunkWriter) -> chunk records at the driver

Each actor computes whole chunks of sample ids (compute.sample_chunks): it draws z for
them (a pure function of the run seed and the id), runs mapping -> synthesis -> scorer in
ONNX Runtime, writes the chunk's rows atomically into RUN/sample_chunks/ (for a run in an
object store, straight into RUN/samples.parquet/ there) and returns a record (chunk, rows,
sha256). Images and sample rows never reach the driver. A killed run resumes with only the
missing chunks; when all are there the chunk directory becomes RUN/samples.parquet in one
rename (in a store, a commit object listing the chunks is written last): identical whatever
the actor count, batch size, arrival order or retries.
"""
from __future__ import annotations

import hashlib
import logging
import math
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from compute import samples_store
from compute.bundle import Bundle
from compute.engine import prepare_graphs
from compute.resources import Resources, engine_spec, plan_resources
from compute.runlock import check_unlocked, holding_run_lock
from compute.runs import SAMPLES_FILE, check_writable, normalized
from compute.sample_chunks import (
    CHUNK_DIR,
    ChunkWriter,
    SampleActor,
    chunk_config,
    chunk_name,
    samples_schema,
    valid_chunk,
)
from compute.seeding import check_seed
from compute.storage import Place, as_place, place
from compute.tables import read_table
from vectors.errors import InputError

log = logging.getLogger(__name__)

# Sample ids per SampleActor call within a chunk, whatever the resolution: the engine splits
# a call into inference calls of its own size, so this only bounds an actor's memory.
BATCH_IDS = 4096
# A chunk is one actor call, so the default chunk size gives n about 64 chunks (enough to
# keep dozens of actors busy to the end), within these bounds.
CHUNK_SIZES = (1024, 16384)


def default_chunk_size(n: int) -> int:
    """The chunk size a run of n samples gets unless asked otherwise (a function of n alone,
    so a rerun finds the same chunks)."""
    return min(CHUNK_SIZES[1], max(CHUNK_SIZES[0], -(-int(n) // 64)))


class SamplingError(InputError):
    """Bad sampling input, or a run directory that belongs to another run."""


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


def check_run_dir(run_dir: Place | Path, config: dict) -> bool:
    """Whether RUN already holds exactly these samples (True), or holds none (False). A run
    directory with another run's samples or chunks, or a damaged table, is refused. The
    files' own metadata is the authority: nothing beside them can vouch for them. Needs no
    cluster, so jobs call it before Ray starts."""
    run_dir = as_place(run_dir)
    samples = run_dir / SAMPLES_FILE
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
    chunks = chunk_place(run_dir)
    for name in chunks.files(".parquet"):
        stored = chunk_config(chunks / name)
        if stored is not None and stored != config:
            raise SamplingError(f"{run_dir} holds sample chunks of another run ({_differences(stored, config)}); "
                                f"use a new run directory or the original settings")
    return False


def _without_chunking(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "chunk_size"}


# The fit's driver holds every sample's scores (8 B each, with the plan's indices about 64 B
# a sample) and the codes of the rows the method selects: at the seeds' ratio 0.2 with 3
# properties up to all of them (docs/jobs.md, the fit). Sampling itself holds no rows.
FIT_BYTES_PER_SCORE, FIT_BYTES_PER_SAMPLE = 8, 64


def check_memory(n: int, bundle: Bundle) -> None:
    """Refuse an n whose fit would not fit in the driver's memory, before any work."""
    need = n * (4 * max(bundle.z_dim, bundle.w_dim) + FIT_BYTES_PER_SCORE * len(bundle.score_names)
                + FIT_BYTES_PER_SAMPLE)
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        available = info["MemAvailable"]
    except (OSError, KeyError, ValueError):
        return  # not Linux: no reliable figure, no check
    if need > 0.8 * available:
        raise SamplingError(f"n = {n:,} samples need about {need / 2**30:.1f} GiB in the driver to fit (the scores of "
                            f"every sample and the codes of the rows the method selects), more than 80% of the "
                            f"{available / 2**30:.1f} GiB available; use a smaller n or a bigger head node")


def check_sampling_input(bundle: Bundle, n, seed, run_dir: Place | Path | None = None, chunk_size: int | None = None) -> int:
    """Every check that needs no cluster (jobs call it before Ray starts); returns the seed."""
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n <= 0:
        raise SamplingError(f"n must be a positive integer, got {n!r}")
    chunk_size = default_chunk_size(n) if chunk_size is None else chunk_size
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise SamplingError(f"the chunk size must be >= 1, got {chunk_size!r}")
    check_memory(int(n), bundle)
    try:
        seed = check_seed(seed)
    except ValueError as exc:
        raise SamplingError(str(exc)) from exc
    if run_dir is not None:
        run_dir = as_place(run_dir)
        check_writable(run_dir)  # a store that cannot be reached or written: refused before anything else
        check_unlocked(run_dir)  # another job at work there: refused before Ray starts
        check_run_dir(run_dir, sampling_config(bundle, n, seed, chunk_size))
    return seed


class _ChunkProgress:
    """One stdout line when the first chunk is written (the run is resumable from then on),
    then at most one every PERIOD seconds, so a long run shows its rate as it goes."""

    PERIOD = 10.0

    def steady_rate(self) -> float | None:
        """Images/s from the first chunk written to the end: the rate without Ray's and the
        actors' start-up."""
        if self.first is None:
            return None
        seconds = time.perf_counter() - self.first[0]
        return (self.done_images - self.first[1]) / seconds if seconds > 1.0 else None

    def __init__(self, chunks: int, images: int, enabled: bool):
        self.chunks, self.images, self.enabled = chunks, images, enabled
        self.done_chunks = self.done_images = 0
        self.started = self.last = time.perf_counter()
        self.first = None  # (time, images) when the first chunk was written

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


def chunk_place(run_dir: Place | Path) -> Place:
    """Where a run's chunks are written: RUN/sample_chunks/ on disk; in an object store
    straight into RUN/samples.parquet/, which its commit object makes a table."""
    run_dir = as_place(run_dir)
    return run_dir / (SAMPLES_FILE if run_dir.remote else CHUNK_DIR)


def _discard(part: Place) -> bool:
    """Remove a chunk that is not to be reused (a file, a planted link); whether one was there."""
    there = part.identity() is not None
    part.delete()
    return there


def _consume(records, chunk_dir: Place, written: dict, report: _ChunkProgress, check) -> None:
    """Take the actors' chunk records: write the bytes of chunks computed on other nodes,
    confirm the files of chunks written on this one, and count each."""
    for record in records:
        for c, rows, sha256, size, data in zip(record["chunk"].tolist(), record["rows"].tolist(),
                                               record["sha256"].tolist(), record["size"].tolist(),
                                               record["data"].tolist()):
            part = chunk_dir / chunk_name(c)
            if len(data):  # computed on another node: the driver writes the bytes it was sent
                if hashlib.sha256(data).hexdigest() != sha256:
                    raise RuntimeError(f"chunk {c} arrived damaged (its sha256 does not match)")
                part.write_bytes(data)
            # Written by the actor: the driver does not read it back, but its size must be what
            # was written (a store that kept something else, e.g. an upload's chunk framing
            # from a client without credentials, would otherwise be committed).
            stored = part.size()
            if stored != size:
                raise RuntimeError(f"chunk {c} in {chunk_dir} is {'missing' if stored is None else f'{stored:,} bytes'}"
                                   f", but {size:,} bytes were written; check the workers' storage settings")
            written[c] = rows
            report.chunk_done(rows)
            check(c)


@holding_run_lock("run_dir")  # one job at a time; clears our stale temp files
def _sample_into(bundle: Bundle, n: int, seed: int, run_dir: Place, *, batch_size: int | None,
                 resources: Resources | None, chunk_size: int, actor_class: type, progress: bool,
                 null: bool, first_chunk_check=None) -> None:
    """Compute the missing chunks of RUN/samples.parquet on the cluster and commit the table."""
    import ray

    resources = resources or plan_resources()
    batch_size = batch_size or min(BATCH_IDS, chunk_size)
    if batch_size < 1 or chunk_size < 1:
        raise SamplingError("the batch size and the chunk size must be >= 1")
    config = sampling_config(bundle, n, seed, chunk_size)
    n_chunks = math.ceil(n / chunk_size)
    chunk_len = [min(chunk_size, n - c * chunk_size) for c in range(n_chunks)]
    try:
        run_dir.mkdir()
    except OSError as exc:
        raise SamplingError(f"cannot create run directory {run_dir}: {exc.strerror or exc}") from exc
    if check_run_dir(run_dir, config):  # the stage is complete: reuse it
        if progress:
            print(f"reusing {run_dir / SAMPLES_FILE} (n={n:,}, seed={seed})", flush=True)
        return
    chunk_dir = chunk_place(run_dir)
    chunk_dir.mkdir()
    missing = []
    for c in range(n_chunks):
        part = chunk_dir / chunk_name(c)
        if part.is_file() and valid_chunk(part, config, c * chunk_size, chunk_len[c]):
            continue
        if _discard(part) and progress:
            print(f"recomputing {part.name}: damaged or not of this run", flush=True)
        missing.append(c)

    def check(chunk: int) -> None:  # the caller's look at the first chunk's scores (see sample_table)
        nonlocal first_chunk_check
        if first_chunk_check is not None:
            part = chunk_dir / chunk_name(chunk)
            table = read_table(part, columns=list(bundle.score_names))
            first_chunk_check({name: table[name].to_numpy() for name in bundle.score_names})
            first_chunk_check = None

    if len(missing) < n_chunks:
        check(next(c for c in range(n_chunks) if c not in missing))
    started = time.perf_counter()
    report = _ChunkProgress(len(missing), sum(chunk_len[c] for c in missing), progress)
    if missing:
        spec = engine_spec(bundle, resources)
        prepared = {} if null else prepare_graphs({s: bundle.graph_bytes(s) for s in ("mapping", "synthesis", "scorer")},
                                                  spec)
        actor_kwargs = dict(graphs={stem: ray.put(data) for stem, data in prepared.items()}, seed=seed, spec=spec,
                            score_names=bundle.score_names, null=null)
        # One block per chunk: each actor call computes and writes one whole chunk.
        ds = ray.data.from_items([{"chunk": c} for c in missing], override_num_blocks=len(missing))
        ds = ds.map_batches(
            ChunkWriter, batch_size=1, batch_format="numpy",
            fn_constructor_kwargs=dict(actor_class=actor_class, actor_kwargs=actor_kwargs, n=n, chunk_size=chunk_size,
                                       batch_size=batch_size, chunk_dir=chunk_dir,
                                       schema=samples_schema(bundle), config=config,
                                       driver_node=ray.get_runtime_context().get_node_id()),
            compute=ray.data.ActorPoolStrategy(size=min(resources.actors, len(missing))),
            num_cpus=resources.cpus_per_actor, num_gpus=resources.gpus_per_actor or None,
        )
        ray.data.DataContext.get_current().enable_progress_bars = progress
        written = {}
        records = iter(ds.iter_batches(batch_size=None, batch_format="numpy"))
        try:
            _consume(records, chunk_dir, written, report, check)
        finally:
            # Stop Ray Data's executor and prefetch threads here, on any exit: on Ctrl-C the
            # caller stops Ray next, and a thread of theirs still running then makes Ray's C++
            # core end the process with status 1 ("the core worker has already been shutdown").
            records.close()
        lost = [c for c in missing if written.get(c) != chunk_len[c]]
        if lost:
            raise RuntimeError(f"sampling lost chunks {lost[:5]} ({len(lost)} of {len(missing)})")
    elapsed = time.perf_counter() - started

    samples_store.commit(chunk_dir, run_dir / SAMPLES_FILE, [chunk_name(c) for c in range(n_chunks)], n)
    computed = sum(chunk_len[c] for c in missing)
    if progress:
        import resource

        rate = computed / elapsed if elapsed > 0 and computed else float("nan")
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux
        steady = report.steady_rate() if missing else None
        steady = f" ({steady:,.0f} after the first chunk)" if steady else ""
        device = f"{resources.actors} {'GPU' if resources.gpus_per_actor > 0 else 'CPU'} actors"
        print(f"sampled n={n:,} ({computed:,} computed, {n - computed:,} reused) in {elapsed:.1f}s: "
              f"{rate:,.0f} images/s{steady} with {device}; peak driver memory {peak_gb:.2f} GB",
              flush=True)


def sample_table(bundle: Bundle, n: int, seed: int, run_dir: Place | str | Path | None = None, *,
                 batch_size: int | None = None, resources: Resources | None = None,
                 chunk_size: int | None = None, actor_class: type = SampleActor,
                 progress: bool = True, null: bool = False, read_back: bool = True,
                 first_chunk_check=None) -> pa.Table | None:
    """Sample n faces on the Ray cluster into RUN/samples.parquet, reusing any chunks a previous
    attempt completed, and return the table (id order), or None with `read_back=False`.
    Without a run directory the chunks go to a temporary one, read back and removed.
    `chunk_size` None: default_chunk_size(n). `first_chunk_check`, if given, is called once with
    the first finished chunk's scores ({name: array}); an error it raises stops the sampling
    (the chunks written so far are kept for a rerun).
    `batch_size` is the ids per SampleActor call inside a chunk; `actor_class` may be a
    subclass of SampleActor (tests use one that crashes once); `null` replaces inference by
    zeros, to measure the pipeline's own ceiling."""
    seed = check_sampling_input(bundle, n, seed, chunk_size=chunk_size)
    chunk_size = default_chunk_size(n) if chunk_size is None else chunk_size
    kwargs = dict(batch_size=batch_size, resources=resources, chunk_size=chunk_size, actor_class=actor_class,
                  progress=progress, null=null, first_chunk_check=first_chunk_check)
    if run_dir is None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="vectorfind-samples-") as tmp:
            _sample_into(bundle, n, seed, place(tmp), **kwargs)
            return samples_store.read_samples(place(tmp) / SAMPLES_FILE)
    run_dir = as_place(run_dir)
    _sample_into(bundle, n, seed, run_dir, **kwargs)
    return samples_store.read_samples(run_dir / SAMPLES_FILE) if read_back else None
