"""Any vocabulary, end to end: a bundle whose scorer names its outputs differently (and adds
the identity traits) runs through jobs.vectorfind, jobs.grid and jobs.recheck with
(a) 2 properties and 1 grouping score, (b) 1 property and no grouping, (c) the seeds'
method spelled in that vocabulary, which must reproduce the built-in bundle's numbers."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from compute.grid import Cell, cell_dir
from compute.tables import read_table
from compute.vectors_table import read_vectors
from jobs import grid, recheck, vectorfind
from vectors.method import Method

N, CASES = 1600, 8
RENAMED = {"eyes": "eye_open", "mouth": "smile", "pose": "yaw", "hair_color": "hair_tone",
           "hair_length": "hair_len", "background_mean": "backdrop"}


def _run(out, bundle_dir, *flags):
    vectorfind.main(["--bundle", str(bundle_dir), "--out", str(out), "--n", str(N), "--cases", str(CASES),
                     "--seed", "4", "--ratio", "0.25", *flags])
    grid.main(["--bundle", str(bundle_dir), "--out", str(out), "--n", f"800,{N}", "--ratio", "0.25",
               "--cases", "6", "--seed", "4", *flags])
    return out


@pytest.fixture(scope="module")
def two_properties(ray_session, attributes_dir, tmp_path_factory):
    return _run(tmp_path_factory.mktemp("a") / "run", attributes_dir, "--properties", "smile,yaw",
                "--group-by", "hair_tone", "--schedule", "smile=-1.5,-0.5,0.5,1.5", "--cutoffs", "smile=0.8,yaw=0.8")


def test_two_properties_one_grouping_score(two_properties, capsys):
    run = two_properties
    vectors, directions, meta = read_vectors(run / "vectors.parquet")
    assert sorted(directions) == [("h", "smile"), ("h", "yaw"), ("l", "smile"), ("l", "yaw")]
    assert meta["method"]["group_by"] == ["hair_tone"]
    cases = pq.read_table(run / "cases.parquet")
    assert {"corr_smile", "corr_yaw", "spread_hair_tone", "consistency"} <= set(cases.column_names)
    assert "corr_eyes" not in cases.column_names and set(cases["group"].to_pylist()) <= {"h", "l"}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["edits_per_case"] == 4 * 5 and set(summary["per_group"]) == {"h", "l"}
    assert summary["mean_abs_corr"]["smile"] > 0.8 and summary["mean_abs_corr"]["yaw"] > 0.8
    assert "| smile |" in (run / "report.md").read_text()
    capsys.readouterr()
    recheck.main(["--run", str(run), "--cutoffs", "smile=0,yaw=0"])
    assert f"passed: {CASES - summary['degenerate']} / {CASES}" in capsys.readouterr().out
    recheck.main(["--run", str(run)])
    assert f"passed: {summary['passed']} / {CASES}" in capsys.readouterr().out


def test_grid_cells_share_the_test_schema(two_properties):
    run = two_properties
    table = pq.read_table(run / "grid.parquet")
    assert table.num_rows == 2 and {"mean_abs_corr_smile", "mean_corr_smile", "svm_acc_yaw"} <= set(table.column_names)
    # One name per quantity: mean_abs_corr is the cell's mean of |corr|, mean_corr its signed mean.
    for row in table.to_pylist():
        cell = Cell(row["space"], row["n"], row["ratio"], row["estimator"])
        corr = read_table(cell_dir(run, cell) / "cases.parquet")["corr_smile"].to_numpy()  # a Place
        assert row["mean_abs_corr_smile"] == pytest.approx(np.nanmean(np.abs(corr)))
        assert row["mean_corr_smile"] == pytest.approx(np.nanmean(corr))
        assert row["negative_corr_smile"] == int((corr < 0).sum())
    assert [len(k) for k in table["k"].to_pylist()] == [2, 2]
    single = pq.read_table(run / "cases.parquet").schema
    for cell in (run / "grid").iterdir():
        schema = pq.read_table(cell / "cases.parquet").schema
        assert schema.names == ["space", "n", "ratio", *single.names]
    assert "mean abs corr smile" in (run / "grid.md").read_text()


def test_one_property_no_grouping(ray_session, attributes_dir, tmp_path, capsys):
    run = _run(tmp_path / "run", attributes_dir, "--properties", "eye_open", "--group-by", "none")
    _, directions, _ = read_vectors(run / "vectors.parquet")
    assert list(directions) == [("all", "eye_open")]
    summary = json.loads((run / "summary.json").read_text())
    # eye_open is not a seeds' name, so it gets the generic 5-weight schedule
    assert summary["edits_per_case"] == 5
    assert summary["per_group"] == {"all": {"cases": CASES, "passed": summary["passed"]}}
    assert np.isnan(summary["mean_consistency"])  # nothing groups the faces, so nothing to hold still
    assert summary["mean_abs_corr"]["eye_open"] > 0.9
    capsys.readouterr()
    recheck.main(["--run", str(run), "--cutoffs", "0.5"])
    assert "eye_open" in capsys.readouterr().out
    assert pq.read_table(run / "grid.parquet")["k"].to_pylist()[0] == [200]


def test_seeds_method_in_another_vocabulary_gives_the_builtin_numbers(ray_session, attributes_dir, bundle_dir,
                                                                       tmp_path):
    seeds = Method().to_dict()
    for p in seeds["properties"]:
        p["name"] = RENAMED[p["name"]]
    seeds["group_by"] = [RENAMED[g] for g in seeds["group_by"]]
    (tmp_path / "seeds.json").write_text(json.dumps(seeds))
    renamed = _run(tmp_path / "renamed", attributes_dir, "--method", str(tmp_path / "seeds.json"))
    builtin = _run(tmp_path / "builtin", bundle_dir)
    ours, theirs = (pq.read_table(r / "cases.parquet") for r in (renamed, builtin))
    assert ours["group"].equals(theirs["group"])
    for old, new in RENAMED.items():
        if old in ("eyes", "mouth", "pose"):
            np.testing.assert_allclose(ours[f"corr_{new}"].to_numpy(), theirs[f"corr_{old}"].to_numpy(), atol=1e-4)
    summaries = [json.loads((r / "summary.json").read_text()) for r in (renamed, builtin)]
    assert summaries[0]["passed"] == summaries[1]["passed"]
    grids = [pq.read_table(r / "grid.parquet") for r in (renamed, builtin)]
    assert grids[0]["passed"].to_pylist() == grids[1]["passed"].to_pylist()
