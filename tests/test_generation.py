"""The image generation test, recheck, report and the main job on the synthetic world."""
from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import call_job, copy_samples, run_job

from compute.fitting import fit_directions
from compute.generation import CaseActor, DirectionSet, run_cases
from compute.report import write_report
from compute.resources import Resources
from compute.seeding import CASES, draw_codes
from compute.sessions import make_session, run_single
from compute.tables import read_metadata, with_metadata, write_parquet_atomic
from compute.testing import load_direction_set, run_test
from compute.vectors_table import read_vectors
from vectors.edits import direction_matrices
from vectors.method import Method
from vectors.stats import case_statistics, passes, pearson
from vectors.summary import summarize

N, CASES_N = 8000, 100
TWO = Resources(2, 0.5, 0.0, 1)
GLOBAL = Method(group_by=())


@pytest.fixture(scope="module")
def fitted(ray_session, samples_8k, tmp_path_factory):
    run = copy_samples(samples_8k, tmp_path_factory.mktemp("gen"))  # the session's N samples, seed 11 (test_fit's too)
    fit_directions(run, Method(), progress=False)
    fit_directions(run, Method(space="z"), out=run / "vectors_z.parquet", progress=False)
    fit_directions(run, GLOBAL, out=run / "vectors_global.parquet", progress=False)
    return run


@pytest.fixture(scope="module")
def tested(fitted, bundle):
    summaries = {}
    for name, vectors, method in (("w", "vectors.parquet", Method()), ("z", "vectors_z.parquet", Method(space="z")),
                                  ("global", "vectors_global.parquet", GLOBAL)):
        summaries[name] = run_test(fitted / f"test_{name}", bundle, method, CASES_N, 3, TWO, fitted / vectors,
                                   progress=False)
    return fitted, summaries


def test_directions_pass_the_generation_test_and_v7_and_grouping_win(tested):
    _, s = tested
    figures = {k: (round(v["sum_mean_abs_corr"], 4), v["passed"]) for k, v in s.items()}
    print("sum of mean |corr| and passes (w, z, global):", figures)
    for prop in ("eyes", "mouth", "pose"):
        assert s["w"]["mean_abs_corr"][prop] >= 0.85, (prop, s["w"]["mean_abs_corr"])
    assert s["w"]["sum_mean_abs_corr"] > s["z"]["sum_mean_abs_corr"]
    assert s["w"]["sum_mean_abs_corr"] > s["global"]["sum_mean_abs_corr"]
    assert 0 < s["w"]["passed"] < CASES_N  # the world is neither trivial nor hopeless
    assert s["w"]["mean_identity_spread"] < 0.25  # edits leave the unscored identity traits alone


def test_results_identical_with_one_or_two_actors(fitted, bundle):
    method = Method()
    direction_set, _, _ = load_direction_set(fitted / "vectors.parquet", bundle, method)
    args = (bundle, 12, 5, [direction_set], method.group_by, method.edit_weights())
    one = run_cases(*args, Resources(1, 0.5, 0.0, 1), progress=False)
    two = run_cases(*args, Resources(2, 0.5, 0.0, 1), cases_per_batch=3, progress=False)
    np.testing.assert_array_equal(one.case_id, np.arange(12))
    np.testing.assert_array_equal(one.group, two.group)
    np.testing.assert_allclose(one.edit_scores, two.edit_scores, atol=1e-5)


def test_case_actor_edits_are_the_schedule_along_the_group_directions(fitted, bundle):
    method = Method()
    _, directions, meta = read_vectors(fitted / "vectors.parquet")
    matrices = direction_matrices(directions, method.property_names)
    graphs = {s: bundle.graph_bytes(s) for s in ("mapping", "synthesis", "scorer")}
    weights = method.edit_weights()
    sets = [DirectionSet(matrices, "w", meta["fit"]["median_values"])]
    out = CaseActor(graphs, 9, 515, sets, method.group_by, bundle.score_names, weights)({"id": np.array([7])})
    z = draw_codes(9, [7], 515, CASES)
    np.testing.assert_array_equal(out["z"], z)
    assert not np.array_equal(z, draw_codes(9, [7], 515))  # cases never repeat training samples
    sessions = {s: make_session(b) for s, b in graphs.items()}
    w = run_single(sessions["mapping"], z)
    edits = w + weights @ matrices[out["group"][0, 0]]
    expected = run_single(sessions["scorer"], run_single(sessions["synthesis"], edits.astype(np.float32)))
    assert out["edit_scores"].shape == (1, 1, 50, 6)
    np.testing.assert_allclose(out["edit_scores"][0, 0], expected, atol=1e-4)


def test_statistics_against_numpy_and_degenerate_cases():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal(50), rng.standard_normal((4, 50))
    y[2] = 3.0  # constant: degenerate
    r = pearson(x, y)
    for i in (0, 1, 3):
        assert abs(r[i] - np.corrcoef(x, y[i])[0, 1]) < 1e-12
    assert np.isnan(r[2])
    method = Method()
    weights = method.edit_weights()
    scores = rng.standard_normal((3, 50, 6))
    scores[:, :, 0] = weights[:, 0] * 2  # eyes follow their weight exactly
    scores[:, :, 1] = weights[:, 1]
    scores[:, :, 2] = weights[:, 2]
    scores[1, :, 2] = 0.5  # case 1: pose never moves
    names = ["eyes", "mouth", "pose", "hair_color", "hair_length", "background_mean"]
    stats = case_statistics(method, scores, names)
    assert np.allclose(stats["corr_eyes"], 1) and np.isnan(stats["corr_pose"][1])
    ok = passes(stats, method)
    assert ok.tolist() == [True, False, True] and stats["degenerate"].tolist() == [False, True, False]
    summary = summarize(np.array(["hhh", "hhh", "lll"]), stats, ok, method)
    assert summary["passed"] == 2 and summary["degenerate"] == 1
    assert summary["per_group"]["hhh"] == {"cases": 2, "passed": 1}
    assert np.isclose(stats["consistency"][0], np.mean([scores[0, :, k].std() for k in (3, 4, 5)]))


def test_outputs_and_recheck(tested):
    run = tested[0] / "test_w"
    summary = json.loads((run / "summary.json").read_text())
    cases = pq.read_table(run / "cases.parquet")
    assert cases.num_rows == CASES_N and cases.schema.field("z").type == pa.list_(pa.float32(), 515)
    for column in ("case_id", "w", "group", "corr_eyes", "corr_mouth", "corr_pose", "sum_abs_corr",
                   "consistency", "passed"):
        assert column in cases.column_names
    assert sum(cases["passed"].to_pylist()) == summary["passed"]
    assert pq.read_table(run / "passed.parquet").num_rows == summary["passed"]
    with open(run / "passed.csv") as f:
        rows = list(csv.reader(f))
    assert len(rows) == summary["passed"] + 1
    assert rows[0][:3] == ["case_id", "group", "corr_eyes"] and rows[0][-1] == "z_514"
    assert summary["schedule"] == {p.name: list(p.schedule) for p in Method().properties}
    assert summary["schedule"]["pose"] == [-0.6, 0.0, 0.6, 1.2, 1.8] and summary["cutoffs"]["mouth"] == 0.88
    assert read_metadata(run / "cases.parquet")["test"]["cases"] == CASES_N

    same = call_job("jobs.recheck", "--run", str(run), "--cutoffs", "0.92,0.88,0.92")
    assert same.returncode == 0 and f"passed: {summary['passed']} / {CASES_N}" in same.stdout
    eyes_row = next(line.split() for line in same.stdout.splitlines() if line.startswith("eyes "))
    assert eyes_row[2] == f"{summary['stability']['eyes']:.4f}"  # the directions' stability, not "-"
    relaxed = call_job("jobs.recheck", "--run", str(run), "--cutoffs", "0.5,0.5,0.5")
    passed_relaxed = int(relaxed.stdout.split("passed: ")[1].split(" /")[0])
    assert passed_relaxed >= summary["passed"]

    # The reference's test_result.csv layout gives the same summary.
    ref = run / "test_result.csv"
    with open(ref, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case", "vector_no", "passed", "group_name", "eyes_corr", "mouth_corr", "pose_corr", "sum_abs_corr"])
        for c, g, e, m, p, s, ok in zip(*(cases[k].to_pylist() for k in ("case_id", "group", "corr_eyes", "corr_mouth",
                                                                        "corr_pose", "sum_abs_corr", "passed"))):
            writer.writerow([c, 0, "O" if ok else "X", g, -e, -m, -p, s])  # the reference's sign
    from_ref = call_job("jobs.recheck", "--reference-csv", str(ref), "--cutoffs", "0.92,0.88,0.92")
    assert from_ref.returncode == 0 and f"passed: {summary['passed']} / {CASES_N}" in from_ref.stdout
    assert f"marks {summary['passed']} of {CASES_N}" in from_ref.stdout


def test_report(tested, bundle):
    run = tested[0] / "test_w"
    path = write_report(run, bundle)  # finds its vectors through the path recorded relative to the run
    text = path.read_text()
    for needle in ("## Results", "| eyes |", "## Per group", "edits.png", "correlations.png", "passes_per_group.png"):
        assert needle in text
    for png in ("edits.png", "correlations.png", "passes_per_group.png"):
        assert (run / png).read_bytes()[:4] == b"\x89PNG"


def test_test_job_bad_input(fitted, bundle_dir, tmp_path):
    base = ["jobs.test", "--run", str(fitted), "--bundle", str(bundle_dir)]
    for extra, message in ((["--cases", "0"], "--cases must be >= 1"),
                           (["--cutoffs", "0.9,1.2,0.9"], "mouth cutoff must be in [0, 1]"),
                           (["--cutoffs", "0.9,0.9"], "2 numbers for 3 properties"),
                           (["--properties", "eyes,smile"], "no output named smile"),
                           (["--schedule", "eyes=1"], "at least 2 distinct"),
                           (["--eyes", "1.2,1.2"], "at least 2 distinct"),
                           (["--vectors", str(tmp_path / "none.parquet")], "no vectors")):
        result = call_job(*base, *extra)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    table = pq.read_table(fitted / "vectors.parquet")
    meta = read_metadata(fitted / "vectors.parquet")
    meta["fit"]["bundle_manifest_sha256"] = "0" * 64
    write_parquet_atomic(with_metadata(table, meta), tmp_path / "other.parquet")
    result = call_job(*base, "--vectors", str(tmp_path / "other.parquet"))
    assert result.returncode == 2 and "another bundle" in result.stderr


def test_main_job_end_to_end_and_reuse(bundle_dir, tmp_path, ray_session):
    out = tmp_path / "vf"
    args = ["jobs.vectorfind", "--bundle", str(bundle_dir), "--out", str(out), "--n", "2400", "--cases", "12",
            "--ratio", "0.25"]
    first = run_job(*args)  # as a user runs it; the rerun and the refusal in-process (no new Ray instance)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "sum of mean |corr|" in first.stdout and "passed:" in first.stdout
    for name in ("samples.parquet", "vectors.parquet", "cases.parquet", "summary.json", "passed.csv",
                 "report.md", "edits.png"):
        assert (out / name).is_file() or name == "samples.parquet" and (out / name).is_dir(), name
    again = call_job(*args)
    assert again.returncode == 0 and again.stdout.count("reusing") == 3, again.stdout
    bad = call_job("jobs.vectorfind", "--out", str(tmp_path / "x"), "--cases", "0")
    assert bad.returncode == 2 and "at least 1 case" in bad.stderr and not (tmp_path / "x").exists()
