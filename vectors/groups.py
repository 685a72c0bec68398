"""Groups and the top/bottom-k selection (method steps 2-3). Pure NumPy.

A sample's group is one letter per grouping score, in the method's order: 'h' if the
score is >= that score's median, else 'l'. With no grouping score every sample is in the
one group 'all'.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from vectors.errors import InputError
from vectors.method import GLOBAL_GROUP, Method


def measured_medians(scores: Mapping[str, np.ndarray], group_by: Sequence[str]) -> dict[str, float]:
    """Medians of the grouping scores over these samples (balanced groups)."""
    return {name: float(np.median(scores[name])) for name in group_by}


def group_medians(method: Method, manifest_medians: Mapping[str, float],
                  scores: Mapping[str, np.ndarray]) -> dict[str, float]:
    """The medians the method asks for: the bundle's fixed ones, or measured on `scores`."""
    if method.medians == "samples":
        return measured_medians(scores, method.group_by)
    missing = [g for g in method.group_by if g not in manifest_medians]
    if missing:
        raise InputError(f"the bundle records no fixed median for {', '.join(missing)}; "
                         f"measure the medians on the samples instead (medians: samples)")
    return {g: float(manifest_medians[g]) for g in method.group_by}


def assign_groups(scores: Mapping[str, np.ndarray], group_by: Sequence[str],
                  medians: Mapping[str, float]) -> np.ndarray:
    """Group name per sample, shape (n,), a string dtype; 'all' for every sample without grouping."""
    missing = [s for s in group_by if s not in scores or s not in medians]
    if missing:
        raise InputError(f"grouping needs scores and medians for {', '.join(missing)}")
    if not group_by:
        n = len(next(iter(scores.values()))) if scores else 0
        return np.full(n, GLOBAL_GROUP)
    names = np.full(len(np.asarray(scores[group_by[0]])), "", dtype=f"<U{len(group_by)}")
    for s in group_by:
        names = np.char.add(names, np.where(np.asarray(scores[s]) >= medians[s], "h", "l"))
    return names


def groups_of_matrix(scores: np.ndarray, score_names: Sequence[str], group_by: Sequence[str],
                     medians: Mapping[str, float]) -> np.ndarray:
    """assign_groups for a (N, P) score matrix whose columns are `score_names`."""
    if not group_by:
        return np.full(len(scores), GLOBAL_GROUP)
    columns = {name: scores[:, list(score_names).index(name)] for name in group_by}
    return assign_groups(columns, group_by, medians)


def group_sizes(groups: np.ndarray, names: Sequence[str]) -> dict[str, int]:
    return {g: int((groups == g).sum()) for g in names}


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
    rows: np.ndarray | None = None  # every row of the group, ascending (the ridge estimator uses them all)


def select_extremes(values: np.ndarray, rows: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray, int]:
    """The k rows with the largest values and the k with the smallest, k = max(int(ratio * n), 1).

    Ties break by row order (stable sort), so the selection is deterministic.
    """
    if not (isinstance(ratio, (int, float)) and 0 < ratio <= 0.5):
        raise InputError(f"ratio must be in (0, 0.5], got {ratio!r}")
    k = max(int(ratio * len(rows)), 1)
    order = rows[np.argsort(values[rows], kind="stable")]
    return order[::-1][:k], order[:k], k


def select(scores: Mapping[str, np.ndarray], groups: np.ndarray, group: str, prop: str,
           method: Method, seed: int) -> Selection:
    """Top/bottom-k of `prop` within `group`, each class split train/validation with a seeded shuffle.

    The shuffle's stream is a function of (seed, group index, property index) only, so a
    fit does not depend on which other fits run or in what order.
    """
    rows = np.flatnonzero(groups == group)
    top, bottom, k = select_extremes(np.asarray(scores[prop]), rows, method.ratio)
    n_val = max(1, int(round(method.validation_fraction * k)))
    if k - n_val < 2:
        advice = ("the bundle's fixed medians may not fit this model: use --medians samples, or a larger n or ratio"
                  if method.medians != "samples" and method.group_by else "use a larger n or ratio")
        raise InputError(
            f"group '{group}' has {len(rows)} samples: ratio {method.ratio} gives k={k} per class, too few "
            f"for 2 training and 1 validation sample per class; {advice}")
    rng = np.random.default_rng([seed, method.group_names.index(group), method.property_names.index(prop)])
    top, bottom = rng.permutation(top), rng.permutation(bottom)
    return Selection(group, prop, len(rows), k, top[n_val:], bottom[n_val:], top[:n_val], bottom[:n_val], rows)


def plan_selections(scores: Mapping[str, np.ndarray], groups: np.ndarray, method: Method, seed: int) -> list:
    """Every (group, property) selection of the method; a too-small group fails before any fit."""
    return [select(scores, groups, g, p, method, seed) for g in method.group_names for p in method.property_names]


def check_fixed_medians(method: Method, manifest_medians: Mapping[str, float], scores: Mapping[str, np.ndarray],
                        n: int) -> None:
    """From the first samples' scores, refuse at once fixed medians that would leave a group
    too small for the method at n samples (the fit would fail only after all of them are drawn).

    A group's share of these samples, times n, is its projected size; it needs k >= 3 per
    class (2 training and 1 validation). Fixed medians measured on another model can leave
    whole groups empty however large n is; the medians measured on the samples cannot."""
    if method.medians == "samples" or not method.group_by or not len(next(iter(scores.values()), [])):
        return
    medians = group_medians(method, manifest_medians, scores)
    groups = assign_groups(scores, method.group_by, medians)
    seen = len(groups)
    short = {g: c for g, c in group_sizes(groups, method.group_names).items()
             if int(method.ratio * (c / seen) * n) < 3}
    if not short:
        return
    fixed = ", ".join(f"{g} {medians[g]:.3g}" for g in method.group_by)
    measured = ", ".join(f"{g} {v:.3g}" for g, v in measured_medians(scores, method.group_by).items())
    counts = ", ".join(f"'{g}' {c}" for g, c in short.items())
    raise InputError(f"the bundle's fixed medians ({fixed}) do not fit this model: of the first {seen:,} samples, "
                     f"group {counts} (too few for ratio {method.ratio} at n = {n:,}); its samples' medians are "
                     f"{measured}: use --medians samples (the samples drawn so far are kept)")
