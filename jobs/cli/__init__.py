"""Shared command-line plumbing: one-line errors with exit status 2, help that shows defaults.

Jobs import from this package only (never from another job): argument groups that several
jobs share, the bundle a job runs on, and connecting to Ray live in its modules.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from vectors.errors import InputError


class UsageError(InputError):
    """Bad command-line input; reported as one line, exit status 2."""


def parser(description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=description,
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def run_main(main: Callable[[list[str] | None], None], argv: list[str] | None) -> None:
    """Call main(argv). A user error prints `error: ...` on one line and exits 2; Ctrl-C prints
    one line, stops the Ray instance this process started and exits 130; no traceback."""
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
        _stop_ray()
        print("interrupted: finished stages and sample chunks are kept; rerun the same command to resume",
              file=sys.stderr)
        sys.exit(130)


def _stop_ray() -> None:
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        try:
            ray.shutdown()
        except Exception:  # already half torn down by the signal: nothing more to stop
            pass


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
