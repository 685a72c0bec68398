"""Runs in an object store: a real S3-compatible server (moto's server mode, on 127.0.0.1)
reached through the standard AWS variables, AWS_ENDPOINT_URL among them (conftest.s3_server).

The main job writes the whole run to s3://, a rerun reuses every stage, and a job killed
mid-sampling resumes to the same bytes as a clean run; the grid too. Bad locations and
hostile object names are one line, exit 2, before any work."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from conftest import REPO, call_job
from test_reliability import _full_pipe, _group_ends

from vectors.errors import InputError

N, CASES = 3000, 12  # three chunks of the default 1,024


def _keys(s3, prefix: str) -> dict[str, bytes]:
    """Every object under s3://bucket/prefix: {key below the prefix: bytes}."""
    base = f"{s3.bucket}/{prefix}"
    infos = s3.fs.get_file_info(pafs.FileSelector(base, allow_not_found=True, recursive=True))
    out = {}
    for info in infos:
        if info.type == pafs.FileType.File:
            with s3.fs.open_input_stream(info.path) as f:
                out[info.path[len(base) + 1:]] = f.read()
    return out


def _table(s3, key: str):
    return pq.read_table(f"{s3.bucket}/{key}", filesystem=s3.fs)


def _kill_with_chunks_written(s3, bundle_dir, prefix: str) -> None:
    """jobs.sample into the store, killed (SIGKILL: no handler runs) once its actors have written
    every chunk but before the driver could commit the table: its stdout is a full pipe, so its
    first progress line, printed once chunk 0 is written, blocks it (test_reliability's gate)."""
    read_end, write_end = _full_pipe()
    proc = subprocess.Popen([sys.executable, "-m", "jobs.sample", "--bundle", str(bundle_dir), "--out",
                             f"s3://{s3.bucket}/{prefix}", "--n", str(N), "--seed", "3"],
                            cwd=REPO, stdout=write_end, stderr=subprocess.DEVNULL, start_new_session=True)
    os.close(write_end)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and \
            sum(k.endswith(".parquet") for k in _keys(s3, f"{prefix}/samples.parquet")) < 3:
        time.sleep(0.3)
    assert proc.poll() is None, "the job ended before it was killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    os.close(read_end)
    assert _group_ends(proc.pid, within=30)


def test_main_job_on_s3_reruns_and_resumes_to_the_same_bytes(bundle_dir, s3_server, ray_session, tmp_path):
    s3 = s3_server
    flags = ["--bundle", str(bundle_dir), "--n", str(N), "--cases", str(CASES), "--seed", "3"]
    where = f"s3://{s3.bucket}/runs/killed"

    _kill_with_chunks_written(s3, bundle_dir, "runs/killed")
    left = _keys(s3, "runs/killed/samples.parquet")
    assert "_commit.json" not in left and len(left) == 3  # chunks, but no table
    s3.fs.delete_file(f"{s3.bucket}/runs/killed/samples.parquet/000001.parquet")  # as if killed before it

    resumed = call_job("jobs.vectorfind", "--out", where, *flags)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "(1,024 computed, 1,976 reused)" in resumed.stdout, resumed.stdout
    assert f"{where}/report.md" in resumed.stdout

    # The same run made on disk in one go: a chunk's bytes do not depend on where it is written.
    clean = tmp_path / "clean"
    made = call_job("jobs.vectorfind", "--out", str(clean), *flags)
    assert made.returncode == 0, made.stderr[-3000:]
    stored = _keys(s3, "runs/killed")
    parts = sorted(p.name for p in (clean / "samples.parquet").iterdir())
    assert parts == ["000000.parquet", "000001.parquet", "000002.parquet"]
    assert all(stored[f"samples.parquet/{p}"] == (clean / "samples.parquet" / p).read_bytes() for p in parts)
    assert sorted(k for k in stored if k.startswith("samples.parquet/")) == \
        [f"samples.parquet/{p}" for p in [*parts, "_commit.json"]]
    for name in ("vectors.parquet", "cases.parquet"):  # the same results (a fit's own seconds aside)
        resumed_table, fresh = _table(s3, f"runs/killed/{name}"), pq.read_table(clean / name)
        columns = [c for c in fresh.column_names if c != "fit_seconds"]
        assert resumed_table.select(columns).equals(fresh.select(columns)), name
    assert {"run.json", "summary.json", "report.md", "gallery.html", "passed.csv"} <= set(stored)
    assert not any(k.startswith("sample_chunks/") or ".partial" in k or "lock" in k for k in stored)

    # A rerun reuses every stage (it reads the samples in the store; no actor is needed).
    again = call_job("jobs.vectorfind", "--out", where, *flags)
    assert again.returncode == 0, again.stderr[-3000:]
    for name in ("samples.parquet", "vectors.parquet", "cases.parquet"):
        assert any(line.startswith("reusing") and name in line for line in again.stdout.splitlines()), name
    assert "computed" not in again.stdout and "fitting" in again.stdout  # the stages ran, and reused
    assert _keys(s3, "runs/killed")["vectors.parquet"] == stored["vectors.parquet"]

    # The later jobs take the store's run as they take a directory.
    report = call_job("jobs.report", "--run", where)
    assert report.returncode == 0, report.stderr


def test_grid_on_s3_with_a_bundle_from_the_store_killed_after_its_fits(bundle_dir, s3_server, ray_session):
    """Each phase's results go up when it ends: a grid killed (SIGKILL) once it has started
    testing has its fitted cells in the store, and the rerun reuses them."""
    s3 = s3_server
    out = f"s3://{s3.bucket}/runs/grid"
    stored_bundle = _upload(s3, bundle_dir, "bundles/for-grid")  # a bundle in the store too
    args = ["jobs.grid", "--out", out, "--bundle", stored_bundle, "--n", "1000,2000", "--ratio", "0.2", "--cases", "8"]
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    for line in proc.stdout:
        if line.startswith("[3/3] testing"):
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()
    keys = _keys(s3, "runs/grid")
    assert {"grid/w-n1000-r0.2/vectors.parquet", "grid/w-n2000-r0.2/vectors.parquet"} <= set(keys), sorted(keys)
    assert "grid.parquet" not in keys

    result = call_job(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("vectors.parquet (same settings)") == 2, result.stdout
    keys = _keys(s3, "runs/grid")
    assert {"grid.parquet", "grid.md", "samples.parquet/_commit.json"} <= set(keys)
    assert {"grid/w-n1000-r0.2/vectors.parquet", "grid/w-n2000-r0.2/cases.parquet"} <= set(keys)
    assert _table(s3, "runs/grid/grid.parquet").num_rows == 2


@pytest.mark.parametrize("location, message", [
    ("gs://bucket/run", "unsupported storage scheme gs://"),
    ("s3://", "not a usable object store location"),
    ("s3://vectorfind-test/a/../b", "not a usable object store location"),
    ("s3://no-such-bucket-here/run", "no bucket no-such-bucket-here"),
])
def test_bad_locations_are_one_line_before_any_work(s3_server, location, message):
    result = call_job("jobs.vectorfind", "--out", location, "--n", "1000")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr
    assert "Started a local Ray instance" not in result.stdout + result.stderr


def test_a_commit_object_naming_parts_outside_its_table_is_refused_in_one_line(s3_server, bundle_dir):
    """A commit object is read from the store like any file: part names that leave the table
    (`..`, another prefix) are not followed; the table counts as damaged, before any work."""
    s3 = s3_server
    base = f"{s3.bucket}/runs/hostile/samples.parquet"
    with s3.fs.open_output_stream(f"{base}/_commit.json") as f:
        f.write(b'{"parts": ["../../escape.parquet"], "rows": 10}')
    result = call_job("jobs.sample", "--out", f"s3://{s3.bucket}/runs/hostile", "--bundle", str(bundle_dir),
                      "--n", "1000")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "is damaged" in lines[0], result.stderr
    assert "Started a local Ray instance" not in result.stdout + result.stderr


def test_an_output_appears_whole_or_not_at_all_in_the_store(s3_server):
    """The commit rule: a stage's file is one PUT when its writer finishes; a writer that fails
    leaves no object (and the object it would have replaced is kept)."""
    import pyarrow as pa

    from compute.storage import place
    from compute.tables import read_table, write_parquet_atomic

    s3 = s3_server
    run = place(f"s3://{s3.bucket}/runs/whole")
    table = pa.table({"x": list(range(1000))})
    write_parquet_atomic(table, run / "t.parquet")
    assert read_table(run / "t.parquet").equals(table)
    with pytest.raises(RuntimeError), (run / "t.parquet").open_write() as f:
        f.write(b"half of a table")
        raise RuntimeError("the writer failed")
    with pytest.raises(RuntimeError), (run / "new.md").open_write(text=True) as f:
        f.write("half of a page")
        raise RuntimeError("the writer failed")
    assert set(_keys(s3, "runs/whole")) == {"t.parquet"} and read_table(run / "t.parquet").equals(table)
    (run / "page.md").write_text("é\n")
    assert (run / "page.md").read_text() == "é\n" and (run / "page.md").size() == 3


def _upload(s3, directory: Path, prefix: str) -> str:
    for path in directory.iterdir():
        with s3.fs.open_output_stream(f"{s3.bucket}/{prefix}/{path.name}") as f:
            f.write(path.read_bytes())
    return f"s3://{s3.bucket}/{prefix}"


def test_a_bundle_in_the_store_is_fetched_once_and_checked(s3_server, bundle_dir, bundle):
    from jobs.cli import UsageError
    from jobs.cli.bundles import resolve_bundle

    s3 = s3_server
    fetched = resolve_bundle(_upload(s3, bundle_dir, "bundles/synthetic"))
    assert fetched.manifest_sha256 == bundle.manifest_sha256 and fetched.path != bundle_dir
    stamp = (fetched.path / "synthesis.onnx").stat().st_mtime_ns
    assert resolve_bundle(f"s3://{s3.bucket}/bundles/synthetic").path == fetched.path
    assert (fetched.path / "synthesis.onnx").stat().st_mtime_ns == stamp  # the same manifest: not fetched again

    location = _upload(s3, bundle_dir, "bundles/tampered")
    with s3.fs.open_output_stream(f"{s3.bucket}/bundles/tampered/scorer.onnx") as f:
        f.write((bundle_dir / "scorer.onnx").read_bytes()[:-10] + b"0123456789")
    with pytest.raises(UsageError, match="sha256"):
        resolve_bundle(location)
    with pytest.raises(InputError, match="no manifest.json"):
        resolve_bundle(f"s3://{s3.bucket}/bundles/nothing-here")


def test_an_exported_directory_goes_up_manifest_last_and_is_replaced_only_with_overwrite(s3_server, tmp_path):
    from compute.storage import place
    from compute.transfer import upload_directory

    s3 = s3_server
    local = tmp_path / "bundle"
    local.mkdir()
    for name, data in (("manifest.json", b"{}"), ("a.onnx", b"A"), ("b.onnx", b"B")):
        (local / name).write_bytes(data)
    where = place(f"s3://{s3.bucket}/exports/b")
    assert upload_directory(local, where) == ["a.onnx", "b.onnx", "manifest.json"]
    assert _keys(s3, "exports/b") == {"a.onnx": b"A", "b.onnx": b"B", "manifest.json": b"{}"}
    (local / "b.onnx").unlink()
    (local / "a.onnx").write_bytes(b"A2")
    with pytest.raises(InputError, match="pass --overwrite"):
        upload_directory(local, where)
    assert _keys(s3, "exports/b")["a.onnx"] == b"A"  # refused before a byte went up
    upload_directory(local, where, overwrite=True)
    assert _keys(s3, "exports/b") == {"a.onnx": b"A2", "manifest.json": b"{}"}  # an earlier export's extra removed


def test_faces_from_a_bundle_in_the_store_into_the_store(s3_server, bundle_dir, tmp_path):
    s3 = s3_server
    stored_bundle = _upload(s3, bundle_dir, "bundles/for-faces")
    for out in (str(tmp_path / "faces.png"), f"s3://{s3.bucket}/pictures/faces.png"):
        done = call_job("jobs.faces", "--bundle", stored_bundle, "--count", "2", "--out", out)
        assert done.returncode == 0, done.stderr
    assert _keys(s3, "pictures") == {"faces.png": (tmp_path / "faces.png").read_bytes()}


def test_a_run_records_a_stored_bundle_by_its_location_and_finds_it_there(s3_server, bundle_dir, tmp_path,
                                                                          monkeypatch):
    """run.json names a bundle from the store by its URI, not by this machine's copy, so a job
    on another machine (an empty cache) finds it there."""
    from compute.run_record import read_record, write_record
    from compute.storage import place
    from jobs.cli.bundles import resolve_bundle, run_bundle

    s3 = s3_server
    stored = _upload(s3, bundle_dir, "bundles/recorded")
    bundle = resolve_bundle(stored)
    run = place(f"s3://{s3.bucket}/runs/recorded")
    write_record(run, bundle)
    assert read_record(run)["bundle"]["path"] == stored
    monkeypatch.setenv("VECTORFIND_CACHE", str(tmp_path / "another-machine"))
    found = run_bundle(run, None)
    assert (found.manifest_sha256, found.source) == (bundle.manifest_sha256, stored) and found.path != bundle.path
    s3.fs.delete_dir_contents(f"{s3.bucket}/bundles/recorded")
    monkeypatch.setenv("VECTORFIND_CACHE", str(tmp_path / "a-third-machine"))
    with pytest.raises(InputError, match="cannot be read now.*pass where it is with --bundle"):
        run_bundle(run, None)


def test_a_chunk_the_store_did_not_keep_as_written_is_not_committed(tmp_path):
    """The driver never reads an actor's chunk back, but checks its size against the record:
    a store that kept something else (seen: an upload's chunk framing, from a worker without
    credentials) stops the job instead of being committed as the samples table."""
    import numpy as np

    from compute.sampling import _ChunkProgress, _consume
    from compute.storage import place

    chunks = place(tmp_path)
    (tmp_path / "000000.parquet").write_bytes(b"x" * 4051)
    record = {"chunk": np.array([0]), "rows": np.array([10]), "sha256": np.array(["-"]), "size": np.array([4000]),
              "data": np.array([b""], dtype=object)}
    written = {}
    with pytest.raises(RuntimeError, match="is 4,051 bytes, but 4,000 bytes were written"):
        _consume([record], chunks, written, _ChunkProgress(1, 10, False), lambda c: None)
    assert written == {}
    record["size"] = np.array([4051])
    _consume([record], chunks, written, _ChunkProgress(1, 10, False), lambda c: None)
    assert written == {0: 10}


def test_a_second_job_on_the_same_store_run_is_refused_and_a_dead_holders_lock_is_taken_over(s3_server):
    from compute.runlock import LOCK_FILE, RunLocked, run_lock
    from compute.storage import place

    run = place(f"s3://{s3_server.bucket}/runs/locked")
    script = f"from compute.runlock import run_lock\nwith run_lock({run.uri!r}): print('got it')"
    with run_lock(run):
        assert (run / LOCK_FILE).is_file()
        child = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=False)
        assert child.returncode != 0 and RunLocked.__name__ in child.stderr and f"pid {os.getpid()}" in child.stderr
    assert not (run / LOCK_FILE).is_file()  # released
    # A holder killed (SIGKILL) leaves its lock object: on the same host the next job takes it over.
    (run / LOCK_FILE).write_text('{"pid": 999999999, "host": "%s", "job": "jobs.sample", "started": 0}'
                                 % __import__("socket").gethostname())
    child = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=False)
    assert child.returncode == 0 and "taking over the lock" in child.stdout and "got it" in child.stdout, child.stderr
    assert not (run / LOCK_FILE).is_file()
