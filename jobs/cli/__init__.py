"""Shared command-line plumbing: one-line errors with exit status 2, help that shows defaults.

Jobs import from this package only (never from another job): argument groups that several
jobs share, the bundle a job runs on, and connecting to Ray live in its modules.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from vectors.errors import InputError


class UsageError(InputError):
    """Bad command-line input; reported as one line, exit status 2."""


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" where there is a default that the help text does not already state
    (no "(default: None)" after "default: the built-in model", nor on required options)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or "default" in text:
            return text
        return super()._get_help_string(action)


def parser(description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=description, formatter_class=_DefaultsHelp)


def run_main(main: Callable[[list[str] | None], None], argv: list[str] | None) -> None:
    """Call main(argv). A user error prints `error: ...` on one line and exits 2; so does a Ray
    cluster that went away under the job (cluster_lost: a rerun resumes); Ctrl-C prints one
    line and exits 130 (a local Ray instance this process started ends with it); no traceback."""
    stop = threading.Event()
    threading.Thread(target=_watch_local_ray, args=(stop,), name="vectorfind-ray-watch", daemon=True).start()
    try:
        main(argv)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:  # a file that cannot be read or written (permissions, read-only, a file in the way)
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: cannot write or read {where}{exc.strerror or exc}; check the path and its permissions",
              file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        stop.set()
        _leave("interrupted: finished stages and sample chunks are kept; rerun the same command to resume", 130)
    except Exception as exc:
        lost = cluster_lost(exc)
        if lost is None:
            raise  # a bug: the traceback is what a report needs
        stop.set()
        _stop_ray()
        print(LOST_LINE.format(lost=lost), file=sys.stderr)
        sys.exit(2)
    finally:
        stop.set()


def _leave(line: str, status: int) -> None:
    """Print the one line and end the process with `status` at once, without ray.shutdown().
    After Ctrl-C a thread of Ray's (Ray Data's prefetchers, its executor) may still call into
    the core worker while shutdown tears it down, and the C++ core then ends the process with
    status 1 before Python can print or exit (seen once the actors had written every chunk
    while the driver was interrupted). Nothing is lost by not shutting down: a local
    instance's raylet, GCS and workers share this process's fate and exit with it, a cluster
    ends the job's actors when its driver goes, and every file the job writes is committed
    whole or left as a temp file the rerun clears."""
    print(line, file=sys.stderr, flush=True)
    try:
        sys.stdout.flush()
    except (OSError, ValueError):  # a closed pipe: the line on stderr is what matters
        pass
    os._exit(status)


def _stop_ray() -> None:
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        try:
            ray.shutdown()
        except Exception:  # already half torn down: nothing more to stop
            pass


LOST_LINE = ("error: the Ray cluster lost {lost}; finished stages and sample chunks are kept; "
             "rerun the same command to resume")
WATCH_PERIOD = 0.5  # seconds between checks of the local instance's raylet and GCS


def _watch_local_ray(stop: threading.Event) -> None:
    """When this process started the local Ray instance and its raylet or GCS server dies,
    print LOST_LINE and exit 2 at once. Ray's own reaction there is in C++: after ~15 s of
    its log lines the driver exits 1 with no Python exception that run_main could catch (a
    killed raylet did exactly that). A normal ray.shutdown() disconnects before it stops the
    processes, so it never looks like a loss; Ray starts them with SIGINT blocked, so Ctrl-C
    does not either. For a cluster this process only connected to, the exceptions Ray raises
    are mapped by cluster_lost instead."""
    while not stop.wait(WATCH_PERIOD):
        worker = sys.modules.get("ray._private.worker")
        node = getattr(worker, "_global_node", None)
        processes = getattr(node, "all_processes", None) or {}
        for kind, what in (("raylet", "its local raylet"), ("gcs_server", "its GCS server")):
            for info in list(processes.get(kind) or []):
                process = getattr(info, "process", None)
                if process is None or process.poll() is None:
                    continue
                if stop.is_set() or not getattr(getattr(worker, "global_worker", None), "connected", False):
                    return  # shutting down on purpose
                print(LOST_LINE.format(lost=f"{what} (exit status {process.returncode})"), file=sys.stderr,
                      flush=True)
                os._exit(2)  # the C++ core worker would end the process anyway, with status 1


# Ray's errors that mean part of the cluster went away under the job (a raylet, a node, a
# worker or actor process, or objects that lived there), not that the job's input or code is
# wrong: the work already written (finished stages, sample chunks) is intact and a rerun of
# the same command resumes from it. Each name -> what the one-line error says was lost.
# Deliberately not here: RayTaskError by itself (the job's own code raised inside a task: a
# traceback is what a report needs, unless its cause is one of these), OutOfMemoryError and
# ObjectStoreFullError (a rerun hits them again: not a transient loss), GetTimeoutError.
_LOST = (("LocalRayletDiedError", "its local raylet"), ("NodeDiedError", "a node"),
         ("ActorDiedError", "an actor process"), ("ActorUnavailableError", "an actor process"),
         ("RayActorError", "an actor process"), ("WorkerCrashedError", "a worker process"),
         ("OwnerDiedError", "the owner of an object"), ("ObjectLostError", "an object held by a node"),
         ("RpcError", "its connection to a Ray component"),
         ("RaySystemError", "a system component (its raylet or GCS)"))


def cluster_lost(exc: BaseException) -> str | None:
    """What of the cluster was lost if `exc` (or what it wraps: a RayTaskError's cause, the
    exception chain) is one of Ray's lost-cluster errors; None otherwise."""
    exceptions = getattr(sys.modules.get("ray"), "exceptions", None)
    if exceptions is None:  # Ray never imported: nothing of it can have been lost
        return None
    kinds = [(getattr(exceptions, name), what) for name, what in _LOST if hasattr(exceptions, name)]
    seen, todo = set(), [exc]
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if not isinstance(current, BaseException):
            continue
        for kind, what in kinds:
            if isinstance(current, kind):
                return what
        todo += [getattr(current, "cause", None), current.__cause__, current.__context__]
    return None


def parse_floats(text: str, name: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{name} must be comma-separated numbers, got {text!r}") from None


def parse_list(text: str, name: str, kind) -> list:
    """A sorted comma-separated list without duplicates; empty is an error."""
    try:
        values = [kind(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{name} must be a comma-separated list, got {text!r}") from None
    if not values:
        raise UsageError(f"{name} is empty")
    duplicates = sorted({v for v in values if values.count(v) > 1})
    if duplicates:
        raise UsageError(f"{name} has duplicates: {', '.join(map(str, duplicates))}")
    return sorted(values)


def location_arg(text: str) -> Path | str:
    """argparse type of a run's or a bundle's location: a local path, or an object store URI
    kept as text (a Path would fold its `//`); compute.storage checks it when the job opens it
    (one line, exit 2)."""
    from compute.storage import is_remote

    return text if is_remote(text) else Path(text)


def run_location(location, write: bool = True):
    """A run's location (location_arg's value, or None) as a compute.storage.Place, the one
    way every stage reads and writes it; a store that cannot be reached (or, with `write`,
    written) is refused here in one line, before any work."""
    from compute.storage import as_place, check_reachable

    if location is None:
        return None
    where = as_place(location)
    check_reachable(where, write=write)
    return where
