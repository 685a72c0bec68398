"""The run summary (the seeds' results table) from per-case statistics, and its text form.
Pure Python and NumPy: the test stage, the grid and `recheck` all summarise through here."""
from __future__ import annotations

import numpy as np

from vectors.method import Method
from vectors.stats import finite_mean


def summarize(groups: np.ndarray, stats: dict[str, np.ndarray], passed: np.ndarray, method: Method) -> dict:
    """Mean corr per property and the sum of mean |corr|, passes overall and per group."""
    n = len(groups)
    props = method.property_names
    known = set(method.group_names)
    summary = {
        "cases": int(n),
        "properties": list(props),
        "mean_corr": {p: finite_mean(stats[f"corr_{p}"]) for p in props},
        "mean_abs_corr": {p: finite_mean(np.abs(stats[f"corr_{p}"])) for p in props},
        "passed": int(passed.sum()),
        "passed_ratio": float(passed.mean()) if n else 0.0,
        "degenerate": int(stats["degenerate"].sum()),
        "cutoffs": method.cutoffs,
        "max_spread": method.max_spread,
        "mean_consistency": finite_mean(stats["consistency"]),
        "per_group": {g: {"cases": int((groups == g).sum()), "passed": int(passed[groups == g].sum())}
                      for g in method.group_names},
        "unknown_group_cases": int(sum(1 for g in groups if g not in known)),
    }
    summary["sum_mean_abs_corr"] = float(sum(summary["mean_abs_corr"].values()))
    return summary


def mean_by_property(properties, values, property_names) -> dict:
    """{property: mean of its finite values} over the rows of a vectors table (None where there
    are none: imported vectors, stability turned off)."""
    out = {}
    for p in property_names:
        mine = [v for v, q in zip(values, properties) if q == p and v is not None and np.isfinite(v)]
        out[p] = float(np.mean(mine)) if mine else None
    return out


mean_accuracy_by_property = mean_by_property  # {property: mean validation accuracy}


def results_table(summary: dict, accuracy: dict | None) -> str:
    """The seeds' results table: per property SVM accuracy, direction stability (from the
    summary, where recorded), mean corr and cutoff; then passes."""
    width = max(10, *(len(p) for p in summary["properties"]))
    stability = summary.get("stability") or {}
    lines = ["", f"{'property':{width}s} {'SVM val acc':>11s} {'stability':>9s} {'mean corr':>10s} {'cutoff':>7s}"]
    for p in summary["properties"]:
        acc = f"{accuracy[p]:.4f}" if accuracy and accuracy.get(p) is not None else "-"
        stable = f"{stability[p]:.4f}" if stability.get(p) is not None else "-"
        lines.append(f"{p:{width}s} {acc:>11s} {stable:>9s} {summary['mean_corr'][p]:10.4f} "
                     f"{summary['cutoffs'][p]:7.2f}")
    lines.append(f"sum of mean |corr|: {summary['sum_mean_abs_corr']:.4f}   passed: {summary['passed']} / "
                 f"{summary['cases']} ({100 * summary['passed_ratio']:.1f}%)"
                 + (f", {summary['degenerate']} degenerate" if summary["degenerate"] else ""))
    lines.append("passes per group: " + "  ".join(f"{g} {v['passed']}/{v['cases']}"
                                                   for g, v in summary["per_group"].items()))
    return "\n".join(lines)
