"""A run's report and gallery say when a later stage rewrote the results they were drawn from,
and the jobs that only reuse a run's results start no Ray (issue 23). Real runs (a small run of the
main job, made once per session, copied per test), the session's real Ray, real files."""
from __future__ import annotations

import json
import re
import shlex
import shutil

import pyarrow.parquet as pq
import pytest

from compute.run_record import RECORD_FILE
from compute.staleness import BEGIN, END, mark_stale
from compute.tables import read_metadata
from conftest import call_job, run_job

N, CASES, SEED = 600, 8, 0
STALE_LINE = re.compile(r"^stale after (jobs\.\w+): (.*); refresh with: (.*)$")


@pytest.fixture(scope="module")
def finished(finished_run):
    """The session's run with these settings (shared with tests/test_hostile_writes.py): read only."""
    run, _ = finished_run(n=N, cases=CASES, ratio=0.3, seed=SEED)
    return run


@pytest.fixture
def run(finished, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def _stale_line(result):
    """The job's last stdout line, which must be its one stale line."""
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    found = STALE_LINE.match(last)
    assert found, result.stdout[-3000:]
    assert sum(line.startswith("stale after") for line in result.stdout.splitlines()) == 1
    return found.groups()


def _without_banner(text):
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[:start] + text[end:].removeprefix("\n\n" if text.startswith(BEGIN) else "\n")


def _passed(report):
    return re.search(r"Passed \([^)]*\): \*\*(\d+) / (\d+)\*\*", report).groups()


def test_a_new_test_marks_report_and_gallery_stale_until_they_are_drawn_again(run, monkeypatch):
    import jobs.test

    report, gallery = (run / "report.md").read_text(), (run / "gallery.html").read_text()
    assert BEGIN not in report and BEGIN not in gallery
    result = call_job("jobs.test", "--run", str(run), "--cases", str(CASES), "--space", "w:0-3")  # no --bundle
    job, named, commands = _stale_line(result)
    assert job == "jobs.test" and f"{run / 'report.md'}, {run / 'gallery.html'} (marked STALE)" == named
    assert commands == f"python -m jobs.report --run {run} && python -m jobs.gallery --run {run}"
    summary = json.loads((run / "summary.json").read_text())
    assert read_metadata(run / "cases.parquet")["test"]["method"]["space"] == "w:0-3"

    stale_report = (run / "report.md").read_text()
    assert stale_report.startswith(BEGIN) and "> **STALE:**" in stale_report and "jobs.test rewrote" in stale_report
    assert f"Refresh it with: `python -m jobs.report --run {run}`" in stale_report
    assert _without_banner(stale_report) == report  # the old report, whole, under its banner
    assert _passed(stale_report) == _passed(report)  # it still shows the old figures: hence the banner
    stale_gallery = (run / "gallery.html").read_text()
    assert stale_gallery.startswith("<!doctype html>")  # the banner does not break standards mode
    assert re.search(r"<body>\n" + re.escape(BEGIN) + r'<div id="vectorfind-stale" role="alert"', stale_gallery)
    assert _without_banner(stale_gallery) == gallery

    redrawn = call_job("jobs.report", "--run", str(run))
    assert redrawn.returncode == 0 and "stale" not in redrawn.stdout, redrawn.stderr[-3000:]
    fresh = (run / "report.md").read_text()
    assert BEGIN not in fresh and "STALE" not in fresh
    assert _passed(fresh) == (str(summary["passed"]), str(CASES)) and "w:0-3" in fresh
    assert BEGIN in (run / "gallery.html").read_text()  # still stale until drawn again
    assert call_job("jobs.gallery", "--run", str(run), "--top", "5").returncode == 0
    assert BEGIN not in (run / "gallery.html").read_text()

    # The same test again is reused whole: nothing goes stale, and Ray is not asked for. The run
    # remembers the method of its last test: no --space needed.
    assert json.loads((run / RECORD_FILE).read_text())["method"]["space"] == "w:0-3"
    started = []
    monkeypatch.setattr(jobs.test, "start", lambda args: started.append(args))
    again = call_job("jobs.test", "--run", str(run), "--cases", str(CASES))
    assert again.returncode == 0 and "reusing" in again.stdout, again.stderr[-3000:]
    assert started == [] and "stale" not in again.stdout and "wrote" not in again.stdout
    assert BEGIN not in (run / "report.md").read_text() + (run / "gallery.html").read_text()


def test_a_full_reuse_by_jobs_test_starts_no_ray(finished, tmp_path):
    """As a process: no Ray session directory is made under RAY_TMPDIR, no start-up line."""
    ray_tmp = tmp_path / "ray"
    result = run_job("jobs.test", "--run", str(finished), "--cases", str(CASES), "--seed", str(SEED),
                     env={"RAY_TMPDIR": str(ray_tmp)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reusing" in result.stdout and "passed" in result.stdout
    assert not ray_tmp.exists(), sorted(p.name for p in ray_tmp.iterdir())
    assert "Ray" not in result.stderr, result.stderr[-2000:]


def test_a_new_fit_names_the_test_as_stale_too(run):
    result = call_job("jobs.fit", "--run", str(run), "--ratio", "0.25")
    job, named, commands = _stale_line(result)
    assert job == "jobs.fit"
    assert named.startswith(f"the test results in {run / 'cases.parquet'} (made from other vectors than")
    assert named.endswith(f"{run / 'report.md'}, {run / 'gallery.html'} (marked STALE)")
    test = f"python -m jobs.test --run {run} --cases {CASES} --seed {SEED}"
    assert commands == f"{test} && python -m jobs.report --run {run} && python -m jobs.gallery --run {run}"
    assert f"Refresh it with: `{test} && python -m jobs.report --run {run}`" in (run / "report.md").read_text()
    # Another fit: stale again (new vectors, if only by their fit times), and one banner, not two.
    again = call_job("jobs.fit", "--run", str(run), "--ratio", "0.3")
    assert _stale_line(again)[0] == "jobs.fit"
    assert (run / "report.md").read_text().count(BEGIN) == 1


def test_the_main_job_draws_its_report_again_and_leaves_nothing_stale(run):
    assert call_job("jobs.test", "--run", str(run), "--cases", str(CASES + 1)).returncode == 0
    assert BEGIN in (run / "report.md").read_text()
    result = call_job("jobs.vectorfind", "--out", str(run), "--n", str(N), "--cases", str(CASES), "--ratio", "0.3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stale" not in result.stdout and "recomputing" in result.stdout  # the test ran again
    for name in ("report.md", "gallery.html"):
        assert BEGIN not in (run / name).read_text(), name
    assert _passed((run / "report.md").read_text())[1] == str(CASES)


def test_imported_vectors_mark_a_run_with_a_hostile_name(finished, bundle_dir, tmp_path):
    run = tmp_path / "run <b>&`x`|$y$"
    shutil.copytree(finished, run)
    csvs = tmp_path / "csvs"
    exported = call_job("jobs.fit", "--run", str(run), "--export-csv", str(csvs))  # a reuse: nothing stale
    assert exported.returncode == 0 and "stale" not in exported.stdout, exported.stderr[-3000:]
    result = call_job("jobs.import_vectors", "--csv-dir", str(csvs), "--out", str(run / "vectors.parquet"),
                      "--bundle", str(bundle_dir))
    job, named, _ = _stale_line(result)
    assert job == "jobs.import_vectors" and named.startswith("the test results in")
    page, report = (run / "gallery.html").read_text(), (run / "report.md").read_text()
    banner = page[page.index(BEGIN):page.index(END)]
    assert "run &lt;b&gt;&amp;`x`|$y$" in banner and "<b>" not in banner, banner
    banner = report[:report.index(END)]  # the command as a code span: literal, its backticks fenced off
    assert f"``python -m jobs.test --run {shlex.quote(str(run))} --cases {CASES}" in banner, banner
    # Vectors written outside any run touch nothing and take no lock there.
    other = tmp_path / "loose"
    other.mkdir()
    loose = call_job("jobs.import_vectors", "--csv-dir", str(csvs), "--out", str(other / "v.parquet"),
                     "--bundle", str(bundle_dir))
    assert loose.returncode == 0 and "stale" not in loose.stdout
    assert sorted(p.name for p in other.iterdir()) == ["v.parquet"]


def test_a_planted_link_is_named_not_read_through(tmp_path):
    victim, link = tmp_path / "victim.md", tmp_path / "report.md"
    victim.write_text("secret")
    link.symlink_to(victim)
    assert mark_stale(link, f"{BEGIN}x{END}\n") is False
    assert victim.read_text() == "secret" and link.is_symlink()


def test_jobs_sample_records_the_runs_bundle_for_the_jobs_after_it(ray_session, bundle_dir, tmp_path):
    """A user's own bundle (another hash than the built-in one): after jobs.sample the fit and
    the test find it with no --bundle, and a bundle of another hash is refused before any work."""
    mine = tmp_path / "mine"
    shutil.copytree(bundle_dir, mine)
    manifest = json.loads((mine / "manifest.json").read_text())
    (mine / "manifest.json").write_text(json.dumps(dict(manifest, model="mine"), indent=2))
    run = tmp_path / "run"
    result = call_job("jobs.sample", "--bundle", str(mine), "--out", str(run), "--n", str(N))
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((run / RECORD_FILE).read_text())
    from compute.bundle import load_bundle

    assert record["bundle"] == {"path": str(mine.resolve()), "manifest_sha256": load_bundle(mine).manifest_sha256,
                                "model": "mine"}
    assert record["method"] is None  # sampling has no method: the fit gives the run one
    assert call_job("jobs.fit", "--run", str(run), "--properties", "eyes,mouth").returncode == 0
    tested = call_job("jobs.test", "--run", str(run), "--cases", "4")
    assert tested.returncode == 0, tested.stderr[-3000:]
    assert read_metadata(run / "cases.parquet")["test"]["bundle_manifest_sha256"] == record["bundle"]["manifest_sha256"]
    assert pq.read_table(run / "cases.parquet").column_names[4:6] == ["corr_eyes", "corr_mouth"]
    refused = call_job("jobs.sample", "--bundle", str(bundle_dir), "--out", str(run), "--n", str(N))
    assert refused.returncode == 2 and "another bundle" in refused.stderr, refused.stderr


def _one_line_exit_2(result, *messages):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert all(m in lines[0] for m in messages), lines[0]


@pytest.mark.parametrize("job", ["editor", "sample", "vectorfind"])
def test_a_moved_or_another_bundle_is_caught_by_every_job_before_any_work(job, run, bundle_dir, tmp_path):
    """The jobs test_run_memory.py does not cover: the editor export with a moved bundle, and
    sampling and the main job (which go on with an existing run) with either."""
    args = {"editor": ["jobs.export", "--editor", str(run), "--out", str(tmp_path / "editor")],
            "sample": ["jobs.sample", "--out", str(run), "--n", str(N)],
            "vectorfind": ["jobs.vectorfind", "--out", str(run), "--n", str(N), "--cases", str(CASES)]}[job]
    other = tmp_path / "other"
    shutil.copytree(bundle_dir, other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps(dict(manifest, model="other")))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    _one_line_exit_2(call_job(*args, "--bundle", str(other)), "another bundle", str(bundle_dir.resolve()))
    record = json.loads((run / RECORD_FILE).read_text())
    record["bundle"]["path"] = str(tmp_path / "gone")
    (run / RECORD_FILE).write_text(json.dumps(record))
    before[run / RECORD_FILE] = (run / RECORD_FILE).read_bytes()
    _one_line_exit_2(call_job(*args), f"the bundle at {tmp_path / 'gone'}", "no longer there", "--bundle DIR")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "editor").exists()


def test_a_stage_that_fails_after_rewriting_results_still_marks(run, capsys):
    """As when the main job's test stage fails after its fit wrote new vectors: the report and
    gallery it would have drawn again at its end stay the old ones, marked."""
    from compute.staleness import watching_results

    with pytest.raises(RuntimeError, match="the test stage failed"), watching_results(run, "jobs.vectorfind"):
        (run / "vectors.parquet").write_bytes((run / "vectors.parquet").read_bytes() + b" ")
        raise RuntimeError("the test stage failed")
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"stale after jobs.vectorfind: the test results in {run / 'cases.parquet'}"), line
    assert all(BEGIN in (run / name).read_text() for name in ("report.md", "gallery.html"))
    assert not (run / ".vectorfind.lock").exists()  # the watch's lock is given back


def test_a_recorded_vectors_path_to_a_fifo_is_not_read(run, tmp_path):
    """The vectors path in cases.parquet's metadata is the file's word, not ours: a FIFO there
    (opening it would wait for a writer forever) is fingerprinted without being opened."""
    import os
    import threading

    from compute.staleness import fingerprint
    from compute.tables import with_metadata, write_parquet_atomic

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    meta = read_metadata(run / "cases.parquet")
    meta["test"]["vectors"] = str(fifo)
    write_parquet_atomic(with_metadata(pq.read_table(run / "cases.parquet"), meta), run / "cases.parquet")
    found = []
    worker = threading.Thread(target=lambda: found.append(fingerprint(run)), daemon=True)
    worker.start()
    worker.join(30)
    assert found and found[0][str(fifo)] == "not a regular file"


def test_fixed_medians_that_do_not_fit_stop_the_main_job_after_its_first_chunk(ray_session, bundle_dir, tmp_path):
    """The reference medians on a model they were not measured on: said after the first chunk,
    not after all of sampling and then with advice that does not help."""
    foreign = tmp_path / "foreign"
    shutil.copytree(bundle_dir, foreign)
    manifest = json.loads((foreign / "manifest.json").read_text())
    manifest["group_medians"] = {name: 1e6 for name in manifest["group_medians"]}  # above every score
    (foreign / "manifest.json").write_text(json.dumps(manifest))
    run = tmp_path / "run"
    result = call_job("jobs.vectorfind", "--bundle", str(foreign), "--out", str(run), "--n", "20000", "--cases", "4")
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert "do not fit this model" in line and "use --medians samples" in line, result.stderr[-2000:]
    chunks = list((run / "sample_chunks").glob("*.parquet"))
    assert 1 <= len(chunks) < 20 and not (run / "samples.parquet").exists()  # stopped early, work kept
