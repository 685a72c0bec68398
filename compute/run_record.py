"""What a run remembers about itself: RUN/run.json, its model bundle (where, and by hash) and its method.

    {"format": "vectorfind-run", "version": 1,
     "bundle": {"path": "/abs/bundles/mine", "manifest_sha256": "...", "model": "stylegan2"},
     "method": {...vectors.method.Method.to_dict()...}}

Written (atomically, compute.files) by the main job when it creates or resumes a run, by
jobs.sample before its first chunk (the bundle only: sampling has no method), and by the test
stage, which records where the bundle is now; the fit and the test stages bring its method up
to date. Jobs that read a run (test, fit, report, gallery,
the editor export) take the bundle and method from it by default; a `--bundle` whose
manifest hash differs from the recorded one is refused before any work, and a recorded
bundle that is no longer where it was is reported with a request for `--bundle` (a bundle
with the recorded hash is accepted from anywhere).

A run made before this record existed has none: the hash its own files recorded (the
samples', the vectors', the test's) still guards it, and without `--bundle` such a run gets
the built-in model as before, or a cached built-in bundle of its hash.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from compute.storage import Place, as_place
from vectors.errors import InputError

RECORD_FILE = "run.json"
FORMAT, VERSION = "vectorfind-run", 1


class RunRecordError(InputError):
    """A damaged run record."""


class BundleMismatch(InputError):
    """A bundle other than the run's own was given (refused before any work)."""


class BundleMoved(InputError):
    """The run's recorded bundle is no longer where the record says."""


def read_record(run: Place | Path) -> dict | None:
    """RUN/run.json as a dict, None where the run has none (made before it existed)."""
    path = as_place(run) / RECORD_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(limit=1 << 24))
        ok = (isinstance(record, dict) and record.get("format") == FORMAT
              and isinstance(record.get("bundle"), dict)
              and isinstance(record["bundle"].get("manifest_sha256"), str)
              and isinstance(record["bundle"].get("path"), str)
              and isinstance(record.get("method"), (dict, type(None))))
    except (OSError, ValueError) as exc:
        raise RunRecordError(f"{path} is not a readable run record ({exc}); delete it and pass --bundle DIR "
                             f"(the next jobs.sample, jobs.test or jobs.vectorfind writes it again)") from exc
    if not ok:
        raise RunRecordError(f"{path} is not a vectorfind run record; delete it and pass --bundle DIR "
                             f"(the next jobs.sample, jobs.test or jobs.vectorfind writes it again)")
    return record


def write_record(run: Place | Path, bundle=None, method=None) -> Place | None:
    """Record `bundle` (its absolute path and manifest hash) and/or `method` in RUN/run.json,
    keeping what is not given. A run without a record gets one only when a bundle is given.
    Call it holding the run's lock (the stages that call it do)."""
    run = as_place(run)
    try:
        record = read_record(run)
    except RunRecordError:
        record = None  # rewritten whole below when a bundle is given
    if record is None:
        if bundle is None:
            return None
        record = {"format": FORMAT, "version": VERSION, "method": None}
    if bundle is not None:
        where = getattr(bundle, "source", None) or str(Path(bundle.path).resolve())  # a store's: its URI
        record["bundle"] = {"path": where, "manifest_sha256": bundle.manifest_sha256,
                            "model": bundle.manifest.get("model")}
    if method is not None:
        record["method"] = method.to_dict()
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    path = run / RECORD_FILE
    try:
        if path.read_text() == text:
            return path  # unchanged: not rewritten
    except (OSError, UnicodeDecodeError):
        pass
    path.write_text(text)
    return path


def recorded_method(run: Place | Path):
    """The method RUN recorded (vectors.method.Method), None if it recorded none."""
    record = read_record(run)
    if record is None or record.get("method") is None:
        return None
    from vectors.method import Method

    try:
        return Method.from_dict(record["method"])
    except InputError as exc:
        raise RunRecordError(f"{as_place(run) / RECORD_FILE} records a method that is no longer valid ({exc}); "
                             f"give the method with --method FILE or flags") from exc


def manifest_sha256(bundle_dir: Path) -> str | None:
    """The hash a bundle directory would be known by (of its manifest.json's bytes), None if it has none."""
    try:
        return hashlib.sha256((Path(bundle_dir) / "manifest.json").read_bytes()).hexdigest()
    except OSError:
        return None


def files_bundle(run: Place | Path) -> tuple[str | None, str | None]:
    """(manifest sha256, model) that a run's own result files recorded, for runs without a
    record: the samples', else the test's, else the fit's; (None, None) if none does."""
    from compute import samples_store
    from compute.runs import CASES_FILE, SAMPLES_FILE, VECTORS_FILE
    from compute.tables import read_metadata

    run = as_place(run)
    sources = ((run / SAMPLES_FILE, lambda p: samples_store.metadata(p).get("sampling", {})),
               (run / CASES_FILE, lambda p: read_metadata(p).get("test", {})),
               (run / VECTORS_FILE, lambda p: read_metadata(p).get("fit", {})))
    for path, read in sources:
        if not samples_store.exists(path):
            continue
        try:
            config = read(path)
        except Exception:  # damaged: the stage that reads it says so itself
            continue
        sha = config.get("bundle_manifest_sha256")
        if isinstance(sha, str):
            model = config.get("model") or (config.get("samples") or {}).get("model")
            return sha, model if isinstance(model, str) else None
    return None, None


def describe(sha: str, model: str | None) -> str:
    return f"{'model ' + model + ', ' if model else ''}manifest sha256 {sha[:16]}"
