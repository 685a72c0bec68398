"""Hostile input, one table per job family: each case is exit 2 (130 for Ctrl-C), one line on
stderr naming the problem and the fix, no traceback, and nothing left in the run directory
that a later run would mistake for a result. Real files, real Ray where the bug needs it."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, call_job

from compute.resources import Resources
from compute.sampling import sample_table
from vectors.interop import reference_csv_name, write_reference_csv
from vectors.method import Method

N, SEED = 600, 5


def _one_line_exit_2(result, message):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert message in lines[0], lines[0]


@pytest.fixture(scope="module")
def sampled(ray_session, bundle, tmp_path_factory):
    run = tmp_path_factory.mktemp("sampled")
    sample_table(bundle, N, SEED, run, resources=Resources(2, 0.5, 0.0, 1), chunk_size=200, progress=False)
    return run


def _copy_run(sampled, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(sampled, run)
    return run


def _truncate(path):
    """Cut a file in half; for a samples dataset directory, its first part."""
    if path.is_dir():
        path = sorted(path.glob("*.parquet"))[0]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ---- sampling: bad arguments and damaged run directories ---------------------------------
def _huge_n(tmp, sampled):
    return ["--n", "99999999999999999999"], "need about"


def _num_cpus_zero(tmp, sampled):
    return ["--num-cpus", "0"], "--num-cpus must be > 0"


def _too_many_actors(tmp, sampled):
    return ["--num-cpus", "2", "--actors", "3", "--cpus-per-actor", "0.5"], "leave Ray Data less than"


def _huge_seed(tmp, sampled):
    return ["--seed", str(2**64)], "seed must be an integer in [0, 2**63)"


def _zero_batch_size(tmp, sampled):
    return ["--batch-size", "0"], "--batch-size must be >= 1"


def _unwritable_out(tmp, sampled):
    return ["--out", "/proc/vectorfind-run"], "cannot write"


def _truncated_samples(tmp, sampled):
    run = _copy_run(sampled, tmp)
    _truncate(run / "samples.parquet")
    return ["--out", str(run)], "is damaged"


def _samples_of_another_run_without_sampling_json(tmp, sampled):
    run = _copy_run(sampled, tmp)
    (run / "sampling.json").unlink(missing_ok=True)
    return ["--out", str(run), "--n", str(N + 1)], "holds samples of another run"


@pytest.mark.parametrize("case", [_huge_n, _num_cpus_zero, _too_many_actors, _huge_seed, _zero_batch_size,
                                  _unwritable_out,
                                  _truncated_samples, _samples_of_another_run_without_sampling_json])
def test_sampling_refuses(case, sampled, bundle_dir, tmp_path):
    extra, message = case(tmp_path, sampled)
    args = ["jobs.sample", "--bundle", str(bundle_dir), "--out", str(tmp_path / "fresh"), "--n", str(N),
            "--seed", str(SEED), "--chunk-size", "200", *extra]
    result = call_job(*args)
    _one_line_exit_2(result, message)
    assert "Started a local Ray instance" not in result.stderr  # refused before Ray starts
    assert not (tmp_path / "fresh" / "samples.parquet").exists()


def test_a_damaged_chunk_is_recomputed_not_trusted(sampled, bundle, tmp_path, ray_session):
    reference = pq.read_table(sampled / "samples.parquet")
    run = tmp_path / "run"
    chunks = run / "sample_chunks"
    chunks.mkdir(parents=True)
    for c in range(3):  # as an interrupted run would leave them, one of them damaged
        pq.write_table(reference.slice(200 * c, 200).replace_schema_metadata(reference.schema.metadata),
                       chunks / f"{c:06d}.parquet")
    _truncate(chunks / "000001.parquet")
    table = sample_table(bundle, N, SEED, run, resources=Resources(2, 0.5, 0.0, 1), chunk_size=200, progress=False)
    assert table["z"].equals(reference["z"])


def fill_pipe(read_end: int) -> None:
    """Fill the buffer of the pipe whose read end is `read_end`: the next write to it blocks until
    the reader reads. The filler writes through its own non-blocking open of the pipe, so the
    writer's end stays blocking."""
    filler = os.open(f"/proc/self/fd/{read_end}", os.O_WRONLY | os.O_NONBLOCK)
    try:
        while True:
            os.write(filler, b"#" * 4096)
    except BlockingIOError:
        pass
    os.close(filler)


def _full_pipe() -> tuple[int, int]:
    """A pipe whose buffer is already full: the first write to it blocks until the reader reads."""
    read_end, write_end = os.pipe()
    fill_pipe(read_end)
    return read_end, write_end


def _group_ends(pgid: int, within: float) -> bool:
    """Whether the job's process group (the job, its raylet, GCS and workers) is gone in time.
    Ray's dashboard and runtime-env agents are left out: they poll for their raylet and leave
    on their own about two minutes later, after ray.shutdown() as well."""
    deadline = time.time() + within
    while time.time() < deadline:
        if not _live_members(pgid):
            return True
        time.sleep(0.2)
    return False


def _live_members(pgid: int) -> list[str]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue  # ended while we looked
        if int(fields[2]) == pgid and fields[0] != "Z" and not cmdline.startswith(
                ("ray::DashboardAgent", "ray::RuntimeEnvAgent")):
            members.append(cmdline)
    return members


def test_ctrl_c_is_one_line_exit_130_and_the_rerun_resumes(bundle_dir, tmp_path, ray_session):
    """Deterministic, whatever the machine's speed: the job's stdout is a full pipe, so its first
    progress line, printed once chunk 0 is on disk, blocks the driver there until Ctrl-C arrives,
    and the table is never committed. (Sending the signal when a chunk file appeared raced the
    job: on a fast machine the driver wrote every chunk and samples.parquet before the signal
    reached it.) The actors go on writing chunks meanwhile; the signal is sent once all are
    written, when Ray Data's threads are winding down: stopping Ray then once ended the job
    with status 1 from Ray's C++ core instead of 130."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "jobs.sample", "--bundle", str(bundle_dir), "--out", str(run), "--n", "10000",
           "--seed", "3", "--chunk-size", "500"]
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    read_end, write_end = _full_pipe()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=write_end, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    os.close(write_end)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not any((run / "sample_chunks").glob("*.parquet")):
        time.sleep(0.2)
    assert proc.poll() is None, "the job ended before writing its first chunk"
    assert any((run / "sample_chunks").glob("*.parquet")), "no chunk written within 240 s"
    # The actors write their own chunks and go on while the driver is blocked: wait until they
    # have written all 20, the state a fast machine reaches before any signal could (then Ray
    # Data's executor has finished, and stopping Ray must not trip over it).
    while time.time() < deadline and len(list((run / "sample_chunks").glob("0*.parquet"))) < 20:
        time.sleep(0.2)
    time.sleep(1.0)
    assert proc.poll() is None and not (run / "samples.parquet").exists()
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground process group
    stdout = os.fdopen(read_end, "rb")  # drained so the blocked driver can go on to exit
    drain = threading.Thread(target=stdout.read, daemon=True)
    drain.start()
    _, err = proc.communicate(timeout=120)
    drain.join(timeout=10)
    stdout.close()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("interrupted"), err[-2000:]
    assert not (run / "samples.parquet").exists()
    assert _group_ends(proc.pid, within=30), "the job's local Ray instance outlived the interrupted job"
    again = call_job("jobs.sample", "--bundle", str(bundle_dir), "--out", str(run), "--n", "10000", "--seed", "3",
                     "--chunk-size", "500")  # in-process: the session's Ray, no new instance to start
    assert again.returncode == 0, again.stderr[-2000:]
    reused = int(again.stdout.split(" reused)")[0].rsplit(", ", 1)[1].replace(",", ""))
    assert reused >= 500 and pq.read_table(run / "samples.parquet").num_rows == 10000, again.stdout


# ---- fitting, testing, report, recheck: damaged or mismatched results ---------------------
@pytest.fixture(scope="module")
def tested(sampled, bundle_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("tested") / "run"
    shutil.copytree(sampled, run)
    for job in (["jobs.fit", "--run", str(run), "--ratio", "0.3"],
                ["jobs.test", "--run", str(run), "--cases", "6", "--bundle", str(bundle_dir)]):
        result = call_job(*job)
        assert result.returncode == 0, result.stderr[-2000:]
    return run


def _fit_on_truncated_samples(run, tmp):
    _truncate(run / "samples.parquet")
    return ["jobs.fit", "--run", str(run)], "not a readable samples table"


def _report_of_a_copied_run_without_its_vectors(run, tmp):
    (run / "vectors.parquet").unlink()
    return ["jobs.report", "--run", str(run)], "no vectors at"


def _report_on_truncated_cases(run, tmp):
    _truncate(run / "cases.parquet")
    return ["jobs.report", "--run", str(run)], "are damaged"


def _recheck_of_truncated_cases(run, tmp):
    _truncate(run / "cases.parquet")
    return ["jobs.recheck", "--run", str(run)], "not a readable cases table"


def _recheck_nan_max_spread(run, tmp):
    return ["jobs.recheck", "--run", str(run), "--max-spread", "nan"], "max_spread must be a number >= 0"


def _recheck_negative_max_spread(run, tmp):
    return ["jobs.recheck", "--run", str(run), "--max-spread", "-1"], "max_spread must be a number >= 0"


def _reference_csv(tmp, rows):
    path = tmp / "test_result.csv"
    header = "case,vector_no,passed,group_name,eyes_corr,mouth_corr,pose_corr,sum_abs_corr\n"
    path.write_text(header + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def _recheck_unknown_group(run, tmp):
    path = _reference_csv(tmp, [(0, 0, "O", "hhh", -0.95, -0.9, -0.95, 2.8), (1, 0, "X", "zzz", -0.1, 0.2, 0.3, 0.6)])
    return ["jobs.recheck", "--reference-csv", str(path)], "group(s) zzz are not among the method's groups"


def _recheck_corr_above_one(run, tmp):
    path = _reference_csv(tmp, [(0, 0, "O", "hhh", -1.5, -0.9, -0.95, 3.35)])
    return ["jobs.recheck", "--reference-csv", str(path)], "values outside [-1, 1]"


def _recheck_non_numeric_corr(run, tmp):
    path = _reference_csv(tmp, [(0, 0, "O", "hhh", "high", -0.9, -0.95, 2.8)])
    return ["jobs.recheck", "--reference-csv", str(path)], "non-numeric"


@pytest.mark.parametrize("case", [_fit_on_truncated_samples, _report_of_a_copied_run_without_its_vectors,
                                  _report_on_truncated_cases, _recheck_of_truncated_cases, _recheck_nan_max_spread,
                                  _recheck_negative_max_spread, _recheck_unknown_group, _recheck_corr_above_one,
                                  _recheck_non_numeric_corr])
def test_stored_results_refuse(case, tested, bundle_dir, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(tested, run)
    args, message = case(run, tmp_path)
    if args[0] == "jobs.report":
        args = [*args, "--bundle", str(bundle_dir)]
    _one_line_exit_2(call_job(*args), message)


def test_a_damaged_cases_file_is_recomputed_by_the_test(tested, bundle_dir, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(tested, run)
    summary = json.loads((run / "summary.json").read_text())
    _truncate(run / "cases.parquet")
    result = call_job("jobs.test", "--run", str(run), "--cases", "6", "--bundle", str(bundle_dir))
    assert result.returncode == 0 and "recomputing" in result.stdout, result.stderr[-2000:]
    assert json.loads((run / "summary.json").read_text())["passed"] == summary["passed"]


# ---- importing vectors --------------------------------------------------------------------
def _write_csvs(directory, make):
    directory.mkdir()
    rng = np.random.default_rng(0)
    for g in Method().group_names:
        for p in Method().property_names:
            write_reference_csv(make(rng, g, p), directory / reference_csv_name(p, "w", g))


@pytest.mark.parametrize("make, message", [
    (lambda rng, g, p: np.zeros(512) if (g, p) == ("hlh", "mouth") else rng.standard_normal(512), "all-zero"),
    (lambda rng, g, p: rng.standard_normal(300), "300 dims, but this bundle's w has 512"),
])
def test_import_checks_norm_and_dimension(tmp_path, bundle_dir, make, message):
    _write_csvs(tmp_path / "csv", make)
    result = call_job("jobs.import_vectors", "--csv-dir", str(tmp_path / "csv"), "--out", str(tmp_path / "v.parquet"),
                     "--bundle", str(bundle_dir))
    _one_line_exit_2(result, message)
    assert not (tmp_path / "v.parquet").exists()


def test_import_refuses_non_numeric_entries(tmp_path, bundle_dir):
    _write_csvs(tmp_path / "csv", lambda rng, g, p: rng.standard_normal(512))
    path = tmp_path / "csv" / reference_csv_name("eyes", "w", "hhh")
    header, row = path.read_text().splitlines()
    values = row.split(",")
    values[3] = "abc"  # one entry of the data row
    path.write_text(f"{header}\n{','.join(values)}\n")
    result = call_job("jobs.import_vectors", "--csv-dir", str(tmp_path / "csv"), "--out", str(tmp_path / "v.parquet"),
                     "--bundle", str(bundle_dir))
    _one_line_exit_2(result, "non-numeric")


# ---- bundles, export, faces ---------------------------------------------------------------
@pytest.mark.parametrize("field, value, message", [
    ("z_dim", "five hundred", "z_dim must be a positive integer"),
    ("score_names", "eyes", "score_names must be a list of names"),
    ("group_medians", {"hair_color": "dark"}, "group_medians must be a table that maps score names to numbers"),
    ("w_dim", 256, "512 dims but the manifest says 256"),
])
def test_bad_manifests_are_one_line(tmp_path, bundle_dir, field, value, message):
    broken = tmp_path / "bundle"
    shutil.copytree(bundle_dir, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest[field] = value
    (broken / "manifest.json").write_text(json.dumps(manifest))
    _one_line_exit_2(call_job("jobs.faces", "--bundle", str(broken), "--out", str(tmp_path / "f.png")), message)


@pytest.mark.parametrize("args, message", [
    (["jobs.export", "--out", "{tmp}/b", "--resolution", "0"], "resolution must be a positive multiple of 64"),
    (["jobs.faces", "--out", "{tmp}"], "--out must name a .png file"),
    (["jobs.faces", "--out", "/proc/faces.png"], "cannot write"),
])
def test_smaller_cases(tmp_path, bundle_dir, args, message):
    extra = ["--bundle", str(bundle_dir)] if args[0] == "jobs.faces" else []
    _one_line_exit_2(call_job(*[a.format(tmp=tmp_path) for a in args], *extra), message)


def test_a_damaged_cached_builtin_bundle_says_how_to_rebuild_it(tmp_path, bundle_dir, monkeypatch):
    from jobs.cli.bundles import builtin_bundle_path

    monkeypatch.setenv("VECTORFIND_CACHE", str(tmp_path / "cache"))
    cached = builtin_bundle_path()
    shutil.copytree(bundle_dir, cached)
    (cached / "scorer.onnx").write_bytes(b"damaged")
    result = call_job("jobs.faces", "--out", str(tmp_path / "f.png"))
    _one_line_exit_2(result, f"delete {cached} and rerun to rebuild it")


def test_vectorfind_drops_nonfinite_rows_when_asked(ray_session, sampled, bundle_dir, tmp_path):
    run = _copy_run(sampled, tmp_path)
    table = pq.read_table(run / "samples.parquet")
    eyes = table["eyes"].to_numpy().copy()
    eyes[[1, 2]] = np.nan
    metadata = table.schema.metadata
    table = table.set_column(table.schema.get_field_index("eyes"), "eyes", pa.array(eyes, pa.float32()))
    shutil.rmtree(run / "samples.parquet")  # written back as one file, as runs before the dataset layout have it
    pq.write_table(table.replace_schema_metadata(metadata), run / "samples.parquet")
    args = ["jobs.vectorfind", "--bundle", str(bundle_dir), "--out", str(run), "--n", str(N), "--seed", str(SEED),
            "--cases", "2", "--ratio", "0.3"]
    _one_line_exit_2(call_job(*args), "2 rows with NaN or inf")
    assert call_job(*args, "--drop-nonfinite").returncode == 0
