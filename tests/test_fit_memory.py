"""The fit's driver holds what the method selects, not every code (issue 24, item 4): the
scores of all rows, then the codes of the selected rows only, read part by part from a
samples table of several chunk files. A synthetic table written here with pyarrow (random
scores and codes, the sampling metadata the fit reads); no Ray, no model."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from compute import samples_store
from compute.fitting import FitError, load_samples, plan_fit, read_selected, selected_rows
from compute.runs import SAMPLES_FILE
from compute.tables import vector_column, vector_matrix, with_metadata
from vectors.estimators import fit_and_measure
from vectors.method import Method

N, D, PARTS, ROW_GROUP = 48_000, 256, 4, 4_000
METHOD = Method(ratio=0.05)
SCORES = [*METHOD.property_names, *METHOD.group_by]


def write_samples(run, latents: np.ndarray, scores: dict) -> None:
    """RUN/samples.parquet as sampling leaves it: a directory of chunk files in id order, each
    with the sampling metadata (here several row groups per chunk, so reads skip within parts)."""
    directory = run / SAMPLES_FILE
    directory.mkdir(parents=True)
    info = {"sampling": {"n": len(latents), "seed": 0, "group_medians": {g: 0.0 for g in METHOD.group_by}}}
    for i, ids in enumerate(np.array_split(np.arange(len(latents)), PARTS)):
        table = pa.table({"sample_id": pa.array(ids, pa.int64()), "w": vector_column(latents[ids]),
                          **{name: pa.array(values[ids], pa.float32()) for name, values in scores.items()}})
        pq.write_table(with_metadata(table, info), directory / f"{i:06d}.parquet", row_group_size=ROW_GROUP)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    rng = np.random.default_rng(7)
    latents = rng.standard_normal((N, D), dtype=np.float32)
    scores = {name: rng.standard_normal(N).astype(np.float32) for name in SCORES}
    for prop in METHOD.property_names:  # a score the codes explain, so the fits find something
        scores[prop] += latents[:, METHOD.property_names.index(prop)]
    where = tmp_path_factory.mktemp("fitmem")
    write_samples(where, latents, scores)
    return where


def test_read_rows_returns_exactly_the_tables_rows(run):
    path = run / SAMPLES_FILE
    full = vector_matrix(pq.read_table(path)["w"])
    assert len(samples_store.parts(path)) == PARTS and full.shape == (N, D)
    rng = np.random.default_rng(0)
    edges = [0, ROW_GROUP - 1, ROW_GROUP, N // PARTS - 1, N // PARTS, N - 1]  # row-group and part boundaries
    for rows in (np.sort(rng.choice(N, 3000, replace=False)), np.array(edges), np.arange(N), np.zeros(0, int)):
        got = samples_store.read_rows(path, "w", rows)
        assert got.dtype == np.float32 and got.shape == (len(rows), D)
        assert np.array_equal(got, full[rows])
    for bad, message in ((np.array([5, 3]), "sorted"), (np.array([2, 2]), "unique"), (np.array([-1, 4]), "negative"),
                         (np.array([N]), f"beyond the {N} rows"), (np.array([0.5]), "row indices")):
        with pytest.raises(ValueError, match=message):
            samples_store.read_rows(path, "w", bad)
    batches = list(samples_store.iter_batches(path, ["sample_id"]))
    assert max(b.num_rows for b in batches) <= samples_store.BATCH_ROWS
    assert np.array_equal(np.concatenate([b.column(0).to_numpy() for b in batches]), np.arange(N))


def _peak_bytes(step):
    """(result, peak bytes of NumPy arrays + peak of Arrow's buffers) while `step` runs. NumPy
    reports its allocations to tracemalloc; Arrow's go to a pool counted on its own here."""
    pool, default = pa.proxy_memory_pool(pa.default_memory_pool()), pa.default_memory_pool()
    pa.set_memory_pool(pool)
    tracemalloc.start()
    try:
        result = step()
        return result, tracemalloc.get_traced_memory()[1] + pool.max_memory()
    finally:
        tracemalloc.stop()
        pa.set_memory_pool(default)


def test_the_driver_reads_only_the_selected_codes(run):
    def step():
        samples = load_samples(run, METHOD)
        plan = plan_fit(samples, METHOD, seed=3)
        return samples, plan, read_selected(samples, selected_rows(plan.selections, METHOD.estimator))

    (samples, plan, selected), peak = _peak_bytes(step)
    union = sorted({int(r) for s in plan.selections for r in np.r_[s.train_pos, s.train_neg, s.val_pos, s.val_neg]})
    assert selected.rows.tolist() == union and selected.latents.shape == (len(union), D)  # read = selected
    # ratio 0.05, 3 properties: at most 2 x 0.05 x 3 = 30% of the rows, here all but shared rows
    assert 0.2 * N < len(union) <= 2 * METHOD.ratio * len(METHOD.property_names) * N
    full = vector_matrix(pq.read_table(run / SAMPLES_FILE)["w"])
    assert np.array_equal(selected.latents, full[selected.rows])
    # docs/method.md's formula: per sample its scores (8 B each) and the plan's groups and
    # indices (under 64 B); the selected codes; one batch being decoded (under 8 batches of codes)
    bound = N * (len(SCORES) * 8 + 64) + selected.latents.nbytes + 8 * samples_store.BATCH_ROWS * D * 4
    assert peak < bound, (peak, bound)
    assert peak < 0.6 * full.nbytes  # holding every code would take more than this alone
    for s, c in zip(plan.selections, selected.compact(plan.selections, METHOD.estimator)):
        for field in ("train_pos", "train_neg", "val_pos", "val_neg"):  # renumbered, the same codes
            assert np.array_equal(selected.latents[getattr(c, field)], full[getattr(s, field)])
        assert np.array_equal(selected.scores[s.prop][c.train_pos], samples.scores[s.prop][s.train_pos])
        assert c.rows is None  # the SVM reads no group rows: they were not read


def test_ridge_selects_whole_groups_and_dropped_rows_fit_as_before(run, tmp_path):
    """Rows with a non-finite code or score are refused, or dropped before planning; the fit on
    the selected codes equals, byte for byte, the fit on every kept code read whole."""
    table = pq.read_table(run / SAMPLES_FILE)
    latents = vector_matrix(table["w"]).copy()
    scores = {name: table[name].to_numpy() for name in SCORES}
    latents[5, 3], latents[N - 2, 0] = np.nan, np.inf  # in the first and the last part
    scores["eyes"][20_000] = np.nan
    bad = tmp_path / "bad"
    write_samples(bad, latents, scores)
    with pytest.raises(FitError, match="has 3 rows with NaN or inf scores or latents"):
        load_samples(bad, METHOD)
    kept = np.ones(N, bool)
    kept[[5, N - 2, 20_000]] = False
    for method in (METHOD, Method(ratio=0.05, estimator="ridge")):
        samples = load_samples(bad, method, drop_nonfinite=True)
        assert samples.dropped == 3 and samples.n == N - 3 and np.array_equal(samples.kept, np.flatnonzero(kept))
        plan = plan_fit(samples, method, seed=1)
        selected = read_selected(samples, selected_rows(plan.selections, method.estimator))
        if method.estimator == "ridge":  # the whole of every group: every kept row
            assert np.array_equal(selected.rows, np.arange(N - 3))
        else:
            assert len(selected.rows) < 0.31 * N
        whole = latents[kept]  # the old path: every kept code in the driver
        for s, c in list(zip(plan.selections, selected.compact(plan.selections, method.estimator)))[::8]:
            old = fit_and_measure(whole, samples.scores, s, method.estimator, method.svm, 2, 1)
            new = fit_and_measure(selected.latents, selected.scores, c, method.estimator, method.svm, 2, 1)
            assert old.direction.tobytes() == new.direction.tobytes(), (s.group, s.prop)
            assert (old.val_accuracy, old.stability) == (new.val_accuracy, new.stability)


def test_a_missing_code_is_non_finite_and_a_foreign_column_is_refused(tmp_path):
    rng = np.random.default_rng(1)
    latents = rng.standard_normal((300, 8), dtype=np.float32)
    scores = {name: rng.standard_normal(300).astype(np.float32) for name in SCORES}
    write_samples(tmp_path / "nulls", latents, scores)
    part = sorted((tmp_path / "nulls" / SAMPLES_FILE).glob("*.parquet"))[1]  # rows 75-149
    table = pq.read_table(part)
    codes = [None if i == 4 else row for i, row in enumerate(table["w"].to_pylist())]
    pq.write_table(table.set_column(1, "w", pa.array(codes, table.schema.field("w").type)), part)
    with pytest.raises(FitError, match="has 1 rows with NaN or inf"):
        load_samples(tmp_path / "nulls", METHOD)
    samples = load_samples(tmp_path / "nulls", METHOD, drop_nonfinite=True)
    assert samples.dropped == 1 and 79 not in samples.kept and samples.n == 299
    got = read_selected(samples, np.arange(299))
    assert np.array_equal(got.latents, latents[samples.kept])
    assert np.array_equal(got.scores["pose"], scores["pose"][samples.kept])
    table = pq.read_table(part)
    pq.write_table(table.set_column(1, "w", pa.array(np.zeros(table.num_rows, np.float32))), part)
    with pytest.raises(FitError, match="is not a readable samples table"):
        load_samples(tmp_path / "nulls", METHOD)
