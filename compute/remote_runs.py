"""A run on an object store, worked on through a local copy of its small files.

    with staged("s3://bucket/runs/x") as run:      # a local directory
        run_method(run, ...)                        # stages read and write `run` as on disk
        publish(run)                                # after each stage: its outputs go up

The stages keep their one way of writing a file (compute.files); this module moves the
results between that directory and the store. On entry it downloads every object of the run
except the samples (the store is the truth: anything else in the local copy is discarded);
`publish` uploads each file that is new or changed since, one object each, so every output
appears whole (storage's commit rule), and removes the objects of files a stage deleted. The
samples never pass through here: sampling actors write their chunks straight to
RUN/samples.parquet/ in the store and a commit object marks the table complete
(compute.sampling); readers read it there (compute.samples_store), a batch at a time.

The local copy lives under $VECTORFIND_STAGING (default ~/.cache/vectorfind/runs), one
directory per URI. Its lock (compute.runlock), held from before the pull to after the last
publish, keeps two jobs on one machine apart; an object store has no locks, so two machines
must not work on one run at the same time.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.fs as pafs

from compute.files import is_leftover, sha256_file, write_text_atomic
from compute.runlock import LOCK_FILE, run_lock
from compute.storage import Place, check_reachable, is_remote, local_name, place
from vectors.errors import InputError

MARKER = ".vectorfind-remote.json"  # in the local copy: the run's URI and what was pulled or pushed
SAMPLE_DIRS = ("samples.parquet", "sample_chunks")  # datasets that stay in the store
LARGEST_OBJECT = 1 << 30  # a run's other files are tables of directions and cases, pages, plots
# Files of this machine's copy that are not results: the marker, the run lock and its temp files.
_LOCAL_ONLY = re.compile(f"^({re.escape(MARKER)}|{re.escape(LOCK_FILE)}.*)$")


def staging_root() -> Path:
    return Path(os.environ.get("VECTORFIND_STAGING") or Path.home() / ".cache" / "vectorfind" / "runs")


def remote_of(run: str | os.PathLike) -> Place | None:
    """The store location of a local copy made by `staged`, or None for an ordinary run."""
    return _marker(run)[0]


def _marker(run: str | os.PathLike) -> tuple[Place | None, dict]:
    """(store location, {file: sha256} as last pulled or published) of a local copy;
    (None, {}) for an ordinary run or an unreadable marker."""
    try:
        record = json.loads((Path(run) / MARKER).read_text(encoding="utf-8"))
        if not isinstance(record, dict) or not isinstance(record.get("uri"), str):
            return None, {}
        files = record.get("files")
        return place(record["uri"]), files if isinstance(files, dict) else {}
    except (OSError, ValueError, InputError):
        return None, {}


@contextmanager
def staged(location: str | os.PathLike | None) -> Iterator[Path | None]:
    """The run at `location` as a local directory: itself for a local path (None stays None);
    for a store URI, a local copy of its small files, published back when the block ends (also
    on errors and Ctrl-C, so finished stages are kept)."""
    if not is_remote(location):
        yield None if location is None else Path(location)
        return
    where = place(location)
    check_reachable(where)
    local = staging_root() / local_name(where)
    # The copy's lock, held throughout: a second job on this machine is refused before the
    # pull could replace the copy under the first one.
    with run_lock(local):
        _pull(where, local)
        print(f"{where}: working through a local copy in {local}; each finished stage goes up to the store",
              flush=True)
        try:
            yield local
        finally:
            publish(local)


def _relative_key(where: Place, info: pafs.FileInfo) -> str:
    """The object's key below the run, checked before it names a local file: a key from the
    store is hostile input (`..`, absolute parts, control characters)."""
    rel = info.path[len(where.path):].lstrip("/")
    parts = rel.split("/")
    if not rel or any(p in ("", ".", "..") or not p.isprintable() or "\\" in p for p in parts):
        raise InputError(f"{where} holds an object with an unusable name {rel!r}; remove it from the store")
    return rel


def _pull(where: Place, local: Path) -> None:
    """Make `local` a copy of the run's objects outside the sample datasets."""
    for entry in list(local.iterdir()):  # everything but the lock we hold
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    pulled = {}
    infos = where.fs.get_file_info(pafs.FileSelector(where.path, allow_not_found=True, recursive=True))
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        rel = _relative_key(where, info)
        if rel.split("/", 1)[0] in SAMPLE_DIRS or _LOCAL_ONLY.match(rel.rsplit("/", 1)[-1]):
            continue
        if info.size is not None and info.size > LARGEST_OBJECT:
            raise InputError(f"{where}/{rel} is {info.size:,} bytes, more than a run's file can be; remove it")
        target = local / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with where.fs.open_input_stream(info.path) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        pulled[rel] = sha256_file(target)
    _write_marker(local, where, pulled)


def publish(run: str | os.PathLike) -> list[str]:
    """Upload the local copy's new and changed files to the store (one object each: data
    tables first, pages last) and delete the objects of files removed here. A no-op for an
    ordinary run. Returns the keys written or deleted."""
    run = Path(run)
    where, known = _marker(run)
    if where is None:
        return []
    now = {}
    for path in run.rglob("*"):
        rel = path.relative_to(run).as_posix()
        if path.is_file() and not path.is_symlink() and not _LOCAL_ONLY.match(path.name) \
                and not is_leftover(path.name) and rel.split("/", 1)[0] not in SAMPLE_DIRS:
            now[rel] = sha256_file(path)
    changed = sorted((rel for rel in now if known.get(rel) != now[rel]), key=_upload_order)
    for rel in changed:
        pafs.copy_files(str(run / rel), _key(where, rel), source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=where.fs)
    gone = sorted(rel for rel in known if rel not in now)
    for rel in gone:
        try:
            where.fs.delete_file(_key(where, rel))
        except FileNotFoundError:
            pass
    _write_marker(run, where, now)
    return changed + gone


def _key(where: Place, rel: str) -> str:
    return f"{where.path}/{rel}"


def _upload_order(rel: str) -> tuple[int, str]:
    """Tables before the summaries and pages drawn from them, so a reader that finds a page
    finds what it shows."""
    return (0 if rel.endswith(".parquet") else 1 if rel.endswith((".json", ".csv")) else 2, rel)


def _write_marker(local: Path, where: Place, files: dict) -> None:
    write_text_atomic(local / MARKER, json.dumps({"uri": where.uri, "files": files}, sort_keys=True))
