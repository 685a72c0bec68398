"""Statistics of the image generation test: per-case correlations, pass/fail and
consistency, for any edited properties and grouping scores. Pure NumPy."""
from __future__ import annotations

import numpy as np

from vectors.method import Method


def pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Correlation of one vector x (E,) with each row of y (N, E); NaN where y is constant."""
    x = np.asarray(x, dtype=np.float64) - np.mean(x)
    y = np.asarray(y, dtype=np.float64)
    y = y - y.mean(axis=1, keepdims=True)
    denom = np.sqrt((x * x).sum() * (y * y).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (y @ x) / np.where(denom > 0, denom, 1.0), np.nan)


def case_statistics(method: Method, edit_scores: np.ndarray, score_names: list[str]) -> dict[str, np.ndarray]:
    """Per case: corr of intended weight vs measured score for each edited property, the sum
    of |corr|, the spread (std over the edits) of each grouping score and their mean,
    `consistency` (NaN without grouping scores), and `degenerate` (some score never moved).

    edit_scores (N, E, P_scores) with columns in score_names order; E = method.edits_per_case.
    """
    weights = method.edit_weights()
    if edit_scores.shape[1] != len(weights):
        raise ValueError(f"edit_scores has {edit_scores.shape[1]} edits per case, the method {len(weights)}")
    out = {}
    for i, prop in enumerate(method.property_names):
        out[f"corr_{prop}"] = pearson(weights[:, i], edit_scores[:, :, score_names.index(prop)])
    corrs = np.stack([out[f"corr_{p}"] for p in method.property_names])
    out["sum_abs_corr"] = np.abs(corrs).sum(axis=0)
    spreads = [edit_scores[:, :, score_names.index(g)].std(axis=1) for g in method.group_by]
    for g, s in zip(method.group_by, spreads):
        out[f"spread_{g}"] = s
    out["consistency"] = np.mean(spreads, axis=0) if spreads else np.full(len(edit_scores), np.nan)
    out["degenerate"] = np.isnan(corrs).any(axis=0)
    return out


def passes(stats: dict[str, np.ndarray], method: Method) -> np.ndarray:
    """For every edited property |corr| >= cutoff (method.pass_rule "abs", the seeds' rule) or
    corr >= cutoff ("signed": an edit that moves the score the wrong way fails); NaN fails.
    And consistency <= max_spread if set."""
    ok = np.ones(len(stats["sum_abs_corr"]), dtype=bool)
    for prop, cut in method.cutoffs.items():
        corr = np.asarray(stats[f"corr_{prop}"], dtype=np.float64)
        with np.errstate(invalid="ignore"):
            ok &= (corr if method.pass_rule == "signed" else np.abs(corr)) >= cut
    if method.max_spread is not None:
        with np.errstate(invalid="ignore"):
            ok &= stats["consistency"] <= method.max_spread
    return ok


def finite_mean(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else float("nan")


def negative_counts(stats: dict[str, np.ndarray], properties) -> dict[str, int]:
    """{property: cases whose corr is < 0}: edits that moved the score the wrong way on the
    whole, which the seeds' |corr| rule passes when they do it consistently."""
    out = {}
    for p in properties:
        corr = np.asarray(stats[f"corr_{p}"], dtype=np.float64)
        out[p] = int((corr[np.isfinite(corr)] < 0).sum())
    return out
