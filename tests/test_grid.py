"""`jobs.grid`: one sample at the largest n, prefixes for smaller n, every cell on the same
cases, resumption by cell, and input checks before any work."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from compute.fitting import fit_directions
from compute.resources import Resources
from compute.sampling import sample_table
from compute.vectors_table import read_vectors
from conftest import call_job
from jobs import grid
from vectors.method import Method


@pytest.fixture(scope="module")
def small_grid(ray_session, bundle_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("grid") / "g"
    grid.main(["--out", str(out), "--bundle", str(bundle_dir), "--n", "4000,2400", "--ratio", "0.3,0.15",
               "--cases", "10", "--seed", "2"])
    return out


def test_grid_table_and_markdown(small_grid):
    table = pq.read_table(small_grid / "grid.parquet")
    rows = table.to_pylist()
    assert [(r["n"], r["ratio"]) for r in rows] == [(2400, 0.15), (2400, 0.3), (4000, 0.15), (4000, 0.3)]
    for r in rows:
        assert r["space"] == "w" and len(r["k"]) == 8 and r["cases"] == 10
        assert 0 <= r["passed"] <= 10 and 0 < r["sum_mean_abs_corr"] <= 3
        assert all(0.5 < r[f"svm_acc_{p}"] <= 1 for p in ("eyes", "mouth", "pose"))
    text = (small_grid / "grid.md").read_text()
    assert "| n \\ ratio | 0.15 | 0.3 |" in text and "by ratio at n = 4,000" in text
    assert (small_grid / "grid_w_sum_and_passed.png").read_bytes()[:4] == b"\x89PNG"
    assert (small_grid / "grid_w_per_property.png").is_file()


def test_every_cell_is_tested_on_the_same_cases(small_grid):
    cells = sorted((small_grid / "grid").iterdir())
    assert len(cells) == 4
    first = pq.read_table(cells[0] / "cases.parquet")
    for cell in cells[1:]:
        other = pq.read_table(cell / "cases.parquet")
        assert other["case_id"].equals(first["case_id"]) and other["group"].equals(first["group"])


def test_smaller_n_is_a_prefix_and_fits_like_a_standalone_run(small_grid, bundle, tmp_path):
    alone = tmp_path / "alone"
    table = sample_table(bundle, 2400, 2, alone, resources=Resources(2, 0.5, 0.0, 1), progress=False)
    full = pq.read_table(small_grid / "samples.parquet")
    assert full.num_rows == 4000 and full.slice(0, 2400)["z"].equals(table["z"])
    _, standalone, _ = read_vectors(fit_directions(alone, Method(ratio=0.15), seed=2, progress=False))
    _, cell, _ = read_vectors(small_grid / "grid" / "w-n2400-r0.15" / "vectors.parquet")
    for key, d in standalone.items():
        np.testing.assert_allclose(cell[key], d, atol=1e-5)


def test_interrupted_grid_resumes_by_cell(small_grid, bundle_dir, capsys):
    done = small_grid / "grid" / "w-n4000-r0.3" / "summary.json"
    kept = small_grid / "grid" / "w-n2400-r0.15" / "summary.json"
    before, kept_mtime = json.loads(done.read_text()), kept.stat().st_mtime_ns
    done.unlink()  # as if the job died while testing this cell
    capsys.readouterr()
    grid.main(["--out", str(small_grid), "--bundle", str(bundle_dir), "--n", "2400,4000", "--ratio", "0.15,0.3",
               "--cases", "10", "--seed", "2"])
    out = capsys.readouterr().out
    assert "testing 1 cells" in out and "reusing" in out and "recomputing" not in out
    assert kept.stat().st_mtime_ns == kept_mtime
    assert json.loads(done.read_text())["passed"] == before["passed"]


@pytest.mark.parametrize("extra, message", [
    (["--n", ","], "--n is empty"),
    (["--n", "4000,4000"], "duplicates: 4000"),
    (["--ratio", "0.2,0.7"], "ratio must be in (0, 0.5]"),
    (["--properties", "eyes,smile"], "no output named smile"),
    (["--cases", "0"], "--cases must be >= 1"),
    (["--n", "1000000000"], "need about"),
    (["--space", "w,q"], "space must be w (v7), z (v6) or a layer range of w such as w:0-6, got 'q'"),
])
def test_bad_input_is_refused_before_any_work(bundle_dir, tmp_path, extra, message):
    out = tmp_path / "g"
    result = call_job("jobs.grid", "--out", str(out), "--bundle", str(bundle_dir), "--n", "2400", "--ratio", "0.2",
                     "--cases", "5", *extra)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()


def test_rerun_with_other_cases_or_medians_recomputes_stale_cells(small_grid, bundle_dir, capsys):
    """A finished cell is reused only when made with the settings asked for: other --cases
    retest every cell (fits reused), other --medians refit and retest."""
    args = ["--out", str(small_grid), "--bundle", str(bundle_dir), "--n", "2400,4000", "--ratio", "0.15,0.3",
            "--seed", "2"]
    capsys.readouterr()
    grid.main([*args, "--cases", "6"])
    out = capsys.readouterr().out
    assert "testing 4 cells on the same 6 cases" in out and out.count("made with other settings (cases)") == 4
    table = pq.read_table(small_grid / "grid.parquet")
    assert set(table["cases"].to_pylist()) == {6}
    for cell in (small_grid / "grid").iterdir():
        assert pq.read_table(cell / "cases.parquet").num_rows == 6
    grid.main([*args, "--cases", "6", "--medians", "samples"])
    out = capsys.readouterr().out
    assert out.count("vectors.parquet: made with other settings") == 4 and "testing 4 cells" in out


def test_estimators_are_cells_on_the_same_samples_and_cases(ray_session, bundle_dir, tmp_path):
    """An estimator axis: each estimator fits the same selections and is tested on the same cases;
    the reference estimator's cell keeps its old name, the table compares them side by side."""
    out = tmp_path / "g"
    done = call_job("jobs.grid", "--out", str(out), "--bundle", str(bundle_dir), "--n", "2400", "--ratio", "0.2",
                    "--cases", "6", "--estimator", "svm,mean_diff", "--stability-splits", "2")
    assert done.returncode == 0, done.stderr
    rows = pq.read_table(out / "grid.parquet").to_pylist()
    assert [r["estimator"] for r in rows] == ["mean_diff", "svm"]
    assert sorted(p.name for p in (out / "grid").iterdir()) == ["w-n2400-r0.2", "w-n2400-r0.2-mean_diff"]
    svm, diff = (pq.read_table(out / "grid" / name / "cases.parquet") for name in ("w-n2400-r0.2",
                                                                                 "w-n2400-r0.2-mean_diff"))
    assert svm["case_id"].equals(diff["case_id"]) and svm["z"].equals(diff["z"])
    vectors = {name: read_vectors(out / "grid" / name / "vectors.parquet") for name in ("w-n2400-r0.2",
                                                                                       "w-n2400-r0.2-mean_diff")}
    assert vectors["w-n2400-r0.2-mean_diff"][0]["estimator"].to_pylist() == ["mean_diff"] * 24
    assert all(0 < s <= 1 for s in vectors["w-n2400-r0.2"][0]["stability"].to_pylist())
    assert "Estimators side by side" in (out / "grid.md").read_text()
    bad = call_job("jobs.grid", "--out", str(tmp_path / "bad"), "--bundle", str(bundle_dir), "--estimator", "lasso")
    assert bad.returncode == 2 and "lasso" in bad.stderr and not (tmp_path / "bad").exists()
