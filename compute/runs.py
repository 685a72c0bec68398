"""A run directory's files, and the one rule every stage follows to reuse its output.

Each stage writes its result with the configuration it was made with in the file's own
metadata (Parquet schema metadata, under one key per stage). An output is reused only if
that configuration equals the one asked for; otherwise the stage recomputes and says which
settings differ. Sampling, whose output is expensive, refuses instead (compute.sampling).
"""
from __future__ import annotations

import json
from pathlib import Path

from compute.storage import Place, as_place, check_reachable, is_remote, place
from compute.tables import read_metadata

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


def stored_config(path: Place | Path, key: str) -> dict | None:
    """The `key` configuration recorded in a Parquet file, or None if absent or unreadable."""
    try:
        return read_metadata(path).get(key)
    except Exception:  # a truncated or foreign file is simply not a reusable result
        return None


def reusable(path: Place | Path, key: str, config: dict, progress: bool = True) -> bool:
    """True if `path` holds a result made with exactly `config`; says why not when it exists."""
    path = as_place(path)
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


def relative_to_run(path: Place | Path, run: Place | Path) -> str:
    """A path as recorded in a run's metadata: relative to the run when inside it, so a copied
    run still points at its own files; absolute (a URI in a store) otherwise."""
    path, run = as_place(path), as_place(run)
    inside, base = path.key(), run.key().rstrip("/") + "/"
    if path.fs.type_name == run.fs.type_name and inside.startswith(base):
        return inside[len(base):]
    return path.key()


def recorded_path(recorded: str, run: Place | Path) -> Place:
    """A path a run's metadata recorded (relative_to_run), as a Place."""
    if recorded.startswith("/") or is_remote(recorded):
        return place(recorded)
    return as_place(run).joinpath(recorded)


def check_writable(directory: Place | Path) -> None:
    """Refuse, before any work, a run directory that cannot be created or written (read-only
    or special file systems, a file in the way; no bucket or no permission in a store),
    instead of failing after the work is done."""
    check_reachable(as_place(directory), write=True, create=True)
