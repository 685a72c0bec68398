"""The Ray-side benchmarks run end to end at toy sizes and print their comparisons (their
figures are only meaningful at full size; these runs check the wiring, not the speed)."""
from __future__ import annotations

from conftest import run_job


def test_fit_benchmark_prints_its_comparison(ray_session, bundle, tmp_path, capsys):
    from jobs.benchmark.fitting import bench_fit

    bench_fit(bundle, 1000, tmp_path / "fit")  # in-process on the session's Ray: the wiring, cheaply
    out = capsys.readouterr().out
    assert "24 fits (the seeds' method)" in out and "a/b speed-up" in out and "SVC(kernel='linear') C=0.001" in out


def test_sampling_benchmark_prints_its_ratios(ray_session, bundle, capsys):
    from jobs.benchmark.sampling import bench_sampling

    rates = bench_sampling(bundle, 300, 8)
    assert set(rates) == {"a", "b", "c"} and all(r > 0 for r in rates.values())
    assert "a/b = " in capsys.readouterr().out


def test_benchmark_bad_input():
    result = run_job("jobs.benchmark", "fit", "--n", "10")
    assert result.returncode == 2 and "--n must be >= 1000" in result.stderr
