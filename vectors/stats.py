"""Statistics of the image generation test: per-case correlations, pass/fail, consistency,
and the run summary (the seeds' results table). Pure NumPy."""
from __future__ import annotations

import numpy as np

from vectors.groups import GROUP_NAMES, GROUPING_SCORES, PROPERTIES

DEFAULT_CUTOFFS = (0.92, 0.88, 0.92)  # |corr| for eyes, mouth, pose (v7)


def check_cutoffs(cutoffs) -> tuple[float, float, float]:
    values = tuple(float(c) for c in cutoffs)
    if len(values) != 3 or not all(0.0 <= c <= 1.0 for c in values):
        raise ValueError(f"cutoffs must be three numbers in [0, 1] (eyes, mouth, pose), got {list(cutoffs)}")
    return values


def pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Correlation of one vector x (E,) with each row of y (N, E); NaN where y is constant."""
    x = np.asarray(x, dtype=np.float64) - np.mean(x)
    y = np.asarray(y, dtype=np.float64)
    y = y - y.mean(axis=1, keepdims=True)
    denom = np.sqrt((x * x).sum() * (y * y).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (y @ x) / np.where(denom > 0, denom, 1.0), np.nan)


def case_statistics(weights: np.ndarray, edit_scores: np.ndarray, score_names: list[str]) -> dict[str, np.ndarray]:
    """Per case: corr of intended weight vs measured score for eyes, mouth, pose; sum of
    |corr|; spread (std over the edits) of each grouping score and their mean, `consistency`.

    weights (E, 3) in PROPERTIES order; edit_scores (N, E, P) in score_names order.
    """
    out = {}
    for i, prop in enumerate(PROPERTIES):
        out[f"corr_{prop}"] = pearson(weights[:, i], edit_scores[:, :, score_names.index(prop)])
    out["sum_abs_corr"] = sum(np.abs(out[f"corr_{p}"]) for p in PROPERTIES)
    spreads = [edit_scores[:, :, score_names.index(g)].std(axis=1) for g in GROUPING_SCORES]
    for g, s in zip(GROUPING_SCORES, spreads):
        out[f"spread_{g}"] = s
    out["consistency"] = np.mean(spreads, axis=0)
    out["degenerate"] = np.isnan(np.stack([out[f"corr_{p}"] for p in PROPERTIES])).any(axis=0)
    return out


def passes(stats: dict[str, np.ndarray], cutoffs, max_spread: float | None = None) -> np.ndarray:
    """|corr| >= cutoff for all three properties (NaN fails), and consistency <= max_spread if set."""
    cutoffs = check_cutoffs(cutoffs)
    ok = np.ones(len(stats["corr_eyes"]), dtype=bool)
    for prop, cut in zip(PROPERTIES, cutoffs):
        with np.errstate(invalid="ignore"):
            ok &= np.abs(stats[f"corr_{prop}"]) >= cut
    if max_spread is not None:
        ok &= stats["consistency"] <= max_spread
    return ok


def summarize(groups: np.ndarray, stats: dict[str, np.ndarray], passed: np.ndarray, cutoffs,
              max_spread: float | None = None) -> dict:
    """The run's summary: mean corr per property and their sum, passes overall and per group."""
    n = len(groups)
    summary = {
        "cases": int(n),
        "mean_corr": {p: _mean(stats[f"corr_{p}"]) for p in PROPERTIES},
        "mean_abs_corr": {p: _mean(np.abs(stats[f"corr_{p}"])) for p in PROPERTIES},
        "passed": int(passed.sum()),
        "passed_ratio": float(passed.mean()) if n else 0.0,
        "degenerate": int(stats["degenerate"].sum()),
        "cutoffs": dict(zip(PROPERTIES, check_cutoffs(cutoffs))),
        "max_spread": max_spread,
        "mean_consistency": _mean(stats["consistency"]),
        "per_group": {g: {"cases": int((groups == g).sum()), "passed": int(passed[groups == g].sum())}
                      for g in GROUP_NAMES},
    }
    summary["sum_mean_abs_corr"] = float(sum(summary["mean_abs_corr"].values()))
    return summary


def _mean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else float("nan")
