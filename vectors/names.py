"""Names that come from users and files: score names, and file names built from them.

Score names become table columns (RUN/samples.parquet has one per score) and parts of file
names (`jobs.fit --export-csv/--export-boundaries`), so they are checked once, where a
bundle is written and where it is read: `check_score_names`. Every file name built from a
user's value goes through `file_name` (one path component, never a separator, `..`, NUL
or an empty name), so nothing is written or read outside the directory the user chose.
"""
from __future__ import annotations

import os
import re

from vectors.errors import InputError

MAX_NAME_LENGTH = 64
# Letters, digits, '_', '-' and '.', not starting with '.' (no hidden files, no '..').
_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
SAFE_NAME_RULE = (f"letters, digits, '_', '-' and '.', not starting with '.', at most {MAX_NAME_LENGTH} "
                  f"characters")
# Columns the tables have of their own, beside one column per score: RUN/samples.parquet
# (compute/sampling.py samples_schema) and RUN/cases.parquet (compute/testing.py; scores
# appear there only as corr_<name> and spread_<name>). A score named like one of them would
# overwrite it.
TABLE_COLUMNS = ("sample_id", "z", "w", "case_id", "group", "sum_abs_corr", "consistency", "degenerate",
                 "passed")


class NameRefused(InputError):
    """A score name or file name that is unsafe to use as a column or a file name."""


def is_safe_name(name) -> bool:
    return isinstance(name, str) and len(name) <= MAX_NAME_LENGTH and _SAFE_NAME.fullmatch(name) is not None


def check_score_names(names, where: str, fix: str) -> list[str]:
    """The names as a list, or NameRefused naming the first problem, where the names come
    from (`where`, e.g. "--score-names" or a manifest's path) and what to do (`fix`)."""
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise NameRefused(f"score names ({where}) must be a list of names, got {names!r}; {fix}")
    names = list(names)
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise NameRefused(f"score names ({where}) must be non-empty names, one per scorer output, got "
                          f"{names!r}; {fix}")
    unsafe = [n for n in names if not is_safe_name(n)]
    if unsafe:
        raise NameRefused(f"score name {_show(unsafe[0])} ({where}) is not a safe name: score names become "
                          f"table columns and file names, so use {SAFE_NAME_RULE}; {fix}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise NameRefused(f"score names ({where}) must be unique; {', '.join(repeated)} appear(s) more than once; "
                          f"{fix}")
    clashing = [n for n in names if n in TABLE_COLUMNS]
    if clashing:
        raise NameRefused(f"score name {clashing[0]!r} ({where}) is a column the tables already have "
                          f"({', '.join(TABLE_COLUMNS)}); {fix}")
    return names


def file_name(name: str, what: str = "file name") -> str:
    """`name` if it is one plain path component; NameRefused if it is empty, '.', '..', or
    holds a path separator or NUL (it would name a file outside the directory it is joined to)."""
    if not isinstance(name, str) or name in ("", ".", "..") or "\x00" in name or "/" in name \
            or "\\" in name or any(sep and sep in name for sep in (os.sep, os.altsep)):
        raise NameRefused(f"{what} {_show(name)} is not a plain file name (it is empty or holds a path "
                          f"separator, '..' or NUL, and would point outside its directory); rename the score or "
                          f"property it is built from ({SAFE_NAME_RULE})")
    return name


def _show(name) -> str:
    """A name for a one-line message: quoted, escapes visible, long ones cut."""
    text = repr(name)
    return text if len(text) <= 80 else text[:77] + "..."
