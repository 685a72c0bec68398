"""Results that say what they mean (issue 23): the signed pass rule, negative correlations
marked in report.md, fits that did not converge listed there, and each direction's spread of
projected codes (std of code . n over the run's samples) in the report's tables."""
from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import call_job

from compute import samples_store
from compute.code_spread import code_spread, projected_std
from compute.fitting import fit_directions
from compute.grid_report import check_grid_columns
from compute.report import write_report
from compute.resources import Resources
from compute.sampling import sample_table
from compute.tables import (
    read_metadata,
    vector_column,
    vector_matrix,
    with_metadata,
    write_parquet_atomic,
)
from compute.testing import run_test
from compute.vectors_table import read_vectors
from vectors.errors import InputError
from vectors.method import EditedProperty, Method, MethodError, load_method
from vectors.stats import case_statistics, passes
from vectors.summary import results_table, summarize
from vectors.svm import SvmConfig

N, CASES = 1000, 6
TWO = Resources(2, 0.5, 0.0, 1)
# A short iteration limit: on these samples 2 of the 24 LinearSVC fits stop before converging.
METHOD = Method(stability_splits=0, svm=SvmConfig(max_iter=30))


def test_a_signed_rule_fails_a_negative_correlation_that_the_seeds_rule_passes():
    """Weights (-1, 0, 1). Case 0 measures (1, 0, -2): centred scores (4/3, 1/3, -5/3), so
    corr = -3 / sqrt(2 * 42/9) = -9 / sqrt(84) = -0.98198. Case 1 measures (-1, 0.5, 1):
    centred (-7/6, 1/3, 5/6), corr = 2 / sqrt(2 * 78/36) = 12 / sqrt(156) = 0.96077."""
    seeds = Method(properties=(EditedProperty("eyes", (-1.0, 0.0, 1.0), 0.9),), group_by=())
    signed = Method(properties=seeds.properties, group_by=(), pass_rule="signed")
    scores = np.array([[[1.0], [0.0], [-2.0]], [[-1.0], [0.5], [1.0]]])  # (cases, edits, scores)
    stats = case_statistics(seeds, scores, ["eyes"])
    np.testing.assert_allclose(stats["corr_eyes"], [-9 / np.sqrt(84), 12 / np.sqrt(156)], rtol=1e-12)
    assert passes(stats, seeds).tolist() == [True, True]   # |-0.982| >= 0.9
    assert passes(stats, signed).tolist() == [False, True]  # -0.982 < 0.9
    groups = np.array(["all", "all"])
    by_seeds = summarize(groups, stats, passes(stats, seeds), seeds)
    by_signed = summarize(groups, stats, passes(stats, signed), signed)
    assert by_seeds["negative_corr"] == {"eyes": 1} and by_seeds["negative_corr_passed"] == {"eyes": 1}
    assert by_signed["negative_corr_passed"] == {"eyes": 0} and by_signed["passed"] == 1
    assert by_seeds["mean_corr"]["eyes"] == pytest.approx((-9 / np.sqrt(84) + 12 / np.sqrt(156)) / 2)
    assert by_seeds["mean_abs_corr"]["eyes"] == pytest.approx((9 / np.sqrt(84) + 12 / np.sqrt(156)) / 2)
    text = results_table(by_seeds, None)
    assert "passed: 2 / 2 (100.0%; |corr| >= cutoff)" in text and "eyes 1 (1 passed)" in text
    assert "passed: 1 / 2 (50.0%; corr >= cutoff)" in results_table(by_signed, None)


def test_the_pass_rule_is_a_method_setting_that_round_trips(tmp_path):
    assert Method().pass_rule == "abs" and Method().to_dict()["pass_rule"] == "abs"
    path = tmp_path / "signed.toml"
    path.write_text('pass_rule = "signed"\n')
    method = load_method(path)
    assert method.pass_rule == "signed" and Method.from_dict(method.to_dict()) == method
    assert "pass_rule" not in method.fit_config()  # a rule of the test: the fit does not depend on it
    assert Method.from_dict({k: v for k, v in Method().to_dict().items() if k != "pass_rule"}) == Method()
    with pytest.raises(MethodError, match="pass_rule must be one of abs, signed, got 'ABS'"):
        Method(pass_rule="ABS")


def test_an_old_grid_table_is_refused_with_what_to_do():
    old = pa.table({"space": ["w"], "mean_corr_eyes": [0.79]})  # the mean of |corr| under the old name
    with pytest.raises(InputError, match="no column mean_abs_corr_eyes .* run jobs.grid again"):
        check_grid_columns(old, ["eyes"])
    check_grid_columns(pa.table({"mean_abs_corr_eyes": [0.79]}), ["eyes"])


@pytest.fixture(scope="module")
def reported(ray_session, bundle, tmp_path_factory):
    """A small run whose eyes directions are turned around after the fit, so that the test's
    eyes correlations come out negative; then its report."""
    run = tmp_path_factory.mktemp("report") / "run"
    sample_table(bundle, N, 3, run, resources=TWO, progress=False)
    fit_directions(run, METHOD, progress=False)
    table, _, _ = read_vectors(run / "vectors.parquet")
    flip = np.where(np.array(table["property"].to_pylist()) == "eyes", -1.0, 1.0).astype(np.float32)
    turned = table.set_column(table.column_names.index("direction"), "direction",
                              vector_column(vector_matrix(table["direction"]) * flip[:, None]))
    write_parquet_atomic(with_metadata(turned, read_metadata(run / "vectors.parquet")), run / "vectors.parquet")
    run_test(run, bundle, METHOD, CASES, 5, TWO, progress=False)
    write_report(run, bundle)
    return run


def _section(text: str, heading: str) -> str:
    return text.split(f"## {heading}")[1].split("\n## ")[0]


def test_report_counts_and_marks_negative_correlations(reported):
    text = (reported / "report.md").read_text()
    cases = pq.read_table(reported / "cases.parquet")
    corr = {p: cases[f"corr_{p}"].to_numpy() for p in ("eyes", "mouth", "pose")}
    passed = cases["passed"].to_numpy(zero_copy_only=False)
    assert (corr["eyes"] < 0).sum() == CASES  # the turned directions move eyes the wrong way in every case
    results = _section(text, "Results")
    eyes_row = next(line for line in results.splitlines() if line.startswith("| eyes |")).split(" | ")
    assert eyes_row[3] == f"{np.mean(corr['eyes']):.4f}" and eyes_row[4] == f"{np.mean(np.abs(corr['eyes'])):.4f}"
    assert eyes_row[5] == str(CASES)
    negative = _section(text, "Negative correlations")
    assert f"eyes {CASES} ({int(passed.sum())} passed)" in negative
    for p in ("mouth", "pose"):
        assert f"{p} {int((corr[p] < 0).sum())} (" in negative
    for case_id, value in zip(cases["case_id"].to_pylist(), corr["eyes"]):  # each listed, its eyes corr in bold
        assert re.search(rf"^\| {case_id} \| \w+ \| \*\*{value:.3f}\*\* \|", negative, re.MULTILINE), case_id
    # Under the signed rule no case with a negative correlation passes: here, none at all.
    signed = call_job("jobs.recheck", "--run", str(reported), "--pass-rule", "signed")
    assert signed.returncode == 0 and f"passed: 0 / {CASES} (0.0%; corr >= cutoff)" in signed.stdout, signed.stderr
    seeds = call_job("jobs.recheck", "--run", str(reported))
    assert f"passed: {int(passed.sum())} / {CASES}" in seeds.stdout
    bad = call_job("jobs.recheck", "--run", str(reported), "--pass-rule", "sign")
    assert bad.returncode == 2 and "pass_rule must be one of abs, signed" in bad.stderr


def test_report_lists_the_fits_that_did_not_converge(reported):
    vectors, _, _ = read_vectors(reported / "vectors.parquet")
    failed = [f"{g}/{p}" for g, p, c in zip(vectors["group"].to_pylist(), vectors["property"].to_pylist(),
                                            vectors["converged"].to_pylist()) if not c]
    assert 0 < len(failed) < 24  # some stopped at 30 iterations, not all: the list must pick them out
    text = (reported / "report.md").read_text()
    line = next(line for line in text.splitlines() if "fits did not converge" in line)
    assert f"**{len(failed)} of 24 fits did not converge**" in line
    assert line.split(": ", 1)[1].split(". ")[0].split(", ") == failed
    assert json.loads((reported / "summary.json").read_text())["fits_not_converged"] == failed


def test_report_gives_each_directions_spread_of_projected_codes(reported, monkeypatch):
    _, directions, _ = read_vectors(reported / "vectors.parquet")
    codes = vector_matrix(samples_store.read_samples(reported / "samples.parquet", columns=["w"])["w"]).astype(float)
    expected = {key: float(np.std(codes @ d.astype(float))) for key, d in directions.items()}
    monkeypatch.setattr("compute.code_spread.BATCH_ROWS", 37)  # many batches: the moments must combine exactly
    std, rows = projected_std(reported / "samples.parquet", "w", directions)
    assert rows == N and std == pytest.approx(expected, rel=1e-9)
    text = (reported / "report.md").read_text()
    group_rows = [line.split(" | ") for line in _section(text, "Per group").splitlines() if line.startswith("| hhh |")]
    assert [float(v) for v in group_rows[0][5:8]] == pytest.approx(
        [expected[("hhh", p)] for p in ("eyes", "mouth", "pose")], abs=6e-4)
    eyes_row = next(line for line in text.splitlines() if line.startswith("| eyes |")).split(" | ")
    mean_eyes = np.mean([v for (g, p), v in expected.items() if p == "eyes"])
    assert float(eyes_row[7]) == pytest.approx(mean_eyes, abs=6e-4)
    assert float(eyes_row[8].rstrip(" |")) == pytest.approx(1.2 / mean_eyes, abs=0.01)  # the eyes schedule is +-1.2
    assert f"over the {N:,} samples of samples.parquet" in text


def test_code_spread_uses_only_samples_of_the_tested_bundle(reported, tmp_path):
    _, directions, _ = read_vectors(reported / "vectors.parquet")
    other = code_spread([reported / "samples.parquet"], "0" * 64, "w", directions)
    assert other.std == {} and "samples of another bundle" in other.note
    none = code_spread([tmp_path / "samples.parquet"], None, "w", directions)
    assert none.std == {} and none.note == "no samples beside the run or its vectors"
    (tmp_path / "samples.parquet").mkdir()
    pq.write_table(pa.table({"w": pa.array([1.0, 2.0])}), tmp_path / "samples.parquet" / "000000.parquet")
    wrong = code_spread([tmp_path / "samples.parquet"], None, "w", directions)
    assert wrong.std == {} and "no w column of 512-dim codes" in wrong.note
    summary = json.loads((reported / "summary.json").read_text())
    assert summary["pass_rule"] == "abs" and summary["negative_corr"]["eyes"] == CASES
