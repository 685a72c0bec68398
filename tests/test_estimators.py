"""vectors.estimators: each estimator against an independent computation on small data, the
stability measure where its answer is known, seeding, and the method's new settings."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import Ridge
from sklearn.svm import LinearSVC

from compute.vectors_table import read_vectors, vectors_to_table, write_vectors
from jobs.cli import parser
from jobs.cli.method_args import add_method_arguments, method_from
from vectors.errors import InputError
from vectors.estimators import (BAGS, CV_GRID, ESTIMATORS, RIDGE_ALPHA, choose_c, fit_and_measure, fit_estimator,
                                mean_pairwise_cosine, resampled_directions, stability)
from vectors.groups import Selection, select
from vectors.method import Method, MethodError
from vectors.summary import mean_by_property, results_table
from vectors.svm import SvmConfig, fit_selection

DIM = 20


def _world(n=600, noise=0.5, seed=0):
    """Latents (n, DIM) and a score that grows along a known unit normal, plus noise."""
    rng = np.random.default_rng(seed)
    normal = rng.standard_normal(DIM)
    normal /= np.linalg.norm(normal)
    latents = rng.standard_normal((n, DIM)).astype(np.float32)
    scores = latents @ normal + noise * rng.standard_normal(n)
    return latents, scores, normal


def _selection(scores, prop="eyes", ratio=0.25, seed=0, groups=None):
    """The selection of `prop` in the first row's group: one group 'all', or 'h'/'l' groups given."""
    group_by = () if groups is None else ("hair_color",)
    groups = np.full(len(scores), "all") if groups is None else groups
    return select({prop: scores}, groups, groups[0], prop, Method(group_by=group_by, ratio=ratio), seed)


def _unit(v):
    v = np.asarray(v, np.float64).reshape(-1)
    return v / np.linalg.norm(v)


def _linearsvc(x_pos, x_neg, C=1.0):
    x = np.concatenate([x_pos, x_neg]).astype(np.float64)
    y = np.r_[np.ones(len(x_pos)), np.zeros(len(x_neg))]
    return LinearSVC(C=C, dual="auto", max_iter=1000, random_state=0).fit(x, y)


def _midpoint_accuracy(d, tp, tn, vp, vn):
    t = ((tp @ d).mean() + (tn @ d).mean()) / 2
    return ((vp @ d > t).sum() + (vn @ d <= t).sum()) / (len(vp) + len(vn))


# ---- each estimator against a computation by hand ---------------------------------------
def test_svm_is_the_reference_fit_exactly():
    """LinearSVC(C=1) on the training rows, liblinear seeded: by hand, and the same on a rerun."""
    from sklearn.svm import LinearSVC

    latents, scores, normal = _world()
    s = _selection(scores)
    x = np.concatenate([latents[s.train_pos], latents[s.train_neg]]).astype(np.float64)
    y = np.r_[np.ones(len(s.train_pos)), np.zeros(len(s.train_neg))]
    coef = LinearSVC(C=1.0, dual="auto", max_iter=1000, random_state=0).fit(x, y).coef_[0]
    reference = fit_selection(latents, s, SvmConfig())
    np.random.seed(5)  # the global generator no longer matters
    ours = fit_estimator(latents, s, scores, "svm", SvmConfig(), random_state=123)
    np.testing.assert_array_equal(ours.direction, reference.direction)
    np.testing.assert_array_equal(ours.direction, (coef / np.linalg.norm(coef)).astype(np.float32))
    assert ours.val_accuracy == reference.val_accuracy and ours.converged == reference.converged
    assert ours.direction @ normal > 0.9  # toward larger scores


def test_svm_refit_is_a_linearsvc_on_every_selected_row():
    latents, scores, _ = _world()
    s = _selection(scores)
    r = fit_estimator(latents, s, scores, "svm_refit")
    by_hand = _linearsvc(latents[np.r_[s.train_pos, s.val_pos]], latents[np.r_[s.train_neg, s.val_neg]])
    np.testing.assert_allclose(r.direction, _unit(by_hand.coef_), atol=1e-6)
    assert r.val_accuracy == fit_selection(latents, s).val_accuracy  # validated before the refit


def test_bagged_svm_is_the_normalised_mean_of_its_split_fits():
    latents, scores, _ = _world()
    s = _selection(scores)  # k = 150: 120 training rows per class, 30 held out
    r = fit_estimator(latents, s, scores, "bagged_svm", random_state=7)
    rng = np.random.default_rng(7)
    x_pos, x_neg = latents[s.train_pos].astype(np.float64), latents[s.train_neg].astype(np.float64)
    normals = []
    for _ in range(BAGS):
        pos, neg = rng.permutation(x_pos), rng.permutation(x_neg)
        normals.append(_unit(_linearsvc(pos[24:], neg[24:]).coef_))  # 20% of 120 held out
    expected = _unit(np.mean(normals, axis=0))
    np.testing.assert_allclose(r.direction, expected, atol=1e-6)
    tp, tn = latents[s.train_pos], latents[s.train_neg]
    assert r.val_accuracy == pytest.approx(_midpoint_accuracy(expected, tp, tn, latents[s.val_pos], latents[s.val_neg]))


def test_svm_cv_picks_the_c_a_hand_loop_picks():
    latents, scores, _ = _world(noise=2.0, seed=1)  # overlapping classes: C matters
    s = _selection(scores, ratio=0.4)  # k = 240: 192 training rows per class, 38 held out in the inner split
    x_pos, x_neg = latents[s.train_pos].astype(np.float64), latents[s.train_neg].astype(np.float64)
    rng = np.random.default_rng(3)
    pos, neg = rng.permutation(x_pos), rng.permutation(x_neg)
    held = int(round(len(s.val_pos) / s.k * len(x_pos)))
    v, vy = np.concatenate([pos[:held], neg[:held]]), np.r_[np.ones(held), np.zeros(held)]
    accuracy = [_linearsvc(pos[held:], neg[held:], c).score(v, vy) for c in CV_GRID]
    assert len(set(accuracy)) > 1, "the data should make C matter"
    best = CV_GRID[int(np.argmax(accuracy))]
    assert choose_c(x_pos, x_neg, SvmConfig(), np.random.default_rng(3), len(s.val_pos) / s.k) == best
    r = fit_estimator(latents, s, scores, "svm_cv", random_state=3)
    np.testing.assert_allclose(r.direction, _unit(_linearsvc(x_pos, x_neg, best).coef_), atol=1e-6)
    assert r.c == best  # recorded, so vectors.parquet says which C each direction used


def test_mean_diff_is_the_difference_of_the_training_class_means():
    latents, scores, normal = _world()
    s = _selection(scores)
    r = fit_estimator(latents, s, scores, "mean_diff")
    tp, tn = latents[s.train_pos].astype(np.float64), latents[s.train_neg].astype(np.float64)
    expected = _unit(tp.sum(axis=0) / len(tp) - tn.sum(axis=0) / len(tn))
    np.testing.assert_allclose(r.direction, expected, atol=1e-6)
    assert r.val_accuracy == pytest.approx(_midpoint_accuracy(expected, tp, tn, latents[s.val_pos], latents[s.val_neg]))
    assert r.direction @ normal > 0.8 and r.solver == "mean_diff" and r.converged


def test_ridge_is_the_closed_form_on_every_group_row_but_the_held_out_ones():
    latents, scores, normal = _world()
    groups = np.where(np.arange(600) % 3 == 0, "h", "l")  # the group: every third row
    s = _selection(scores, groups=groups)
    assert s.rows.tolist() == list(range(0, 600, 3))
    r = fit_estimator(latents, s, scores, "ridge")
    rows = [i for i in range(0, 600, 3) if i not in set(s.val_pos) | set(s.val_neg)]
    x = latents[rows].astype(np.float64)
    x -= x.mean(axis=0)
    y = (scores[rows] - scores[rows].mean()) / scores[rows].std()
    lam = RIDGE_ALPHA * np.trace(x.T @ x) / DIM
    closed = np.linalg.inv(x.T @ x + lam * np.eye(DIM)) @ x.T @ y
    np.testing.assert_allclose(r.direction, _unit(closed), atol=1e-6)
    sklearn_coef = Ridge(alpha=lam).fit(latents[rows].astype(np.float64), y).coef_  # independent solver
    np.testing.assert_allclose(r.direction, _unit(sklearn_coef), atol=1e-6)
    assert r.direction @ normal > 0.9 and r.solver == "ridge"
    with pytest.raises(InputError, match="needs the scores"):
        fit_estimator(latents, s, None, "ridge")


def test_every_estimator_gives_a_unit_float32_direction_toward_larger_scores():
    latents, scores, normal = _world()
    s = _selection(scores)
    for name in ESTIMATORS:
        r = fit_and_measure(latents, {"eyes": scores}, s, name, SvmConfig(), splits=3, seed=0)
        assert r.direction.dtype == np.float32 and abs(np.linalg.norm(r.direction) - 1) < 1e-6, name
        assert r.direction @ normal > 0.8 and 0.9 <= r.val_accuracy <= 1, name
        assert 0 < r.stability < 1, name


def test_unknown_estimator_is_refused():
    latents, scores, _ = _world(n=100)
    with pytest.raises(InputError, match="estimator must be one of svm, svm_refit, .* got 'lasso'"):
        fit_estimator(latents, _selection(scores), scores, "lasso")


# ---- stability --------------------------------------------------------------------------
def test_stability_is_one_when_every_resample_gives_the_same_direction():
    assert mean_pairwise_cosine([[0.6, 0.8]] * 4) == 1.0
    assert mean_pairwise_cosine([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]) == pytest.approx(1 / 3)
    # Two distinct points, each repeated: every subsample has the same class means.
    latents = np.repeat(np.array([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]], np.float32), 50, axis=0)
    scores = np.r_[np.full(50, 1.0), np.full(50, -1.0)] + np.linspace(0, 1e-3, 100)
    s = _selection(scores, ratio=0.5)
    assert stability(latents, s, scores, "mean_diff", splits=5, seed=4) == 1.0
    assert stability(latents, s, scores, "svm", splits=5, seed=4) == pytest.approx(1.0, abs=1e-9)


def test_stability_is_below_one_on_noisy_data_and_off_for_fewer_than_two_splits():
    latents, scores, _ = _world(noise=1.0)
    s = _selection(scores)
    value = stability(latents, s, scores, "svm", splits=5, seed=0)
    assert 0 < value < 1
    directions = resampled_directions(latents, s, scores, "svm", splits=5,
                                      random_state=np.random.default_rng(0))
    assert len(directions) == 5 and min(a @ b for a in directions for b in directions) < 0.9999
    assert np.isnan(stability(latents, s, scores, "svm", splits=1))
    assert np.isnan(stability(latents, s, scores, "svm", splits=0))
    with pytest.raises(InputError, match="stability splits"):
        stability(latents, s, scores, "svm", splits=-1)


def test_fits_are_seeded_by_group_and_property_not_by_order():
    latents, scores, _ = _world(noise=1.0)
    groups = np.where(np.arange(600) < 300, "h", "l")
    method = Method(group_by=("hair_color",), ratio=0.25)
    table = {"eyes": scores, "hair_color": np.zeros(600)}
    a, b = (select(table, groups, g, "eyes", method, seed=2) for g in ("h", "l"))

    def run(selections, seed=2):
        return {x.group: fit_and_measure(latents, table, x, "bagged_svm", SvmConfig(), 4, seed) for x in selections}

    forward, backward = run([a, b]), run([b, a])
    for g in ("h", "l"):
        np.testing.assert_array_equal(forward[g].direction, backward[g].direction)
        assert forward[g].stability == backward[g].stability and forward[g].val_accuracy == backward[g].val_accuracy
    assert forward["h"].stability != forward["l"].stability
    assert run([a], seed=3)["h"].stability != forward["h"].stability


# ---- the method's settings and the vectors table ----------------------------------------
def test_method_round_trip_old_files_and_errors():
    m = Method(estimator="ridge", stability_splits=8)
    assert Method.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    assert m.fit_config()["estimator"] == "ridge" and m.fit_config()["stability_splits"] == 8
    assert Method(estimator="mean_diff").fit_config() != Method().fit_config()  # no reuse across estimators
    old = Method().to_dict()
    del old["estimator"], old["stability_splits"]
    assert Method.from_dict(old) == Method() and (Method().estimator, Method().stability_splits) == ("svm", 5)
    with pytest.raises(MethodError, match="estimator must be one of svm, svm_refit, bagged_svm, svm_cv, "
                                          "mean_diff, ridge, got 'lasso'"):
        Method(estimator="lasso")
    for bad in (-1, 1.5, True, 101):
        with pytest.raises(MethodError, match="stability_splits must be an integer in"):
            Method(stability_splits=bad)


def test_flags_set_the_estimator_and_the_stability_splits():
    p = parser("t")
    add_method_arguments(p)
    m = method_from(p.parse_args(["--estimator", "svm_cv", "--stability-splits", "0"]))
    assert (m.estimator, m.stability_splits) == ("svm_cv", 0)
    assert method_from(p.parse_args([]), base=m) == m  # unset flags keep the base
    with pytest.raises(MethodError, match="stability_splits must be"):
        method_from(p.parse_args(["--stability-splits", "-2"]))


def test_vectors_files_without_the_new_columns_read_as_nan(tmp_path):
    row = {"space": "w", "group": "all", "property": "eyes", "direction": np.eye(3, dtype=np.float32)[0],
           "val_accuracy": 0.9, "group_size": 10, "k": 2, "ratio": 0.2, "converged": True, "fit_seconds": 0.1}
    old = vectors_to_table([row]).drop(["stability", "estimator", "svm_c"])
    pq.write_table(old, tmp_path / "old.parquet")
    table, _, _ = read_vectors(tmp_path / "old.parquet")
    assert np.isnan(table["stability"][0].as_py()) and table["estimator"][0].as_py() is None
    assert np.isnan(table["svm_c"][0].as_py())
    write_vectors([{**row, "stability": 0.97, "estimator": "svm_cv", "svm_c": 0.1}], {}, tmp_path / "new.parquet")
    table, _, _ = read_vectors(tmp_path / "new.parquet")
    assert table.schema.field("stability").type == pa.float64()
    assert [table[c][0].as_py() for c in ("stability", "estimator", "svm_c")] == [0.97, "svm_cv", 0.1]


def test_summaries_show_mean_stability_per_property():
    assert mean_by_property(["eyes", "eyes", "pose", "mouth"], [0.9, 0.8, float("nan"), None],
                            ["eyes", "mouth", "pose"]) == {"eyes": pytest.approx(0.85), "mouth": None, "pose": None}
    summary = {"properties": ["eyes", "pose"], "mean_corr": {"eyes": 0.9, "pose": 0.8},
               "mean_abs_corr": {"eyes": 0.91, "pose": 0.85},
               "cutoffs": {"eyes": 0.9, "pose": 0.9}, "sum_mean_abs_corr": 1.7, "passed": 1, "cases": 2,
               "passed_ratio": 0.5, "degenerate": 0, "per_group": {"all": {"passed": 1, "cases": 2}},
               "stability": {"eyes": 0.9312, "pose": None}}
    lines = results_table(summary, {"eyes": 0.99, "pose": 0.98}).splitlines()
    assert "stability" in lines[1]
    assert lines[2].split() == ["eyes", "0.9900", "0.9312", "0.9000", "0.9100", "0.90"]
    assert lines[3].split()[:3] == ["pose", "0.9800", "-"] and "mean |corr|" in lines[1]
    assert "stability" in results_table({**summary, "stability": None}, None)  # older summaries: '-'


def test_selection_without_group_rows_still_fits_classifiers():
    latents, scores, _ = _world()
    s = replace(_selection(scores), rows=None)  # as built before the rows were recorded
    assert isinstance(s, Selection)
    assert fit_estimator(latents, s, None, "mean_diff").val_accuracy > 0.9
