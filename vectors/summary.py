"""The run summary (the seeds' results table) from per-case statistics, and its text form.
Pure Python and NumPy: the test stage, the grid and `recheck` all summarise through here."""
from __future__ import annotations

import numpy as np

from vectors.method import Method
from vectors.stats import finite_mean, negative_counts


def summarize(groups: np.ndarray, stats: dict[str, np.ndarray], passed: np.ndarray, method: Method) -> dict:
    """Per property the signed mean corr (`mean_corr`), the mean of |corr| (`mean_abs_corr`) and
    the cases with a negative corr, overall and among the passed ones; the sum of mean |corr|;
    passes overall and per group under the method's pass rule."""
    n = len(groups)
    props = method.property_names
    known = set(method.group_names)
    summary = {
        "cases": int(n),
        "properties": list(props),
        "mean_corr": {p: finite_mean(stats[f"corr_{p}"]) for p in props},
        "mean_abs_corr": {p: finite_mean(np.abs(stats[f"corr_{p}"])) for p in props},
        "negative_corr": negative_counts(stats, props),
        "negative_corr_passed": negative_counts({k: v[passed] for k, v in stats.items() if k.startswith("corr_")},
                                                props),
        "passed": int(passed.sum()),
        "passed_ratio": float(passed.mean()) if n else 0.0,
        "degenerate": int(stats["degenerate"].sum()),
        "cutoffs": method.cutoffs,
        "pass_rule": method.pass_rule,
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
    summary, where recorded), the signed mean corr, the mean |corr| and the cutoff; then passes
    under the pass rule, and the cases whose corr is negative (summaries made before these
    were recorded show '-')."""
    width = max(10, *(len(p) for p in summary["properties"]))
    stability = summary.get("stability") or {}
    mean_abs = summary.get("mean_abs_corr") or {}
    lines = ["", (f"{'property':{width}s} {'SVM val acc':>11s} {'stability':>9s} {'mean corr':>10s} "
                  f"{'mean |corr|':>11s} {'cutoff':>7s}")]
    for p in summary["properties"]:
        acc = f"{accuracy[p]:.4f}" if accuracy and accuracy.get(p) is not None else "-"
        stable = f"{stability[p]:.4f}" if stability.get(p) is not None else "-"
        magnitude = f"{mean_abs[p]:.4f}" if mean_abs.get(p) is not None else "-"
        lines.append(f"{p:{width}s} {acc:>11s} {stable:>9s} {summary['mean_corr'][p]:10.4f} {magnitude:>11s} "
                     f"{summary['cutoffs'][p]:7.2f}")
    rule = "corr >= cutoff" if summary.get("pass_rule") == "signed" else "|corr| >= cutoff"
    lines.append(f"sum of mean |corr|: {summary['sum_mean_abs_corr']:.4f}   passed: {summary['passed']} / "
                 f"{summary['cases']} ({100 * summary['passed_ratio']:.1f}%; {rule})"
                 + (f", {summary['degenerate']} degenerate" if summary["degenerate"] else ""))
    negative = summary.get("negative_corr") or {}
    if any(negative.values()):
        passed = summary.get("negative_corr_passed") or {}
        lines.append("cases with a negative corr (the edit moved the score the wrong way): " + "  ".join(
            f"{p} {n}" + (f" ({passed[p]} passed)" if passed.get(p) else "") for p, n in negative.items() if n))
    unconverged = summary.get("fits_not_converged") or []
    if unconverged:
        lines.append(f"{len(unconverged)} fits did not converge: {', '.join(unconverged[:8])}"
                     + (", ..." if len(unconverged) > 8 else ""))
    lines.append("passes per group: " + "  ".join(f"{g} {v['passed']}/{v['cases']}"
                                                   for g, v in summary["per_group"].items()))
    return "\n".join(lines)
