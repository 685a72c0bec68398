"""Hostile run directories (issue 22, items 2, 5, 12, 13 and 14): outputs planted as symlinks
to files elsewhere, hostile names in the report, leftovers of a killed driver, a second job
on a locked run directory, and a Ray cluster that goes away under a job.

Real files and real Ray throughout: the jobs run as a user runs them (in-process through
run_main, on the session's Ray instance), on the session's exported bundle. "Victims" are
files outside the run directory that planted symlinks point at: each must keep its sha256
and its mtime, and the run's file at the symlink's name must become a regular file with the
job's own content.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from compute.files import atomic_file, atomic_path, remove_leftovers, write_bytes_atomic, write_text_atomic
from compute.runlock import LOCK_FILE
from conftest import JobOnly, call_job

N, SEED, CASES, RATIO = 600, 3, 4, "0.3"
PNG = b"\x89PNG\r\n\x1a\n"


def _parquet(path, rows=None):
    table = pq.read_table(path)
    assert rows is None or table.num_rows == rows, (path, table.num_rows)
    return True


def _json(path):
    summary = json.loads(path.read_text())
    return summary["cases"] == CASES and "passed" in summary


# Every output of a run, and how its own content is recognised.
OUTPUTS = {
    "report.md": lambda p: "## Results" in p.read_text() and "![edits](edits.png)" in p.read_text(),
    "correlations.png": lambda p: p.read_bytes().startswith(PNG),
    "passes_per_group.png": lambda p: p.read_bytes().startswith(PNG),
    "edits.png": lambda p: p.read_bytes().startswith(PNG),
    "gallery.html": lambda p: p.read_text().startswith("<!doctype html>"),
    "summary.json": _json,
    "vectors.parquet": lambda p: _parquet(p, 24),
    "cases.parquet": lambda p: _parquet(p, CASES),
    "passed.parquet": _parquet,
    "passed.csv": lambda p: p.read_text().startswith('"case_id"'),
}
# The fixed temporary names older versions wrote through: now only leftovers to clear.
OLD_TEMP_NAMES = [".gallery.html.partial", ".summary.json.partial", ".passed.csv.partial", ".report.md.partial"]


def _snapshot(paths):
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in paths}


def _plant(run, outside, names):
    """A symlink in RUN for each name, to a victim file of its own outside RUN."""
    outside.mkdir(exist_ok=True)
    victims = []
    for name in names:
        victim = outside / f"victim-{name.lstrip('.')}"
        victim.write_bytes(f"victim of {name}: must survive\n".encode())
        (run / name).unlink(missing_ok=True)
        (run / name).symlink_to(victim)
        victims.append(victim)
    return victims


def _one_line(result, code, message):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    return lines[0]


# ---- the helper itself ---------------------------------------------------------------------

@pytest.mark.parametrize("write", [
    lambda p: write_bytes_atomic(p, b"new bytes"),
    lambda p: write_text_atomic(p, "new bytes"),
    lambda p: _with_file(p),
    lambda p: _with_path(p),
], ids=["bytes", "text", "file object", "path"])
def test_the_helper_replaces_a_symlink_and_never_writes_through_it(tmp_path, write):
    victim = tmp_path / "victim"
    victim.write_bytes(b"victim")
    before = _snapshot([victim])
    target = tmp_path / "run" / "out.bin"
    target.parent.mkdir()
    target.symlink_to(victim)
    write(target)
    assert not target.is_symlink() and target.read_bytes() == b"new bytes"
    assert _snapshot([victim]) == before
    assert os.listdir(target.parent) == ["out.bin"]  # no temporary file left
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _with_file(p):
    with atomic_file(p, "wb") as f:
        f.write(b"new bytes")


def _with_path(p):
    with atomic_path(p) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"new bytes")


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_failed_write_leaves_the_target_and_no_temporary_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(target, "w") as f:
            f.write("half")
            raise RuntimeError("writer died")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]


def test_leftover_cleanup_removes_links_never_their_targets(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("victim")
    before = _snapshot([victim])
    run = tmp_path / "run"
    run.mkdir()
    (run / ".a.parquet.x1y2.partial").write_bytes(b"half")
    (run / ".b.partial").symlink_to(victim)
    (run / ".dir.partial").mkdir()            # not a file of ours: left alone
    (run / "keep.partial").write_text("x")     # not hidden: not a temporary name of ours
    assert sorted(remove_leftovers(run)) == [".a.parquet.x1y2.partial", ".b.partial"]
    assert sorted(os.listdir(run)) == [".dir.partial", "keep.partial"] and _snapshot([victim]) == before


# ---- item 2: symlinked outputs, through the main job and then the stage jobs --------------

def test_planted_symlinks_are_replaced_not_written_through(ray_session, bundle_dir, tmp_path):
    run, outside = tmp_path / "run", tmp_path / "outside"
    run.mkdir()
    victims = _plant(run, outside, [*OUTPUTS, *OLD_TEMP_NAMES])
    (run / "sample_chunks").mkdir()  # a chunk linked to a victim, and a dangling link at samples.parquet
    victims += _plant(run / "sample_chunks", outside, ["000000.parquet"])
    (run / "samples.parquet").symlink_to(outside / "nowhere")
    before = _snapshot(victims)
    method = ["--ratio", RATIO]
    result = call_job("jobs.vectorfind", "--bundle", str(bundle_dir), "--out", str(run), "--n", str(N),
                      "--seed", str(SEED), "--cases", str(CASES), *method)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _snapshot(victims) == before
    for name, own in OUTPUTS.items():
        assert not (run / name).is_symlink() and (run / name).is_file() and own(run / name), name
    for name in OLD_TEMP_NAMES:  # stale temporary names: cleared (the link, never its target)
        assert not os.path.lexists(run / name), name
    assert not (run / "samples.parquet").is_symlink() and pq.read_table(run / "samples.parquet").num_rows == N
    assert not os.path.lexists(outside / "nowhere")
    assert not os.path.lexists(run / LOCK_FILE)

    # The stage jobs that rewrite the same files, each on fresh symlinks.
    stages = [
        (["vectors.parquet"], ["jobs.fit", "--run", str(run), "--seed", str(SEED), *method]),
        (["cases.parquet", "summary.json", "passed.parquet", "passed.csv"],
         ["jobs.test", "--run", str(run), "--bundle", str(bundle_dir), "--cases", str(CASES), "--seed", str(SEED),
          *method]),
        (["report.md", "correlations.png", "passes_per_group.png", "edits.png"],
         ["jobs.report", "--run", str(run), "--bundle", str(bundle_dir)]),
        (["gallery.html"], ["jobs.gallery", "--run", str(run), "--bundle", str(bundle_dir)]),
    ]
    for names, args in stages:
        victims = _plant(run, outside / args[0], names)
        before = _snapshot(victims)
        result = call_job(*args)
        assert result.returncode == 0, (args[0], result.stderr[-3000:])
        assert _snapshot(victims) == before, args[0]
        for name in names:
            assert not (run / name).is_symlink() and OUTPUTS[name](run / name), (args[0], name)
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []


def test_a_samples_link_to_a_foreign_file_is_refused_untouched(bundle_dir, tmp_path):
    run, victim = tmp_path / "run", tmp_path / "victim.parquet"
    run.mkdir()
    victim.write_bytes(b"not a samples table")
    before = _snapshot([victim])
    (run / "samples.parquet").symlink_to(victim)
    _one_line(call_job("jobs.sample", "--out", str(run), "--n", str(N), "--bundle", str(bundle_dir)), 2,
              "is damaged")
    assert _snapshot([victim]) == before and (run / "samples.parquet").is_symlink()


# ---- item 5: hostile names in the report ---------------------------------------------------

HOSTILE = ["<script>alert(1)</script>", "<img onerror=x>", "a|b", "$x$", "`code`", "[link](http://x)"]


def test_hostile_names_are_escaped_in_markdown_and_drawn_literally(tmp_path):
    from compute.report import correlation_histograms, group_table, passes_per_group, report_heading, results_table

    rng = np.random.default_rng(0)
    cases = pa.table({f"corr_{p}": pa.array(rng.uniform(-1, 1, 20), pa.float32()) for p in HOSTILE})
    groups = ["h<b>", "l|$y$"]
    summary = {"cases": 20, "edits_per_case": 10, "n_samples": 600, "ratio": 0.3,
               "mean_corr": dict.fromkeys(HOSTILE, 0.5), "mean_abs_corr": dict.fromkeys(HOSTILE, 0.6),
               "cutoffs": dict.fromkeys(HOSTILE, 0.9), "per_group": {g: {"cases": 10, "passed": 3} for g in groups}}
    vectors = pa.table({"group": [g for g in groups for _ in HOSTILE], "property": HOSTILE * 2,
                        "val_accuracy": [0.9] * (2 * len(HOSTILE)), "group_size": [300] * (2 * len(HOSTILE))})
    # The figures: mathtext would raise on "$x$"-style names or draw something else.
    correlation_histograms(cases, HOSTILE, tmp_path / "correlations.png")
    passes_per_group(summary, groups, ["$a$", "<b>"], tmp_path / "passes_per_group.png")
    for png in ("correlations.png", "passes_per_group.png"):
        assert (tmp_path / png).read_bytes().startswith(PNG)
    lines = [*report_heading("<run>|x", "w", "w", "<model>`m`", summary, ["$a$", "<b>"], groups),
             *results_table(HOSTILE, {}, dict.fromkeys(HOSTILE, 0.99), summary),
             *group_table(vectors, summary, HOSTILE, groups)]
    text = "\n".join(lines)
    for raw in ("<script", "<img", "<b>", "<run>", "<model>", "$x$", "`code`", "[link]"):
        assert raw not in text, raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "&lt;img onerror=x&gt;" in text
    assert r"| a\|b |" in text and r"\$x\$" in text
    # Every table row keeps its column count: no name adds a cell.
    for table in (results_table(HOSTILE, {}, dict.fromkeys(HOSTILE, 0.99), summary),
                  group_table(vectors, summary, HOSTILE, groups)):
        widths = {row.replace("\\|", "").count("|") for row in table}
        assert len(widths) == 1, table


def test_hostile_names_in_grid_report(tmp_path):
    from compute.grid_report import write_grid_md

    props = ["$x$", "a|b", "<script>"]
    row = {"space": "w", "estimator": "svm", "n": 600, "ratio": 0.3, "cases": 4, "passed": 1,
           "sum_mean_abs_corr": 1.5, "consistency": 0.1, "fit_seconds": 1.0, "fits_not_converged": 2}
    for p in props:
        row |= {f"svm_acc_{p}": 0.9, f"stability_{p}": 0.95, f"mean_abs_corr_{p}": 0.5, f"negative_corr_{p}": 1}
    rows = [dict(row, ratio=r) for r in (0.2, 0.3)]
    path = write_grid_md(pa.Table.from_pylist(rows), tmp_path, props)
    text = path.read_text()
    assert "<script>" not in text and "&lt;script&gt;" in text and r"a\|b" in text
    assert (tmp_path / "grid_w_per_property.png").read_bytes().startswith(PNG)


# ---- item 12: leftovers of a killed driver ---------------------------------------------------

def test_leftovers_of_a_killed_driver_do_not_block_the_rerun(ray_session, bundle_dir, tmp_path):
    run, outside = tmp_path / "run", tmp_path / "outside"
    args = ["jobs.sample", "--out", str(run), "--n", str(N), "--seed", str(SEED), "--chunk-size", "200",
            "--bundle", str(bundle_dir)]
    assert call_job(*args).returncode == 0
    # What a driver killed during the last chunk's write leaves: the finished chunks, the
    # half-written chunk's temporary file (old fixed name and new random one), temporary
    # files of other outputs in the run directory, one of them a symlink to a victim.
    chunks = run / "sample_chunks"
    os.replace(run / "samples.parquet", chunks)
    (chunks / "000002.parquet").unlink()
    (chunks / ".000002.parquet.k3j4x9.partial").write_bytes(b"PAR1 half a chunk")
    (chunks / ".000002.parquet.partial").write_bytes(b"PAR1 half a chunk")
    (run / ".summary.json.partial").write_text("{")
    (run / ".report.md.a1b2c3.partial").write_text("# half")
    outside.mkdir()
    victim = outside / "victim"
    victim.write_text("victim")
    before = _snapshot([victim])
    (run / ".cases.parquet.zz.partial").symlink_to(victim)
    (chunks / ".not-ours.partial").mkdir()  # a hidden directory is no file of ours: kept, and no obstacle

    result = call_job(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "200 computed, 400 reused" in result.stdout, result.stdout
    assert sorted(p.name for p in (run / "samples.parquet").iterdir()) == \
        [".not-ours.partial", *(f"{c:06d}.parquet" for c in range(3))]
    assert pq.read_table(run / "samples.parquet").num_rows == N
    # the samples and the run's record of its bundle (jobs.sample writes it: the later jobs find it there)
    assert sorted(p.name for p in run.iterdir()) == ["run.json", "samples.parquet"]
    assert json.loads((run / "run.json").read_text())["bundle"]["path"] == str(bundle_dir.resolve())
    assert _snapshot([victim]) == before
    again = call_job(*args)
    assert again.returncode == 0 and "reusing" in again.stdout, again.stderr[-3000:]


# ---- item 13: one job at a time in a run directory -------------------------------------------

# The lock tests' run: the session's finished run with these settings (shared with
# tests/test_run_freshness.py), copied per test; each job below is given the run's own settings.
LOCKED = {"n": 600, "seed": 0, "cases": 8, "ratio": 0.3}


@pytest.fixture(scope="module")
def tested_run(finished_run):
    run, _ = finished_run(**LOCKED)
    return run


def _jobs(run, bundle_dir):
    common = ["--bundle", str(bundle_dir)]
    n, seed, cases, ratio = (str(LOCKED[k]) for k in ("n", "seed", "cases", "ratio"))
    return {
        "sample": ["jobs.sample", "--out", str(run), "--n", n, "--seed", seed, *common],
        "fit": ["jobs.fit", "--run", str(run), "--seed", seed, "--ratio", ratio],
        "test": ["jobs.test", "--run", str(run), "--cases", cases, "--seed", seed, "--ratio", ratio, *common],
        "report": ["jobs.report", "--run", str(run), *common],
        "gallery": ["jobs.gallery", "--run", str(run), *common],
        "vectorfind": ["jobs.vectorfind", "--out", str(run), "--n", n, "--seed", seed, "--cases", cases,
                       "--ratio", ratio, *common],
    }


def _write_lock(run, pid, host=None):
    (run / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                             "job": "jobs.sample", "started": 1.0e9}))


@pytest.mark.parametrize("job", ["sample", "fit", "test", "report", "gallery", "vectorfind"])
def test_a_live_holder_refuses_a_second_job(job, tested_run, bundle_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tested_run, run)
    files = _snapshot(p for p in run.rglob("*") if p.is_file())
    _write_lock(run, os.getpid())  # a live process on this host: this test's own
    line = _one_line(call_job(*_jobs(run, bundle_dir)[job]), 2, f"pid {os.getpid()} on {socket.gethostname()}")
    assert "in use by another job" in line
    lock = json.loads((run / LOCK_FILE).read_text())
    assert lock["pid"] == os.getpid()  # the holder's lock is left to the holder
    (run / LOCK_FILE).unlink()
    assert _snapshot(p for p in run.rglob("*") if p.is_file()) == files  # nothing written


def test_a_lock_from_another_host_is_refused_and_says_how_to_clear_it(tested_run, bundle_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tested_run, run)
    _write_lock(run, 1, host="elsewhere.example")
    line = _one_line(call_job(*_jobs(run, bundle_dir)["report"]), 2, "pid 1 on elsewhere.example")
    assert f"delete {run / LOCK_FILE}" in line


def test_a_stale_lock_is_taken_over(tested_run, bundle_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tested_run, run)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)  # that process has exited: its pid is no longer alive
    _write_lock(run, dead)
    for job in ("sample", "report"):
        result = call_job(*_jobs(run, bundle_dir)[job])
        assert result.returncode == 0, result.stderr[-3000:]
        if job == "sample":
            assert f"taking over the lock of {run}" in result.stdout and f"pid {dead}" in result.stdout
        assert not os.path.lexists(run / LOCK_FILE)


def test_an_unreadable_lock_is_refused_with_its_path(tested_run, bundle_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tested_run, run)
    (run / LOCK_FILE).write_text("not json")
    os.utime(run / LOCK_FILE, (time.time() - 120, time.time() - 120))
    line = _one_line(call_job(*_jobs(run, bundle_dir)["sample"]), 2, f"delete {run / LOCK_FILE}")
    assert re.search(r"\((12\d) s old\)", line), line  # its age, from the file's time


def test_the_lock_is_released_when_the_job_fails(tested_run, bundle_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tested_run, run)
    (run / "cases.parquet").write_bytes(b"PAR1 damaged")
    (run / "summary.json").unlink()
    _one_line(call_job(*_jobs(run, bundle_dir)["report"]), 2, "summary.json")
    assert not os.path.lexists(run / LOCK_FILE)


# ---- item 14: the cluster going away ----------------------------------------------------------

def _lost_cluster_errors():
    import ray.exceptions as rex

    worker = rex.WorkerCrashedError()
    return {
        "RaySystemError": rex.RaySystemError("raylet connection closed"),
        "LocalRayletDiedError": rex.LocalRayletDiedError(),
        "NodeDiedError": rex.NodeDiedError("node 127.0.0.1 died"),
        "ActorDiedError": rex.ActorDiedError(),
        "RayActorError": rex.RayActorError(),
        "ActorUnavailableError": rex.ActorUnavailableError("unreachable", b"\0" * 16),
        "WorkerCrashedError": worker,
        "ObjectLostError": rex.ObjectLostError("ab" * 14, None, ""),
        "OwnerDiedError": rex.OwnerDiedError("ab" * 14, None, ""),
        "RayTaskError(WorkerCrashedError)": rex.RayTaskError("sample", "tb", worker).as_instanceof_cause(),
        "chained NodeDiedError": RuntimeError("Ray Data failed"),
    }


@pytest.mark.parametrize("name", list(_lost_cluster_errors()))
def test_a_lost_cluster_is_one_line_exit_2(name, ray_session, monkeypatch):
    """run_main disconnects from Ray before it exits; a recorder stands in for ray.shutdown,
    so the session's instance (log forwarding off) lives on for the tests after this one,
    which a real shutdown left to a Ray that ray.data started on its own (forwarding on)."""
    from jobs.cli import run_main

    stops = []
    monkeypatch.setattr(ray_session, "shutdown", lambda: stops.append(name))

    def main(argv):
        error = _lost_cluster_errors()[name]
        if name.startswith("chained"):
            import ray.exceptions as rex

            raise error from rex.NodeDiedError("node died")
        raise error

    err = io.StringIO()
    with pytest.raises(SystemExit) as exit_info, _redirect_stderr(err):
        run_main(main, [])
    assert exit_info.value.code == 2
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the Ray cluster lost "), lines
    assert lines[0].endswith("finished stages and sample chunks are kept; rerun the same command to resume")
    assert stops == [name]


def test_other_errors_keep_their_traceback():
    import ray.exceptions as rex

    from jobs.cli import run_main

    for error in (ValueError("a bug"), rex.RayTaskError("fit", "tb", ZeroDivisionError("a bug in a task"))):
        def main(argv, error=error):
            raise error

        with pytest.raises(type(error)):
            run_main(main, [])


def _redirect_stderr(stream):
    """stderr into `stream`, but for the lines the session's Ray forwards (conftest.JobOnly)."""
    import contextlib

    return contextlib.redirect_stderr(JobOnly(stream, sys.stderr))


def _descendants(pid):
    rows = [line.split(None, 2) for line in subprocess.run(["ps", "-e", "-o", "pid=,ppid=,comm="], capture_output=True,
                                                            text=True).stdout.splitlines() if line.strip()]
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for child, ppid, name in rows:
            if int(ppid) == parent:
                found.append((int(child), name))
                todo.append(int(child))
    return found


def test_a_killed_raylet_is_one_line_exit_2_and_the_rerun_resumes(bundle_dir, tmp_path):
    """The real thing: a job's own local Ray instance loses its raylet (SIGKILL) mid-sampling."""
    import signal

    from conftest import REPO, run_job

    run, n = tmp_path / "run", 3000  # 6 chunks: the raylet dies with 4 or 5 still to come
    args = ["jobs.sample", "--out", str(run), "--n", str(n), "--chunk-size", "500", "--seed", str(SEED),
            "--bundle", str(bundle_dir), "--num-cpus", "2"]
    job = subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"))
    try:
        for line in job.stdout:  # the first chunk is on disk: the run is resumable from here
            if line.startswith("chunk 1/"):
                break
        raylets = [pid for pid, name in _descendants(job.pid) if "raylet" in name]
        assert len(raylets) == 1, _descendants(job.pid)
        os.kill(raylets[0], signal.SIGKILL)
        _, err = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()
    lines = err.strip().splitlines()
    assert job.returncode == 2, err[-3000:]
    assert "Traceback" not in err and [line for line in lines if line.startswith("error:")] == lines[-1:], err[-3000:]
    assert lines[-1].startswith("error: the Ray cluster lost its local raylet")
    assert lines[-1].endswith("rerun the same command to resume")
    kept = sorted((run / "sample_chunks").glob("*.parquet"))
    assert kept, "the finished chunks are kept"
    rerun = run_job(*args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    # Actors write their own chunks, and one orphaned by the dead raylet may finish a chunk after
    # the driver has exited: at least the chunks seen then are reused, and nothing is computed twice.
    found = re.search(r"\(([\d,]+) computed, ([\d,]+) reused\)", rerun.stdout)
    assert found, rerun.stdout[-2000:]
    computed, reused = (int(x.replace(",", "")) for x in found.groups())
    assert computed + reused == n and reused >= 500 * len(kept), rerun.stdout[-2000:]
    assert pq.read_table(run / "samples.parquet").num_rows == n
    assert not os.path.lexists(run / LOCK_FILE)


def test_a_stage_on_a_missing_run_directory_creates_nothing(bundle_dir, tmp_path):
    missing = tmp_path / "no-such-run"
    _one_line(call_job("jobs.report", "--run", str(missing), "--bundle", str(bundle_dir)), 2, "cases.parquet")
    assert not missing.exists()
