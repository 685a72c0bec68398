"""One job at a time in a run directory: RUN/.vectorfind.lock.

Every stage that writes into a run directory (sampling, fit, test, report, gallery, grid and
the whole method) holds the lock while it works (`holding_run_lock` on the stage function,
or `run_lock` as a context manager). The lock file is created exclusively (a complete file
written under a fresh mkstemp name, O_EXCL, then hard-linked to the lock name, which fails
if the name exists), so of two jobs exactly one gets it; it names the holder's pid, host,
job and start time. The second job is refused with one line naming the holder's pid, before
any work. A lock whose pid is no longer alive on this host (a job killed with SIGKILL, a
machine that lost power) is stale: the next job takes it over and says so. A lock from
another host cannot be checked and is refused with the holder named, and how to clear it.

The lock is re-entrant within a process: the whole method holds it and calls the stages,
which hold it again. The first holder in a process also clears what killed writers left in
the run directory and its sample chunk directory (compute.files.remove_leftovers): with the
lock held, no writer of ours can be at work there, so any temporary file is stale.
"""
from __future__ import annotations

import errno
import functools
import inspect
import json
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from compute.files import remove_leftovers
from compute.storage import Place, as_place
from vectors.errors import InputError

LOCK_FILE = ".vectorfind.lock"
LEFTOVER_DIRS = ("", "sample_chunks")  # the run directory itself and its chunk directory

_held: dict[str, int] = {}  # resolved run directory -> nesting depth in this process
_guard = threading.Lock()


class RunLocked(InputError):
    """The run directory is in use by another job."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _job_name() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return getattr(spec, "name", None) or Path(sys.argv[0] or "python").name


def _read(lock: Place) -> dict | None:
    try:
        holder = json.loads(lock.read_text(limit=1 << 16))
        return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None
    except (OSError, ValueError, InputError):
        return None


def _create(lock: Place, record: dict) -> bool | None:
    """Make the lock file with `record` in it, whole, if no lock exists; False if one does;
    None if the directory cannot be written (read-only: no job of ours can write there).
    In an object store, which has no exclusive create, the lock object is written when none
    is there and read back: two jobs starting in the same instant could both pass (docs/storage.md)."""
    if lock.remote:
        if lock.is_file():
            return False
        lock.write_text(json.dumps(record))
        return _read(lock) == json.loads(json.dumps(record))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{LOCK_FILE}-", suffix=".new", dir=lock.parent.path)  # not a leftover name
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return None
        raise
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        os.chmod(tmp, 0o644)
        try:
            os.link(tmp, lock.path)  # atomic and exclusive: fails if the name exists (even as a symlink)
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(tmp)


def _describe(holder: dict) -> str:
    since = holder.get("started")
    since = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else ""
    return f"pid {holder['pid']} on {holder.get('host', '?')} ({holder.get('job', '?')}{since})"


def acquire(run: Place | Path) -> dict | None:
    """Take RUN's lock; returns the record written (None for a directory this process cannot
    write: it orders nothing there). Raises RunLocked naming the holder if a live job has it."""
    run = as_place(run)
    lock = run / LOCK_FILE
    record = {"pid": os.getpid(), "host": socket.gethostname(), "job": _job_name(), "started": time.time()}
    for _ in range(5):
        created = _create(lock, record)
        if created is None:
            return None
        if created:
            return record
        holder = _read(lock)
        if holder is None:
            if not lock.is_regular():
                raise RunLocked(f"{lock} is not a lock file of ours (a link or a directory); remove it and rerun")
            age = time.time() - (lock.mtime() or time.time())  # gone meanwhile: just made
            raise RunLocked(f"{run} holds an unreadable lock file {lock.name} ({age:.0f} s old); if no "
                            f"vectorfind job is running on this directory, delete {lock} and rerun")
        if holder.get("host") != record["host"]:
            raise RunLocked(f"{run} is in use by another job: {_describe(holder)}; wait for it to finish, or "
                            f"if it is no longer running, delete {lock} and rerun")
        if _alive(holder["pid"]):
            raise RunLocked(f"{run} is in use by another job: {_describe(holder)}; wait for it to finish "
                            f"(or stop it), then rerun")
        # Stale: its holder is gone. Remove it only if it is still the record we judged.
        if _read(lock) == holder:
            lock.delete()
            print(f"taking over the lock of {run}: its holder ({_describe(holder)}) is no longer running",
                  flush=True)
    raise RunLocked(f"could not take the lock of {run}: other jobs keep taking it; rerun when they are done")


def release(run: Place | Path, record: dict | None) -> None:
    lock = as_place(run) / LOCK_FILE
    if record is not None and _read(lock) == json.loads(json.dumps(record)):  # never remove a lock not ours
        lock.delete()


@contextmanager
def run_lock(run: Place | str | os.PathLike, create: bool = True) -> Iterator[None]:
    """Hold RUN's lock for the block (re-entrant in this process). The outermost holder
    clears stale temporary files of ours in RUN and RUN/sample_chunks. With create=False a
    missing RUN is not made (the stage reports it) and the block runs without a lock."""
    run = as_place(run)
    if not create and not run.is_dir():
        yield
        return
    run.mkdir()
    key = run.key()
    with _guard:
        depth = _held.get(key, 0)
        if depth == 0:
            record = acquire(run)
        _held[key] = depth + 1
    try:
        if depth == 0 and record is not None and not run.remote:  # a store holds no temporary files
            for sub in LEFTOVER_DIRS:
                remove_leftovers(os.path.join(run.path, sub))
        yield
    finally:
        with _guard:
            _held[key] -= 1
            if _held[key] == 0:
                del _held[key]
                release(run, record)


def check_unlocked(run: Place | str | os.PathLike) -> None:
    """Refuse, without taking it, a run directory a live job holds (jobs call it before Ray
    starts, so the second job fails in a second rather than after starting a cluster)."""
    run = as_place(run)
    lock = run / LOCK_FILE
    if run.key() in _held or lock.identity() is None:
        return
    holder = _read(lock)
    if holder is None or holder.get("host") != socket.gethostname() or _alive(holder["pid"]):
        release(run, acquire(run))  # raises with the holder named, or takes a stale lock over


def holding_run_lock(argument: str, create: bool = True):
    """Decorate a stage function whose parameter `argument` is the run directory: it runs
    holding that directory's lock (nothing is taken when the argument is None; with
    create=False, nor when the directory does not exist: the stage says so itself)."""
    def decorate(function):
        signature = inspect.signature(function)

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            run = signature.bind(*args, **kwargs).arguments.get(argument)
            if run is None:
                return function(*args, **kwargs)
            with run_lock(run, create=create):
                return function(*args, **kwargs)

        return wrapper

    return decorate
