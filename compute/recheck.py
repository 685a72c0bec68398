"""Re-applying pass cutoffs to stored per-case correlations, without re-running anything:
from a run's cases.parquet, or from the reference implementation's test_result.csv."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv

from compute.runs import CASES_FILE, SUMMARY_FILE
from compute.storage import Place, as_place
from compute.tables import read_metadata, read_table
from vectors.errors import InputError
from vectors.method import Method
from vectors.stats import passes
from vectors.summary import summarize

REFERENCE_COLUMNS = ("case", "vector_no", "passed", "group_name", "eyes_corr", "mouth_corr", "pose_corr",
                     "sum_abs_corr")


class RecheckError(InputError):
    """Stored results that are missing, damaged or inconsistent with the method."""


@dataclass
class StoredCases:
    method: Method                # as the test ran it
    groups: np.ndarray
    stats: dict[str, np.ndarray]
    accuracy: dict | None         # mean SVM accuracy per property, where known
    note: str = ""
    stability: dict | None = None  # mean direction stability per property, where measured


def stored_cases(run: Place | Path) -> StoredCases:
    run = as_place(run)
    path = run / CASES_FILE
    if not path.is_file():
        raise RecheckError(f"no test results at {path}: run the generation test first (python -m jobs.test)")
    try:
        table = read_table(path)
        test = read_metadata(path).get("test", {})
    except Exception as exc:  # truncated or foreign files
        raise RecheckError(f"{path} is not a readable cases table ({str(exc).splitlines()[0]}); "
                           f"run the test again") from exc
    method = Method.from_dict(test["method"]) if "method" in test else Method()
    columns = [f"corr_{p}" for p in method.property_names] + ["sum_abs_corr", "consistency", "degenerate"]
    missing = [c for c in columns + ["group"] if c not in table.column_names]
    if missing:
        raise RecheckError(f"{path} lacks columns {', '.join(missing)}")
    stats = {c: table[c].to_numpy(zero_copy_only=False) for c in columns}
    summary_path = run / SUMMARY_FILE
    summary = json.loads(summary_path.read_text(limit=1 << 26)) if summary_path.is_file() else {}
    return StoredCases(method, np.array(table["group"].to_pylist()), stats, summary.get("svm_val_accuracy"),
                       stability=summary.get("stability"))


def reference_cases(path: Path) -> StoredCases:
    """The reference's test_result.csv (the seeds' vocabulary and 8 groups). Its own O/X pass
    marks, and its `passed_rechecked` column where present, are counted for comparison."""
    path = Path(path)
    if not path.is_file():
        raise RecheckError(f"reference test results not found: {path}")
    try:
        table = pacsv.read_csv(path)
    except Exception as exc:  # pyarrow raises several types for malformed CSV
        raise RecheckError(f"cannot read {path} as CSV: {str(exc).splitlines()[0]}") from exc
    missing = [c for c in REFERENCE_COLUMNS if c not in table.column_names]
    if missing:
        raise RecheckError(f"{path} lacks the reference columns {', '.join(missing)}")
    method = Method()
    try:
        corr = {p: np.asarray(table[f"{p}_corr"].to_pylist(), dtype=np.float64) for p in method.property_names}
    except (TypeError, ValueError) as exc:
        raise RecheckError(f"{path}: a correlation column has non-numeric values") from exc
    stats = {f"corr_{p}": corr[p] for p in method.property_names}
    stats["sum_abs_corr"] = np.abs(np.stack(list(corr.values()))).sum(axis=0)
    stats["consistency"] = np.full(table.num_rows, np.nan)
    stats["degenerate"] = np.isnan(np.stack(list(corr.values()))).any(axis=0)

    def marked(column: str) -> int:
        return sum(1 for v in table[column].to_pylist() if str(v).strip().upper() == "O")

    note = f"the file itself marks {marked('passed')} of {table.num_rows} cases passed"
    if "passed_rechecked" in table.column_names:
        note += f", and {marked('passed_rechecked')} in its passed_rechecked column"
    return StoredCases(method, np.array([str(g) for g in table["group_name"].to_pylist()]), stats, None, note)


def recheck(stored: StoredCases, method: Method) -> dict:
    """The summary of the stored cases under `method`'s cutoffs (and max spread)."""
    unknown = sorted({g for g in stored.groups.tolist() if g not in method.group_names})
    if unknown:
        raise RecheckError(f"cases of group(s) {', '.join(unknown[:5])} are not among the method's groups "
                           f"({', '.join(method.group_names)})")
    for key, values in stored.stats.items():
        if key.startswith("corr_") and np.any(np.abs(values[np.isfinite(values)]) > 1 + 1e-9):
            raise RecheckError(f"{key} has values outside [-1, 1]: these are not correlations")
    if method.max_spread is not None and np.isnan(stored.stats["consistency"]).all():
        raise RecheckError("a max spread needs consistency figures, which these results do not have")
    summary = summarize(stored.groups, stored.stats, passes(stored.stats, method), method)
    if stored.stability:  # the directions did not change, so neither did their stability
        summary["stability"] = stored.stability
    return summary
