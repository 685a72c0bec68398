"""A run remembers its model bundle and method (issue 23): RUN/run.json, written by the main
job, read by the jobs that work on the run. Real files, a real bundle of the user's (a copy of
the built-in one whose manifest differs, so its hash does too), the session's real Ray."""
from __future__ import annotations

import hashlib
import json
import shutil

import pyarrow.parquet as pq
import pytest

from compute.bundle import load_bundle
from compute.run_record import RECORD_FILE
from compute.tables import read_metadata
from conftest import call_job, run_job
from jobs.cli.bundles import run_bundle

N, CASES = 600, 4
METHOD = ["--properties", "eyes,mouth", "--ratio", "0.25"]  # not the seeds' default: the fit must read it back


def _one_line_exit_2(result, *messages):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.stdout[-2000:], result.stderr[-2000:])
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    for message in messages:
        assert message in lines[0], lines[0]
    return lines[0]


def _files(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _user_bundle(bundle_dir, where):
    """A copy of the built-in bundle as a user's own: its manifest names model 'mine' and carries a note."""
    shutil.copytree(bundle_dir, where)
    manifest = json.loads((where / "manifest.json").read_text())
    manifest.update(model="mine", note="the user's own bundle")
    (where / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return where


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    """An empty built-in cache: a job that fell back to the built-in model would export into it."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("VECTORFIND_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def made(ray_session, bundle_dir, tmp_path_factory):
    """A small run made by the main job on the user's bundle with a non-default method."""
    root = tmp_path_factory.mktemp("memory")
    mine = _user_bundle(bundle_dir, root / "bundles" / "mine")
    run = root / "run"
    result = call_job("jobs.vectorfind", "--bundle", str(mine), "--out", str(run), "--n", str(N),
                      "--cases", str(CASES), *METHOD)
    assert result.returncode == 0, result.stderr[-3000:]
    return run, mine


@pytest.fixture
def copied(made, tmp_path):
    run, mine = made
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy, mine


def test_the_run_records_its_bundle_and_method(made, bundle):
    run, mine = made
    record = json.loads((run / RECORD_FILE).read_text())
    own = load_bundle(mine)
    assert own.manifest_sha256 != bundle.manifest_sha256  # really another bundle than the built-in one
    assert record["bundle"] == {"path": str(mine.resolve()), "manifest_sha256": own.manifest_sha256,
                                "model": "mine"}
    assert [p["name"] for p in record["method"]["properties"]] == ["eyes", "mouth"]
    assert record["method"]["ratio"] == 0.25


def test_report_without_bundle_draws_the_runs_own(copied, empty_cache):
    run, mine = copied
    (run / "report.md").unlink()
    result = call_job("jobs.report", "--run", str(run))
    assert result.returncode == 0, result.stderr[-3000:]
    text = (run / "report.md").read_text()
    assert "model mine," in text and "model synthetic" not in text
    assert not empty_cache.exists()  # the built-in model was never exported, let alone drawn


def test_test_and_gallery_and_editor_without_bundle_use_the_runs_own(copied, empty_cache):
    run, mine = copied
    result = call_job("jobs.test", "--run", str(run), "--cases", str(CASES + 2))  # new cases: real work
    assert result.returncode == 0, result.stderr[-3000:]
    test = read_metadata(run / "cases.parquet")["test"]
    assert test["bundle_manifest_sha256"] == load_bundle(mine).manifest_sha256
    assert [p["name"] for p in test["method"]["properties"]] == ["eyes", "mouth"]
    assert pq.read_table(run / "cases.parquet").num_rows == CASES + 2
    gallery = call_job("jobs.gallery", "--run", str(run), "--top", "2")
    assert gallery.returncode == 0, gallery.stderr[-3000:]
    # jobs.export --editor takes its bundle from here (the editor build itself is compute.editor's)
    assert run_bundle(run, None, default=False).manifest_sha256 == load_bundle(mine).manifest_sha256
    assert not empty_cache.exists()


def test_fit_reads_the_runs_method_and_reuses_without_starting_ray(copied, monkeypatch):
    import jobs.fit

    run, _ = copied
    started = []
    real = jobs.fit.init_ray
    monkeypatch.setattr(jobs.fit, "init_ray", lambda *a, **k: (started.append(a), real(*a, **k)))
    before = _files(run)
    result = call_job("jobs.fit", "--run", str(run))  # no flags: the run's own method, the same settings
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reusing" in result.stdout and started == [], result.stdout
    assert _files(run) == before

    result = call_job("jobs.fit", "--run", str(run), "--ratio", "0.3")  # a new fit: Ray is needed now
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(started) == 1 and "wrote" in result.stdout
    record = json.loads((run / RECORD_FILE).read_text())
    assert record["method"]["ratio"] == 0.3 and [p["name"] for p in record["method"]["properties"]] == \
        ["eyes", "mouth"]  # the run's method is now the refitted one, its properties kept


def test_fit_reuse_as_a_process_prints_no_ray_start(made):
    run, _ = made
    result = run_job("jobs.fit", "--run", str(run))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reusing" in result.stdout
    assert "Ray" not in result.stdout + result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize("job", ["report", "test", "gallery", "editor"])
def test_a_bundle_of_another_hash_is_refused_before_any_work(job, made, bundle_dir, tmp_path):
    run, mine = made
    args = {"report": ["jobs.report", "--run", str(run)],
            "test": ["jobs.test", "--run", str(run), "--cases", "9"],
            "gallery": ["jobs.gallery", "--run", str(run)],
            "editor": ["jobs.export", "--editor", str(run), "--out", str(tmp_path / "editor")]}[job]
    before = _files(run)
    line = _one_line_exit_2(call_job(*args, "--bundle", str(bundle_dir)), "another bundle", str(mine.resolve()))
    assert str(bundle_dir) in line
    assert _files(run) == before and not (tmp_path / "editor").exists()


def test_a_moved_bundle_asks_for_bundle_and_is_found_where_it_went(copied, bundle_dir, tmp_path, empty_cache):
    run, _ = copied
    old, new = tmp_path / "old", tmp_path / "elsewhere" / "new"
    _user_bundle(bundle_dir, old)
    record = json.loads((run / RECORD_FILE).read_text())
    record["bundle"]["path"] = str(old)
    (run / RECORD_FILE).write_text(json.dumps(record))
    new.parent.mkdir()
    shutil.move(old, new)  # the user moved their bundle

    for job in (["jobs.report", "--run", str(run)], ["jobs.test", "--run", str(run), "--cases", str(CASES)],
                ["jobs.gallery", "--run", str(run)]):
        _one_line_exit_2(call_job(*job), f"the bundle at {old}", "no longer there", "--bundle")
    result = call_job("jobs.report", "--run", str(run), "--bundle", str(new))  # the same hash, elsewhere
    assert result.returncode == 0, result.stderr[-3000:]
    result = call_job("jobs.test", "--run", str(run), "--cases", str(CASES), "--bundle", str(new))
    assert result.returncode == 0 and "reusing" in result.stdout, result.stderr[-3000:]
    assert json.loads((run / RECORD_FILE).read_text())["bundle"]["path"] == str(new.resolve())  # remembered
    assert call_job("jobs.report", "--run", str(run)).returncode == 0
    assert not empty_cache.exists()


def test_a_run_made_before_the_record_keeps_working(copied, bundle_dir, empty_cache):
    run, mine = copied
    (run / RECORD_FILE).unlink()
    # Its own files still say which bundle made it: no silent drawing through the built-in model.
    _one_line_exit_2(call_job("jobs.report", "--run", str(run)), "model mine", "--bundle DIR")
    _one_line_exit_2(call_job("jobs.test", "--run", str(run), "--cases", "9"), "model mine", "--bundle DIR")
    _one_line_exit_2(call_job("jobs.report", "--run", str(run), "--bundle", str(bundle_dir)), "another bundle")
    assert not empty_cache.exists()
    result = call_job("jobs.report", "--run", str(run), "--bundle", str(mine))
    assert result.returncode == 0, result.stderr[-3000:]
    # jobs.fit without a record: the seeds' default method, as before (three properties: a new fit)
    result = call_job("jobs.fit", "--run", str(run), "--ratio", "0.25")
    assert result.returncode == 0 and "recomputing" in result.stdout, result.stderr[-3000:]
    assert not (run / RECORD_FILE).exists()  # the fit gives a run without a record none


def test_the_main_job_again_without_bundle_reuses_the_run(copied, empty_cache):
    run, _ = copied
    result = call_job("jobs.vectorfind", "--out", str(run), "--n", str(N), "--cases", str(CASES), *METHOD)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("reusing") >= 3, result.stdout  # samples, vectors, cases
    assert not empty_cache.exists()
