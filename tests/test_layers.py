"""Per-layer (W+) edits: a layer range moves only the synthesis layers it names."""
from __future__ import annotations

import numpy as np
import pytest

from compute.generation import CaseActor, DirectionSet
from compute.sessions import make_session, num_ws, run_single
from export.world import EDITED, LAYER_BANDS, NUM_WS, PARAMS
from vectors.edits import apply_edits, layer_codes
from vectors.errors import InputError
from vectors.method import Method


def test_layer_codes_move_only_the_named_layers():
    rng = np.random.default_rng(0)
    base, edited = rng.standard_normal((2, 4)), rng.standard_normal((2, 3, 4))
    codes = layer_codes(base, edited, (1, 2), 5)
    assert codes.shape == (2, 3, 5, 4) and codes.dtype == np.float32
    for layer in range(5):
        expected = edited if layer in (1, 2) else np.broadcast_to(base[:, None], edited.shape)
        np.testing.assert_array_equal(codes[:, :, layer], expected.astype(np.float32))
    # Every layer in range is the plain edit given to all layers.
    np.testing.assert_array_equal(layer_codes(base, edited, (0, 4), 5),
                                  np.repeat(edited[:, :, None].astype(np.float32), 5, axis=2))
    with pytest.raises(InputError, match="do not fit a synthesis with 5 layers"):
        layer_codes(base, edited, (3, 5), 5)


def test_the_built_in_synthesis_takes_per_layer_codes_and_one_w_means_all_layers(bundle):
    synthesis = make_session(bundle.graph_bytes("synthesis"))
    assert bundle.num_ws == num_ws(synthesis) == NUM_WS
    w = run_single(make_session(bundle.graph_bytes("mapping")),
                   np.random.default_rng(1).standard_normal((3, bundle.z_dim)).astype(np.float32))
    np.testing.assert_array_equal(run_single(synthesis, w),
                                  run_single(synthesis, np.repeat(w[:, None], NUM_WS, axis=1)))


@pytest.mark.parametrize("space, first, last", [("w:4-6", 4, 6), ("w:0-3", 0, 3)])
def test_a_layer_range_edit_leaves_the_parameters_of_other_layers_alone(bundle, space, first, last):
    """On the synthetic world every parameter reads a band of layers (export/world.py), so the
    true parameters outside the range must not move at all, and those inside must. (Eyes,
    mouth and pose also move each other through the world's cross-talk, whatever their
    layers, so the check is on the other parameters.)"""
    method = Method(space=space)
    rng = np.random.default_rng(2)
    matrices = {g: rng.standard_normal((3, bundle.w_dim)).astype(np.float32) / 8 for g in method.group_names}
    medians = bundle.manifest["group_medians"]
    graphs = {s: bundle.graph_bytes(s) for s in ("mapping", "synthesis", "scorer", "truth")}
    sets = [DirectionSet(matrices, space, medians), DirectionSet(matrices, "w", medians)]
    out = CaseActor(graphs, 3, bundle.z_dim, sets, method.group_by, bundle.score_names,
                    method.edit_weights())({"id": np.arange(4)})
    truth = out["edit_truth"]                                             # (B, K, E, T)
    bands = {n: band for n, band in LAYER_BANDS.items() if n not in EDITED}
    inside = [PARAMS.index(n) for n, (a, b) in bands.items() if first <= a and b <= last]
    outside = [PARAMS.index(n) for n, (a, b) in bands.items() if b < first or a > last]
    assert inside and outside
    spread = truth.std(axis=2)                                            # (B, K, T) over the edits
    assert spread[:, 0, outside].max() < 1e-5                             # ranged: untouched
    assert spread[:, 1, outside].min() > 1e-3                             # all layers: they move
    assert spread[:, 0, inside].min() > 1e-3
    # Inside the range the edit is the all-layer edit: those parameters move identically.
    np.testing.assert_allclose(truth[:, 0, :, inside], truth[:, 1, :, inside], atol=1e-4)


def test_the_ranged_actor_scores_the_codes_layer_codes_builds(bundle):
    method = Method(space="w:2-5")
    rng = np.random.default_rng(4)
    matrices = {g: rng.standard_normal((3, bundle.w_dim)).astype(np.float32) / 8 for g in method.group_names}
    graphs = {s: bundle.graph_bytes(s) for s in ("mapping", "synthesis", "scorer")}
    weights = method.edit_weights()
    out = CaseActor(graphs, 5, bundle.z_dim, [DirectionSet(matrices, method.space, bundle.manifest["group_medians"])],
                    method.group_by, bundle.score_names, weights)({"id": np.array([3])})
    sessions = {s: make_session(b) for s, b in graphs.items()}
    w = out["w"]
    edited = apply_edits(w, matrices[out["group"][0, 0]][None], weights)
    codes = layer_codes(w, edited, (2, 5), NUM_WS).reshape(-1, NUM_WS, bundle.w_dim)
    expected = run_single(sessions["scorer"], run_single(sessions["synthesis"], codes))
    np.testing.assert_allclose(out["edit_scores"][0, 0], expected, atol=1e-4)
