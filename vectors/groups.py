"""Groups and the top/bottom-k selection of SPEC.md steps 2-3.

Pure NumPy. A sample's group is three letters from hair_color, hair_length and
background_mean, in that order: 'h' if the score is >= that score's median, else 'l'.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

GROUPING_SCORES = ("hair_color", "hair_length", "background_mean")
PROPERTIES = ("eyes", "mouth", "pose")
GROUP_NAMES = tuple(a + b + c for a in "hl" for b in "hl" for c in "hl")  # hhh, hhl, ..., lll
GLOBAL = "all"  # the single group of a fit without grouping (one direction per property)
VALIDATION_FRACTION = 0.2


def check_ratio(ratio: float) -> float:
    if not (isinstance(ratio, (int, float)) and 0 < ratio <= 0.5):
        raise ValueError(f"ratio must be in (0, 0.5], got {ratio!r}")
    return float(ratio)


def measured_medians(scores: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Medians of the grouping scores over these samples (balanced groups)."""
    return {name: float(np.median(scores[name])) for name in GROUPING_SCORES}


def assign_groups(scores: Mapping[str, np.ndarray], medians: Mapping[str, float]) -> np.ndarray:
    """Group name per sample, shape (n,), dtype '<U3'."""
    missing = [s for s in GROUPING_SCORES if s not in scores or s not in medians]
    if missing:
        raise ValueError(f"grouping needs scores and medians for {', '.join(missing)}")
    letters = [np.where(np.asarray(scores[s]) >= medians[s], "h", "l") for s in GROUPING_SCORES]
    return np.char.add(np.char.add(letters[0], letters[1]), letters[2])


def group_sizes(groups: np.ndarray) -> dict[str, int]:
    return {g: int((groups == g).sum()) for g in GROUP_NAMES}


@dataclass(frozen=True)
class Selection:
    """Row indices (into the full sample table) of one (group, property) fit."""

    group: str
    prop: str
    group_size: int
    k: int
    train_pos: np.ndarray
    train_neg: np.ndarray
    val_pos: np.ndarray
    val_neg: np.ndarray


def select_extremes(values: np.ndarray, rows: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray, int]:
    """The k rows with the largest values and the k with the smallest, k = max(int(ratio * n), 1).

    Ties break by row order (stable sort), so the selection is deterministic.
    """
    ratio = check_ratio(ratio)
    k = max(int(ratio * len(rows)), 1)
    order = rows[np.argsort(values[rows], kind="stable")]
    return order[::-1][:k], order[:k], k


def select(scores: Mapping[str, np.ndarray], groups: np.ndarray, group: str, prop: str,
           ratio: float, seed: int) -> Selection:
    """Top/bottom-k of `prop` within `group`, split 80/20 per class with a seeded shuffle.

    The shuffle's stream is a function of (seed, group, property) only, so a fit does not
    depend on which other fits run or in what order.
    """
    rows = np.flatnonzero(groups == group)
    top, bottom, k = select_extremes(np.asarray(scores[prop]), rows, ratio)
    n_val = max(1, int(round(VALIDATION_FRACTION * k)))
    if k - n_val < 2:
        raise ValueError(
            f"group '{group}' has {len(rows)} samples: ratio {ratio} gives k={k} per class, too few "
            f"for 2 training and 1 validation sample per class; use a larger n or ratio")
    group_index = len(GROUP_NAMES) if group == GLOBAL else GROUP_NAMES.index(group)
    rng = np.random.default_rng([seed, group_index, PROPERTIES.index(prop)])
    top, bottom = rng.permutation(top), rng.permutation(bottom)
    return Selection(group, prop, len(rows), k, top[n_val:], bottom[n_val:], top[:n_val], bottom[:n_val])
