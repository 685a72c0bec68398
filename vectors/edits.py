"""Applying an edit to latent codes: code + sum over properties of weight x direction.

The one place the method's edit rule lives; the generation test, the report's image
grids and anything that renders an edited face call it. Pure NumPy.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from vectors.errors import InputError
from vectors.method import GLOBAL_GROUP


def direction_matrices(directions: Mapping[tuple[str, str], np.ndarray], properties) -> dict[str, np.ndarray]:
    """{group: (P, D) float32, rows in `properties` order} from {(group, property): (D,) vector}."""
    groups = sorted({g for g, _ in directions})
    missing = [f"{g}/{p}" for g in groups for p in properties if (g, p) not in directions]
    if missing:
        raise InputError(f"the vectors lack directions for {', '.join(missing[:6])}"
                         f"{' ...' if len(missing) > 6 else ''}")
    return {g: np.stack([directions[(g, p)] for p in properties]).astype(np.float32) for g in groups}


def case_directions(matrices: Mapping[str, np.ndarray], groups) -> np.ndarray:
    """(B, P, D): each case's group matrix; a set with one global group serves every group."""
    if set(matrices) == {GLOBAL_GROUP}:
        return np.broadcast_to(matrices[GLOBAL_GROUP], (len(groups), *matrices[GLOBAL_GROUP].shape))
    unknown = sorted({g for g in groups if g not in matrices})
    if unknown:
        raise InputError(f"no directions for group(s) {', '.join(unknown)} (have {', '.join(sorted(matrices))})")
    return np.stack([matrices[g] for g in groups])


def apply_edits(latents: np.ndarray, directions: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Edited codes (B, E, D) float32: latents (B, D) + weights (E, P) @ directions (B, P, D)."""
    latents = np.asarray(latents, dtype=np.float32)
    weights = np.asarray(weights, dtype=np.float32)
    if directions.shape[0] != latents.shape[0] or directions.shape[2] != latents.shape[1] \
            or directions.shape[1] != weights.shape[1]:
        raise InputError(f"edit shapes disagree: latents {latents.shape}, directions {directions.shape}, "
                         f"weights {weights.shape}")
    return latents[:, None, :] + np.einsum("ep,bpd->bed", weights, directions, dtype=np.float32)


def layer_codes(base: np.ndarray, edited: np.ndarray, layers: tuple[int, int], num_ws: int) -> np.ndarray:
    """Per-layer codes (B, E, L, D) float32 that move only synthesis layers first..last.

    base (B, D): each case's unedited w, given to every other layer; edited (B, E, D): its
    edited w (apply_edits). With every layer in range this equals broadcasting `edited`.
    """
    first, last = layers
    if not 0 <= first <= last < num_ws:
        raise InputError(f"layers {first}-{last} do not fit a synthesis with {num_ws} layers (0-{num_ws - 1})")
    base = np.asarray(base, np.float32)
    codes = np.broadcast_to(base[:, None, None, :], (len(base), edited.shape[1], num_ws, base.shape[1])).copy()
    codes[:, :, first:last + 1] = np.asarray(edited, np.float32)[:, :, None, :]
    return codes
