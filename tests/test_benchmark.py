"""The Ray-side benchmarks run end to end at toy sizes and print their comparisons (their
figures are only meaningful at full size; these runs check the wiring, not the speed)."""
from __future__ import annotations

from conftest import call_job


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
    result = call_job("jobs.benchmark.__main__", "fit", "--n", "10")
    assert result.returncode == 2 and "--n must be >= 1000" in result.stderr


def test_estimators_benchmark_compares_on_shared_cases(ray_session, bundle, tmp_path, capsys):
    from compute.resources import Resources
    from jobs.benchmark.estimators import bench_estimators

    rows = bench_estimators(bundle, tmp_path, 2000, [0, 1], 4, ["svm", "ridge"], 0.2, Resources(2, 0.5, 0.0, 1))
    out = capsys.readouterr().out
    assert len(rows) == 4 and {r["estimator"] for r in rows} == {"svm", "ridge"}
    # The synthetic world knows its true directions: every fitted one points roughly along them.
    assert all(0.3 < r["truth_cos_eyes"] <= 1 for r in rows)
    assert "| ridge |" in out and "estimator - svm on the same seed" in out and "consistency [" in out


def test_scale_benchmark_ends_with_its_line(tmp_path):
    # in-process: the benchmark itself starts one fresh driver per n
    result = call_job("jobs.benchmark.__main__", "scale", "--n", "1500", "--out", str(tmp_path / "scale"))
    assert result.returncode == 0, result.stderr[-2000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("scale: n=1,500 driver peak ") and last.endswith(" images/s"), result.stdout
    assert not any((tmp_path / "scale").iterdir())  # each n's samples are removed after it
    bad = call_job("jobs.benchmark.__main__", "scale", "--n", "0")
    assert bad.returncode == 2 and "--n values must be >= 1" in bad.stderr


def test_test_benchmark_refuses_a_sample_count_below_one_before_ray():
    bad = call_job("jobs.benchmark.__main__", "test", "--n", "0")
    assert bad.returncode == 2 and "--n, --cases and --reference-cases must be >= 1" in bad.stderr
