"""Re-apply pass cutoffs to stored per-case correlations, without re-running anything.

    python -m jobs.recheck --run RUN --cutoffs 0.90,0.90,0.88
    python -m jobs.recheck --reference-csv test_result.csv --cutoffs 0.90,0.90,0.88

Reads RUN/cases.parquet, or the reference implementation's test_result.csv (columns case,
vector_no, passed as O/X, group_name, eyes_corr, mouth_corr, pose_corr, sum_abs_corr), and
prints the same summary as the test. Nothing is written.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from jobs.cli import UsageError, parser, run_main
from jobs.test import CASES_FILE, SUMMARY_FILE, parse_floats, results_table
from vectors.groups import PROPERTIES
from vectors.stats import DEFAULT_CUTOFFS, passes, summarize

REFERENCE_COLUMNS = ("case", "vector_no", "passed", "group_name", "eyes_corr", "mouth_corr", "pose_corr",
                     "sum_abs_corr")


def stored_cases(run: Path) -> tuple[np.ndarray, dict, dict | None]:
    path = run / CASES_FILE
    if not path.is_file():
        raise UsageError(f"no test results at {path}: run `python -m jobs.test --run {run}` first")
    table = pq.read_table(path)
    stats = {c: table[c].to_numpy() for c in ("corr_eyes", "corr_mouth", "corr_pose", "consistency", "degenerate")}
    summary_path = run / SUMMARY_FILE
    accuracy = json.loads(summary_path.read_text()).get("svm_val_accuracy") if summary_path.is_file() else None
    return np.array(table["group"].to_pylist()), stats, accuracy


def reference_cases(path: Path) -> tuple[np.ndarray, dict, int]:
    """(groups, stats, the file's own pass count) from the reference's test_result.csv."""
    if not path.is_file():
        raise UsageError(f"reference test results not found: {path}")
    try:
        table = pacsv.read_csv(path)
    except Exception as exc:  # pyarrow raises several types for malformed CSV
        raise UsageError(f"cannot read {path} as CSV: {exc}") from exc
    missing = [c for c in REFERENCE_COLUMNS if c not in table.column_names]
    if missing:
        raise UsageError(f"{path} lacks the reference columns {', '.join(missing)}")
    corr = {p: np.asarray(table[f"{p}_corr"].to_pylist(), dtype=np.float64) for p in PROPERTIES}
    stats = {f"corr_{p}": corr[p] for p in PROPERTIES}
    stats["consistency"] = np.full(table.num_rows, np.nan)
    stats["degenerate"] = np.isnan(np.stack(list(corr.values()))).any(axis=0)
    own = sum(1 for v in table["passed"].to_pylist() if str(v).strip().upper() == "O")
    return np.array([str(g) for g in table["group_name"].to_pylist()]), stats, own


def main(argv=None) -> None:
    p = parser(__doc__.split("\n")[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="run directory with cases.parquet")
    source.add_argument("--reference-csv", type=Path, help="the reference implementation's test_result.csv")
    p.add_argument("--cutoffs", default=",".join(map(str, DEFAULT_CUTOFFS)), help="|corr| cutoffs eyes,mouth,pose")
    p.add_argument("--max-spread", type=float, default=None, help="also require consistency <= this")
    args = p.parse_args(argv)
    cutoffs = parse_floats(args.cutoffs, "--cutoffs")
    accuracy, note = None, ""
    if args.run:
        groups, stats, accuracy = stored_cases(args.run)
    else:
        groups, stats, own = reference_cases(args.reference_csv)
        note = f"(the file itself marks {own} of {len(groups)} cases passed)"
        if args.max_spread is not None:
            raise UsageError("--max-spread needs consistency figures, which the reference CSV does not have")
    try:
        passed = passes(stats, cutoffs, args.max_spread)
        summary = summarize(groups, stats, passed, cutoffs, args.max_spread)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    print(results_table(summary, accuracy))
    if note:
        print(note)


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
