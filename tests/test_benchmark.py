"""The Ray-side benchmarks run end to end at toy sizes and print their comparisons (their
figures are only meaningful at full size; these runs check the wiring, not the speed)."""
from __future__ import annotations

from conftest import run_job


def test_sampling_and_fit_benchmarks_print_their_ratios(tmp_path, bundle_dir):
    env = {"VECTORFIND_CACHE": str(tmp_path / "cache")}
    sampling = run_job("jobs.benchmark", "sampling", "--n", "400", "--reference-n", "8", cwd=tmp_path, env=env)
    assert sampling.returncode == 0, sampling.stderr[-3000:]
    assert "(a) Ray Data pipeline" in sampling.stdout and "a/b = " in sampling.stdout
    fit = run_job("jobs.benchmark", "fit", "--n", "1000", "--run", str(tmp_path / "fit"), cwd=tmp_path, env=env)
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert "24 fits (the seeds' method)" in fit.stdout and "a/b speed-up" in fit.stdout


def test_benchmark_bad_input():
    result = run_job("jobs.benchmark", "fit", "--n", "10")
    assert result.returncode == 2 and "--n must be >= 1000" in result.stderr
