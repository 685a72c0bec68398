"""A run directory's files, and the one rule every stage follows to reuse its output.

Each stage writes its result with the configuration it was made with in the file's own
metadata (Parquet schema metadata, under one key per stage). An output is reused only if
that configuration equals the one asked for; otherwise the stage recomputes and says which
settings differ. Sampling, whose output is expensive, refuses instead (compute.sampling).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from compute.tables import read_metadata
from vectors.errors import InputError

SAMPLES_FILE = "samples.parquet"
VECTORS_FILE = "vectors.parquet"
CASES_FILE = "cases.parquet"
SUMMARY_FILE = "summary.json"
PASSED_PARQUET, PASSED_CSV = "passed.parquet", "passed.csv"
REPORT_FILE = "report.md"
GRID_DIR, GRID_FILE = "grid", "grid.parquet"


def normalized(config: dict) -> dict:
    """The config as it reads back from JSON (tuples become lists, keys strings)."""
    return json.loads(json.dumps(config, sort_keys=True))


def stored_config(path: Path, key: str) -> dict | None:
    """The `key` configuration recorded in a Parquet file, or None if absent or unreadable."""
    try:
        return read_metadata(Path(path)).get(key)
    except Exception:  # a truncated or foreign file is simply not a reusable result
        return None


def reusable(path: Path, key: str, config: dict, progress: bool = True) -> bool:
    """True if `path` holds a result made with exactly `config`; says why not when it exists."""
    path = Path(path)
    if not path.is_file():
        return False
    stored, wanted = stored_config(path, key), normalized(config)
    if stored == wanted:
        if progress:
            print(f"reusing {path} (same settings)", flush=True)
        return True
    if progress:
        if stored is None:
            print(f"recomputing {path}: it records no {key} settings (unreadable or from an older version)",
                  flush=True)
        else:
            changed = sorted(k for k in set(wanted) | set(stored) if wanted.get(k) != stored.get(k))
            print(f"recomputing {path}: made with other settings ({', '.join(changed)})", flush=True)
    return False


def relative_to_run(path: Path, run: Path) -> str:
    """A path as recorded in a run's metadata: relative to the run when inside it, so a copied
    run still points at its own files; absolute otherwise."""
    path, run = Path(path).resolve(), Path(run).resolve()
    try:
        return str(path.relative_to(run))
    except ValueError:
        return str(path)


def recorded_path(recorded: str, run: Path) -> Path:
    path = Path(recorded)
    return path if path.is_absolute() else Path(run) / path


def check_writable(directory: Path) -> None:
    """Refuse, before any work, a run directory that cannot be created or written (read-only
    or special file systems, a file in the way), instead of failing after the work is done."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"cannot write to {directory}: {exc.strerror or exc}; choose a writable directory") from exc
