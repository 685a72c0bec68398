"""Finding the model bundle a job runs on: a user's directory, or the built-in default.

The built-in synthetic model is exported on first use into a cache directory keyed by a
hash of everything that defines it (world, renderer, scorer code and shipped weights), so
an edit to any of them yields a fresh export instead of a stale bundle.
"""
from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

from compute.bundle import Bundle, BundleError, cache_root, load_bundle
from compute.storage import is_remote, place
from jobs.cli import UsageError
from vectors.errors import InputError

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
            bundle = load_bundle(local_bundle(path))
            return replace(bundle, source=str(place(path))) if is_remote(path) else bundle
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


def local_bundle(path: str | Path) -> Path:
    """A bundle's local directory: itself, or the local copy of one in an object store
    (compute.transfer.fetch_directory, cached by URI)."""
    from compute.transfer import fetch_directory

    return fetch_directory(path, cache_root() / "remote-bundles") if is_remote(path) else Path(path)


def cached_bundle(sha256: str) -> Bundle | None:
    """A built-in bundle in the cache whose manifest hash is `sha256`, None if there is none."""
    from compute.run_record import manifest_sha256

    for manifest in sorted((cache_root() / "bundles").glob("*/manifest.json")):
        if manifest_sha256(manifest.parent) == sha256:
            try:
                return load_bundle(manifest.parent)
            except BundleError:
                return None
    return None


def run_bundle(run: Path, given: str | Path | None, resolution: int = DEFAULT_RESOLUTION,
               default: bool = True) -> Bundle | None:
    """The model bundle a job on the existing run RUN works with, decided before any work.

    A run that records its bundle (RUN/run.json): `given` must have the recorded manifest hash
    (found anywhere: a moved bundle is passed where it is now); without `given`, the recorded
    path, which must still hold that bundle. A run without a record: `given` must match the
    hash the run's own files recorded; without it, a cached built-in bundle of that hash, else
    the built-in model as before (default=False: None, for callers with their own lookup), and
    a run of another model is asked for --bundle at once."""
    from compute.run_record import (BundleMismatch, BundleMoved, describe, files_bundle, manifest_sha256,
                                    read_record)

    record = read_record(run)
    if record is not None:
        sha, path, model = (record["bundle"]["manifest_sha256"], record["bundle"]["path"],
                            record["bundle"].get("model"))
    else:
        (sha, model), path = files_bundle(run), None
    if given is not None:
        given_sha = manifest_sha256(local_bundle(given))  # a store's: fetched once, reused below
        if sha is not None and given_sha is not None and given_sha != sha:
            raise BundleMismatch(f"--bundle {given} is another bundle ({describe(given_sha, None)}) than the one "
                                 f"run {run} was made with ({describe(sha, model)}"
                                 + (f", at {path}" if path else "") + "); "
                                 + ("leave out --bundle to use the run's own" if path else
                                    "pass the run's own bundle"))
        return resolve_bundle(given, resolution)
    if path is not None and is_remote(path):  # recorded as the store's location: fetched (once) from there
        try:
            bundle = resolve_bundle(path, resolution)
        except InputError as exc:
            raise BundleMoved(f"run {run} was made with the bundle at {path} ({describe(sha, model)}), which "
                              f"cannot be read now ({exc}); pass where it is with --bundle DIR") from exc
    elif path is not None:
        if manifest_sha256(path) is None:
            raise BundleMoved(f"run {run} was made with the bundle at {path} ({describe(sha, model)}), which is "
                              f"no longer there; pass where it is now with --bundle DIR")
        bundle = resolve_bundle(path, resolution)
    if path is not None:
        if bundle.manifest_sha256 != sha:
            raise BundleMismatch(f"the bundle at {path} has changed since run {run} was made with it (manifest "
                                 f"sha256 now {bundle.manifest_sha256[:16]}, recorded {sha[:16]}); pass the "
                                 f"run's own bundle with --bundle DIR")
        return bundle
    if sha is not None:
        cached = cached_bundle(sha)
        if cached is not None:
            return cached
        if model is not None and model != "synthetic":
            raise BundleMoved(f"run {run} was made with a bundle of {describe(sha, model)} and does not record "
                              f"where it is (it was made before runs recorded their bundle); pass it with "
                              f"--bundle DIR")
    if not default:
        return None
    bundle = resolve_bundle(None, resolution)
    if sha is not None and bundle.manifest_sha256 != sha:
        raise BundleMismatch(f"run {run} was made with a bundle of {describe(sha, model)}, not the built-in "
                             f"model's ({bundle.manifest_sha256[:16]}); pass the run's own bundle with --bundle DIR")
    return bundle
