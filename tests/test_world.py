"""The synthetic face world: determinism, standardised parameters, the entanglement and
group dependence it is built to have, and a renderer that draws what the parameters say."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from export.render import FaceRenderer
from export.world import EDITED, LABEL_DIM, PARAMS, W_DIM, Z_DIM, build_world
from export.world_report import measure


def _sample(world, n, seed=0):
    mapping, readout = world
    z = torch.randn(n, Z_DIM + LABEL_DIM, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        w = mapping(z)
        return z, w, readout(w)


def test_world_is_a_pure_function_of_its_seed(world):
    mapping, readout = build_world()
    for mine, theirs in ((mapping, world[0]), (readout, world[1])):
        for (name, a), (_, b) in zip(mine.state_dict().items(), theirs.state_dict().items()):
            assert torch.equal(a, b), name


def test_mapping_shapes_and_reference_structure(world):
    mapping, _ = world
    assert mapping.label_embed.weight.shape == (16, LABEL_DIM)
    assert [tuple(d.weight.shape) for d in mapping.dense] == [(W_DIM, Z_DIM + 16)] + [(W_DIM, W_DIM)] * 7
    z, w, params = _sample(world, 8)
    assert w.shape == (8, W_DIM) and params.shape == (8, len(PARAMS))


def test_true_parameters_are_standardised(world):
    _, _, params = _sample(world, 8000, seed=3)
    assert np.allclose(params.mean(0).numpy(), 0, atol=0.08)
    assert np.allclose(params.std(0).numpy(), 1, atol=0.08)


def test_properties_are_far_more_linear_in_w_than_in_z_and_turn_with_the_group():
    m = measure(n=8000, seed=1)
    for name in PARAMS:
        assert m["r2_w"][name] > m["r2_z"][name] + 0.2, name
    # Grouping and identity parameters are linear in w; edited ones carry interactions.
    for name in PARAMS[3:]:
        assert m["r2_w"][name] > 0.99, name
    for name in EDITED:
        cos = np.array(m["cosines"][name])
        assert (cos < 0.8).all(), (name, cos)  # each group's direction differs from the global one
    assert min(m["group_sizes"]) > 0.08 * 8000  # medians at 0 split groups roughly evenly


def test_moving_w_along_a_direction_moves_its_parameter(world):
    mapping, readout = world
    _, w, params = _sample(world, 64, seed=4)
    for i, name in enumerate(PARAMS[3:], start=3):
        moved = readout(w + 1.0 * readout.directions[:, i])
        change = (moved - params)[:, i]
        assert (change > 0.5).all(), name


@pytest.mark.parametrize("resolution", [64, 256])
def test_renderer_output_range_and_shape(world, resolution):
    _, _, params = _sample(world, 4)
    with torch.no_grad():
        image = FaceRenderer(resolution)(params)
    assert image.shape == (4, 3, resolution, resolution)
    assert image.min() >= -1 and image.max() <= 1


def _region_brightness(params, name, value, rows, cols, resolution=64):
    p = params.clone()
    p[:, PARAMS.index(name)] = value
    with torch.no_grad():
        image = FaceRenderer(resolution)(p)
    return image[:, :, rows, cols].mean().item(), image


def test_renderer_draws_the_parameters(world):
    _, _, params = _sample(world, 16, seed=5)
    # Open eyes show white sclera and dark pupils: contrast in the eye band rises.
    eyes_rows, mouth_rows, all_cols = slice(26, 34), slice(41, 51), slice(16, 48)
    _, closed = _region_brightness(params, "eyes", -3.0, eyes_rows, all_cols)
    _, opened = _region_brightness(params, "eyes", 3.0, eyes_rows, all_cols)
    band = (slice(None), slice(None), eyes_rows, all_cols)
    assert (opened[band].std(dim=(1, 2, 3)) > closed[band].std(dim=(1, 2, 3)) + 0.02).all()
    # An open mouth shows its dark inside.
    shut, _ = _region_brightness(params, "mouth", -3.0, mouth_rows, all_cols)
    wide, _ = _region_brightness(params, "mouth", 3.0, mouth_rows, all_cols)
    assert wide < shut - 0.05
    dark, _ = _region_brightness(params, "background_mean", -3.0, slice(0, 4), slice(0, 4))
    bright, _ = _region_brightness(params, "background_mean", 3.0, slice(0, 4), slice(0, 4))
    assert bright > dark + 0.8
    # Turning the head to the right moves the dark nose and pupils to the right half.
    _, left = _region_brightness(params, "pose", -3.0, slice(0, 1), slice(0, 1))
    _, right = _region_brightness(params, "pose", 3.0, slice(0, 1), slice(0, 1))
    face_band = (slice(None), slice(None), slice(24, 40))
    left_dark = (left[face_band][..., :32] - right[face_band][..., :32]).mean()
    assert left_dark > 0  # the left half is brighter once the features move right


def test_renderer_rejects_tiny_resolution():
    with pytest.raises(ValueError, match="resolution"):
        FaceRenderer(8)
