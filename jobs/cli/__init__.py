"""Shared command-line plumbing: one-line errors with exit status 2, help that shows defaults."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


class UsageError(ValueError):
    """Bad input from the user; reported as one line, exit status 2."""


def parser(description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=description,
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def run_main(main: Callable[[list[str] | None], None], argv: list[str] | None,
             user_errors: tuple[type[BaseException], ...] = ()) -> None:
    """Call main(argv); user errors print `error: ...` on one line and exit 2, no traceback."""
    try:
        main(argv)
    except (UsageError, *user_errors) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
