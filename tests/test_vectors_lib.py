"""vectors/: groups, selection, SVM directions, orthogonalization and interop, against
hand-computed or independently known answers."""
from __future__ import annotations

import numpy as np
import pytest

from vectors.groups import assign_groups, select, select_extremes
from vectors.method import SEEDS_GROUPING, Method

GROUP_NAMES = Method().group_names
from vectors.interop import (boundary_name, parse_reference_csv_name, read_reference_csv,
                             reference_csv_name, write_boundary, write_reference_csv)
from vectors.svm import SvmConfig, fit_direction, orthogonalize


def test_group_letters_follow_the_medians_in_order():
    scores = {"hair_color": np.array([0.0, -1.0, 2.0, -0.5]),
              "hair_length": np.array([1.0, 1.0, -3.0, 0.3]),
              "background_mean": np.array([0.1, -0.1, 0.1, 0.0])}
    medians = {"hair_color": 0.0, "hair_length": 0.3, "background_mean": 0.0}
    # a score equal to its median counts as 'h'
    assert assign_groups(scores, SEEDS_GROUPING, medians).tolist() == ["hhh", "lhl", "hlh", "lhh"]
    assert GROUP_NAMES == ("hhh", "hhl", "hlh", "hll", "lhh", "lhl", "llh", "lll")


def test_select_extremes_k_and_ties():
    values = np.array([5.0, 1.0, 3.0, 3.0, 9.0, 0.0, 7.0])
    rows = np.array([0, 1, 2, 3, 4, 5, 6])
    top, bottom, k = select_extremes(values, rows, 0.3)  # int(0.3 * 7) = 2
    assert k == 2 and top.tolist() == [4, 6] and bottom.tolist() == [5, 1]
    top, bottom, k = select_extremes(values, rows, 0.1)  # int(0.7) = 0 -> k = 1
    assert k == 1 and top.tolist() == [4] and bottom.tolist() == [5]


@pytest.mark.parametrize("ratio", [0, -0.1, 0.51, float("nan")])
def test_ratio_outside_range_is_refused(ratio):
    with pytest.raises(ValueError, match="ratio"):
        select_extremes(np.zeros(4), np.arange(4), ratio)
    with pytest.raises(ValueError, match="ratio"):
        Method(ratio=ratio)


def _toy_scores(n=400, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(n) for k in ("eyes", "mouth", "pose", "hair_color", "hair_length", "background_mean")}


def test_select_split_is_stratified_seeded_and_independent_of_other_fits():
    scores = _toy_scores()
    groups = np.array(["hhh"] * 200 + ["lll"] * 200)
    s = select(scores, groups, "hhh", "eyes", Method(ratio=0.25), seed=1)
    assert s.k == 50 and s.group_size == 200
    assert (len(s.train_pos), len(s.val_pos), len(s.train_neg), len(s.val_neg)) == (40, 10, 40, 10)
    pos, neg = np.r_[s.train_pos, s.val_pos], np.r_[s.train_neg, s.val_neg]
    assert (groups[pos] == "hhh").all() and scores["eyes"][pos].min() > scores["eyes"][neg].max()
    again = select(scores, groups, "hhh", "eyes", Method(ratio=0.25), seed=1)
    assert np.array_equal(s.val_pos, again.val_pos)
    other = select(scores, groups, "hhh", "eyes", Method(ratio=0.25), seed=2)
    assert not np.array_equal(np.sort(s.val_pos), np.sort(other.val_pos))


def test_too_small_group_names_group_and_size():
    scores = _toy_scores(40)
    groups = np.array(["hhh"] * 30 + ["hll"] * 10)
    with pytest.raises(ValueError, match="group 'hll' has 10 samples"):
        select(scores, groups, "hll", "mouth", Method(), seed=0)


def _separable(n=600, dim=20, seed=0, scales=None):
    rng = np.random.default_rng(seed)
    normal = rng.standard_normal(dim)
    normal /= np.linalg.norm(normal)
    x = rng.standard_normal((n, dim))
    if scales is not None:
        x *= scales
    margin = x @ normal
    order = np.argsort(margin)
    return x[order[-n // 4:]], x[order[: n // 4]], normal


def test_direction_recovers_the_true_normal_and_points_to_larger_scores():
    pos, neg, normal = _separable()
    r = fit_direction(pos[:120], neg[:120], pos[120:], neg[120:])
    assert abs(np.linalg.norm(r.direction) - 1) < 1e-6 and r.direction.dtype == np.float32
    assert r.direction @ normal > 0.95
    assert r.val_accuracy == 1.0 and r.converged


def test_scaled_fit_is_mapped_back_to_latent_coordinates():
    # Standardising makes a fit blind to per-dim scales s: fitting on X0 * s must give the
    # X0 fit's normal divided by s (the map back to latent coordinates), renormalised.
    pos, neg, _ = _separable()
    scales = np.r_[np.full(10, 10.0), np.full(10, 0.1)]
    cfg = SvmConfig(scale=True)
    base = fit_direction(pos[:120], neg[:120], pos[120:], neg[120:], cfg)
    scaled = fit_direction(pos[:120] * scales, neg[:120] * scales, pos[120:] * scales, neg[120:] * scales, cfg)
    expected = base.direction / scales
    np.testing.assert_allclose(scaled.direction, expected / np.linalg.norm(expected), atol=1e-5)
    assert scaled.val_accuracy == base.val_accuracy


def test_non_convergence_is_reported_not_silenced():
    pos, neg, _ = _separable(n=2000, dim=50)
    r = fit_direction(pos[:400], neg[:400], pos[400:], neg[400:], SvmConfig(max_iter=1, dual="true"))
    assert r.converged is False


def test_svc_solver_agrees_with_linearsvc():
    pos, neg, normal = _separable()
    r = fit_direction(pos[:120], neg[:120], pos[120:], neg[120:], SvmConfig(solver="svc", C=0.1, max_iter=100000))
    assert r.direction @ normal > 0.9 and r.val_accuracy >= 0.95


def test_bad_svm_settings_are_refused():
    for kwargs in ({"solver": "rbf"}, {"C": 0}, {"dual": "maybe"}, {"max_iter": 0}):
        with pytest.raises(ValueError):
            SvmConfig(**kwargs)


def test_orthogonalize_gives_unit_vectors_orthogonal_to_the_others():
    rng = np.random.default_rng(3)
    dirs = {p: rng.standard_normal(30).astype(np.float32) for p in ("eyes", "mouth", "pose")}
    out = orthogonalize(dirs)
    for p, d in out.items():
        assert abs(np.linalg.norm(d) - 1) < 1e-6
        for q in dirs:
            if q != p:
                assert abs(d @ dirs[q]) < 1e-5
        assert d @ dirs[p] > 0  # still points the same way
    with pytest.raises(ValueError, match="span"):
        orthogonalize({"eyes": dirs["eyes"], "mouth": dirs["mouth"], "pose": dirs["eyes"] + dirs["mouth"]})


def test_reference_csv_round_trip_and_sign(tmp_path):
    d = np.random.default_rng(4).standard_normal(7).astype(np.float32)
    d /= np.linalg.norm(d)
    path = tmp_path / reference_csv_name("mouth", "w", "hlh")
    assert path.name == "mouth_change_w_vector_hlh.csv"
    write_reference_csv(d, path)
    lines = path.read_text().splitlines()
    assert lines[0] == ",0,1,2,3,4,5,6" and lines[1].startswith("0,")
    assert np.allclose([float(v) for v in lines[1].split(",")[1:]], -d)  # reference sign
    np.testing.assert_array_equal(read_reference_csv(path), d)
    assert parse_reference_csv_name(path.name) == ("mouth", "w", "hlh")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="reference layout"):
        read_reference_csv(tmp_path / "bad.csv")


def test_interfacegan_boundary_shape_dtype_norm(tmp_path):
    d = np.arange(1, 6, dtype=np.float64)
    path = tmp_path / boundary_name("pose", "z", "lll")
    write_boundary(d, path)
    b = np.load(path)
    assert b.shape == (1, 5) and b.dtype == np.float32 and abs(np.linalg.norm(b) - 1) < 1e-6
    assert np.allclose(b[0], d / np.linalg.norm(d))
