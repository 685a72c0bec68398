"""Finding the model bundle a job runs on: a user's directory, or the built-in default.

The built-in synthetic model is exported on first use into a cache directory keyed by a
hash of everything that defines it (world, renderer, scorer code and shipped weights), so
an edit to any of them yields a fresh export instead of a stale bundle.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from compute.bundle import Bundle, BundleError, cache_root, load_bundle
from jobs.cli import UsageError

_EXPORT_DIR = Path(__file__).resolve().parents[2] / "export"
_DEFINING_FILES = ("world.py", "render.py", "scorer.py", "synthetic.py", "onnx_bundle.py",
                   "assets/synthetic_scorer.pt")
DEFAULT_RESOLUTION = 64


def builtin_bundle_path(resolution: int = DEFAULT_RESOLUTION) -> Path:
    digest = hashlib.sha256()
    for name in _DEFINING_FILES:
        digest.update((_EXPORT_DIR / name).read_bytes())
    return cache_root() / "bundles" / f"synthetic-{resolution}px-{digest.hexdigest()[:12]}"


def resolve_bundle(path: str | Path | None, resolution: int = DEFAULT_RESOLUTION) -> Bundle:
    """Open `path`, or the built-in synthetic bundle (exported into the cache if absent)."""
    try:
        if path is not None:
            return load_bundle(path)
        target = builtin_bundle_path(resolution)
        if not (target / "manifest.json").is_file():
            from export.models import ExportOptions, ModelError, export_model  # torch only when exporting

            print(f"exporting the built-in synthetic model to {target} (first use) ...", flush=True)
            try:
                export_model("synthetic", target, ExportOptions(resolution=resolution), overwrite=True)
            except ModelError:
                if not (target / "manifest.json").is_file():  # not a concurrent export winning
                    raise
        try:
            return load_bundle(target)
        except BundleError as exc:
            raise UsageError(f"{exc}; the cached built-in bundle is damaged: delete {target} and rerun "
                             f"to rebuild it") from exc
    except BundleError as exc:
        raise UsageError(str(exc)) from exc
