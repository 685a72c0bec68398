"""`jobs.fit` on the synthetic world: accuracy, ground truth, the vectors.parquet contract,
exports and bad input."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from compute.sessions import make_session, run_single
from compute.tables import read_metadata, vector_matrix, write_parquet_atomic
from compute.vectors_table import read_vectors
from conftest import call_job, copy_samples
from jobs import fit, import_vectors
from vectors.errors import InputError
from vectors.estimators import CV_GRID
from vectors.groups import assign_groups
from vectors.method import SEEDS_GROUPING, Method

PROPERTIES = Method().property_names

N = 8000


@pytest.fixture(scope="module")
def run8k(samples_8k, tmp_path_factory):
    """A run of the session's 8,000 samples (seed 11; shared with tests/test_generation.py), copied."""
    return copy_samples(samples_8k, tmp_path_factory.mktemp("run8k"))


@pytest.fixture(scope="module")
def fitted(run8k):
    fit.main(["--run", str(run8k), "--ratio", "0.2"])
    fit.main(["--run", str(run8k), "--ratio", "0.2", "--space", "z", "--out", str(run8k / "vectors_z.parquet")])
    return run8k


def _accuracy(path, prop):
    table, _, _ = read_vectors(path)
    acc = np.array(table["val_accuracy"].to_pylist())
    props = np.array(table["property"].to_pylist())
    return acc[props == prop]


def test_accuracy_in_w_and_w_beats_z(fitted):
    for prop in PROPERTIES:
        assert _accuracy(fitted / "vectors.parquet", prop).mean() >= 0.9, prop
    w_mean = np.mean([_accuracy(fitted / "vectors.parquet", p).mean() for p in PROPERTIES])
    z_mean = np.mean([_accuracy(fitted / "vectors_z.parquet", p).mean() for p in PROPERTIES])
    assert w_mean > z_mean


def test_directions_move_their_true_parameter_the_intended_way(fitted, bundle):
    truth = make_session(bundle.graph_bytes("truth"), threads=2)
    names = bundle.manifest["truth_names"]
    samples = pq.read_table(fitted / "samples.parquet")
    w = vector_matrix(samples["w"])
    groups = assign_groups({k: samples[k].to_numpy() for k in samples.column_names if k not in ("z", "w")},
                           SEEDS_GROUPING, bundle.manifest["group_medians"])
    _, directions, _ = read_vectors(fitted / "vectors.parquet")
    for (group, prop), d in directions.items():
        base = w[groups == group][:200]
        change = run_single(truth, base + d) - run_single(truth, base)
        moved = change[:, names.index(prop)]
        assert moved.mean() > 0.3 and (moved > 0).mean() > 0.95, (group, prop, moved.mean())


def test_vectors_parquet_contract(fitted, bundle):
    table = pq.read_table(fitted / "vectors.parquet")
    assert table.num_rows == 24
    assert table.schema.field("direction").type == pa.list_(pa.float32(), 512)
    for name, kind in (("space", pa.string()), ("group", pa.string()), ("property", pa.string()),
                       ("val_accuracy", pa.float64()), ("group_size", pa.int64()), ("k", pa.int64()),
                       ("ratio", pa.float64()), ("converged", pa.bool_()), ("fit_seconds", pa.float64()),
                       ("stability", pa.float64()), ("estimator", pa.string()), ("svm_c", pa.float64())):
        assert table.schema.field(name).type == kind, name
    assert set(table["estimator"].to_pylist()) == {"svm"} and set(table["svm_c"].to_pylist()) == {1.0}
    norms = np.linalg.norm(vector_matrix(table["direction"]), axis=1)
    assert np.allclose(norms, 1, atol=1e-5)
    sizes = dict(zip(table["group"].to_pylist(), table["group_size"].to_pylist()))
    assert sum(sizes.values()) == N
    for size, k in zip(table["group_size"].to_pylist(), table["k"].to_pylist()):
        assert k == max(int(0.2 * size), 1)
    config = read_metadata(fitted / "vectors.parquet")["fit"]
    assert config["space"] == "w" and config["svm"]["solver"] == "linearsvc" and config["svm"]["C"] == 1.0
    assert config["bundle_manifest_sha256"] == bundle.manifest_sha256
    assert config["median_values"] == bundle.manifest["group_medians"] and config["medians"] == "manifest"
    assert read_metadata(fitted / "vectors.parquet")["method"] == Method().to_dict()
    z_table = pq.read_table(fitted / "vectors_z.parquet")
    assert z_table.schema.field("direction").type == pa.list_(pa.float32(), 515)


def test_orthogonalize_projects_out_the_other_two_original_directions(fitted):
    out = fitted / "vectors_orth.parquet"
    fit.main(["--run", str(fitted), "--orthogonalize", "--out", str(out)])
    _, directions, meta = read_vectors(out)
    _, original, _ = read_vectors(fitted / "vectors.parquet")  # same seed and ratio: same fits
    assert meta["fit"]["orthogonalize"] is True
    for (group, prop), d in directions.items():
        for other in PROPERTIES:
            if other != prop:
                assert abs(d @ original[(group, other)]) < 1e-5
        assert d @ original[(group, prop)] > 0.5


def test_sample_medians_balance_the_groups(fitted):
    out = fitted / "vectors_balanced.parquet"
    fit.main(["--run", str(fitted), "--medians", "samples", "--out", str(out)])
    table, _, meta = read_vectors(out)
    assert meta["fit"]["medians"] == "samples"
    # Each grouping score splits exactly in half; groups are near N/8 unless scores correlate.
    sizes = np.array(table["group_size"].to_pylist()[::3])
    assert sizes.sum() == N and sizes.min() > 0.5 * N / 8


def test_csv_and_boundary_exports_round_trip(fitted, tmp_path):
    out = tmp_path / "v.parquet"
    fit.main(["--run", str(fitted), "--out", str(out), "--export-csv", str(tmp_path / "csv"),
              "--export-boundaries", str(tmp_path / "npy")])
    assert len(list((tmp_path / "csv").glob("*_change_w_vector_*.csv"))) == 24
    boundary = np.load(tmp_path / "npy" / "pose_w_hlh_boundary.npy")
    _, directions, _ = read_vectors(out)
    np.testing.assert_allclose(boundary[0], directions[("hlh", "pose")], atol=1e-6)
    import_vectors.main(["--csv-dir", str(tmp_path / "csv"), "--out", str(tmp_path / "imported.parquet")])
    _, imported, meta = read_vectors(tmp_path / "imported.parquet")
    assert meta["fit"]["imported_from"] == str(tmp_path / "csv")
    for key, d in directions.items():
        np.testing.assert_allclose(imported[key], d, atol=1e-6)


def test_nonfinite_scores_error_with_count_or_are_dropped(fitted, tmp_path):
    table = pq.read_table(fitted / "samples.parquet")
    eyes = table["eyes"].to_numpy().copy()
    eyes[[3, 50, 700]] = [np.nan, np.inf, -np.inf]
    run = tmp_path / "run"
    write_parquet_atomic(table.set_column(table.schema.get_field_index("eyes"), "eyes", pa.array(eyes)),
                         run / "samples.parquet")
    with pytest.raises(InputError, match="3 rows with NaN or inf"):
        fit.main(["--run", str(run)])
    fit.main(["--run", str(run), "--drop-nonfinite"])
    assert read_metadata(run / "vectors.parquet")["fit"]["dropped_nonfinite"] == 3


@pytest.mark.parametrize("extra, message", [
    (["--ratio", "0.7"], "ratio must be in (0, 0.5]"),
    (["--ratio", "0"], "ratio must be in (0, 0.5]"),
    (["--space", "x"], "space must be w (v7), z (v6) or a layer range"),
    (["--C", "-1"], "C must be > 0"),
])
def test_bad_arguments_are_one_line_exit_2(fitted, extra, message):
    result = call_job("jobs.fit", "--run", str(fitted), "--out", "/nonexistent/never.parquet", *extra)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr


def test_missing_samples_columns_and_small_groups(fitted, tmp_path):
    with pytest.raises(InputError, match="no samples"):
        fit.main(["--run", str(tmp_path)])
    table = pq.read_table(fitted / "samples.parquet")
    write_parquet_atomic(table.drop(["pose"]), tmp_path / "nopose" / "samples.parquet")
    with pytest.raises(InputError, match="has no column pose"):
        fit.main(["--run", str(tmp_path / "nopose")])
    write_parquet_atomic(table.slice(0, 80), tmp_path / "tiny" / "samples.parquet")
    with pytest.raises(InputError, match=r"group '\w{3}' has \d+ samples"):
        fit.main(["--run", str(tmp_path / "tiny"), "--ratio", "0.1"])


def test_svm_cv_records_the_c_it_chose_per_direction(fitted, tmp_path):
    out = tmp_path / "cv.parquet"
    result = call_job("jobs.fit", "--run", str(fitted), "--out", str(out), "--estimator", "svm_cv",
                      "--stability-splits", "0")
    assert result.returncode == 0, result.stderr[-2000:]
    table = pq.read_table(out)
    chosen = table["svm_c"].to_pylist()
    assert table.num_rows == 24 and set(chosen) <= set(CV_GRID)
    shown = [float(line.split("  C ")[1].split()[0]) for line in result.stdout.splitlines() if "  C " in line]
    assert sorted(shown) == sorted(chosen)  # each progress line names the C its direction used


def _fit_with_every_code(run, method, seed=0):
    """The fit as it was before the driver read only the selected codes: the whole latent
    column in the object store, each Ray task indexing it with the samples' row numbers (in
    Ray workers as the stage runs them: BLAS threads there differ from this process's)."""
    import ray

    from compute.fitting import direction_rows, gather_fits, load_samples, plan_fit, submit_fits

    latents = vector_matrix(pq.read_table(run / "samples.parquet", columns=[method.latent])[method.latent])
    samples = load_samples(run, method)
    plan = plan_fit(samples, method, seed)
    pending = submit_fits(ray.put(latents), plan.selections, method.svm, method.estimator, method.stability_splits,
                          seed, ray.put(samples.scores))
    return direction_rows(gather_fits(pending, progress=False), method)


@pytest.mark.parametrize("estimator", ["svm", "ridge"])
def test_reading_only_the_selected_codes_fits_byte_for_byte_as_before(fitted, tmp_path, estimator):
    """The top/bottom k (svm) or whole groups (ridge) read by row give the directions,
    accuracies and stabilities the whole matrix gave, to the last bit."""
    method = Method(ratio=0.2, estimator=estimator, stability_splits=2)
    out = tmp_path / f"{estimator}.parquet"
    fit.main(["--run", str(fitted), "--ratio", "0.2", "--estimator", estimator, "--stability-splits", "2",
              "--out", str(out)])
    table = pq.read_table(out)
    old = _fit_with_every_code(fitted, method)
    assert len(old) == table.num_rows == 24
    keys = list(zip(table["group"].to_pylist(), table["property"].to_pylist()))
    written = dict(zip(keys, vector_matrix(table["direction"])))
    for row in old:
        assert written[(row["group"], row["property"])].tobytes() == row["direction"].astype(np.float32).tobytes()
    for name in ("val_accuracy", "stability", "k", "group_size"):
        written = dict(zip(keys, table[name].to_pylist()))
        assert all(written[(r["group"], r["property"])] == r[name] for r in old), name
