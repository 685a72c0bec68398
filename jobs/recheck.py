"""Re-apply pass cutoffs to stored per-case correlations, without re-running anything.

    python -m jobs.recheck --run RUN --cutoffs 0.90,0.90,0.88
    python -m jobs.recheck --reference-csv test_result.csv --cutoffs eyes=0.90,mouth=0.90,pose=0.88

Reads RUN/cases.parquet (the method the test ran is read from it), or the reference
implementation's test_result.csv (columns case, vector_no, passed as O/X, group_name,
eyes_corr, mouth_corr, pose_corr, sum_abs_corr, optionally passed_rechecked), and prints
the same summary as the test. Nothing is written.
"""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from compute.recheck import recheck, reference_cases, stored_cases
from jobs.cli import location_arg, parser, run_location, run_main
from jobs.cli.method_args import parse_cutoffs
from vectors.method_values import PASS_RULES
from vectors.summary import results_table


def main(argv=None) -> None:
    p = parser(__doc__.split("\n")[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=location_arg, help="run directory with cases.parquet")
    source.add_argument("--reference-csv", type=Path, help="the reference implementation's test_result.csv")
    p.add_argument("--cutoffs", default=None,
                   help="|corr| cutoffs: NAME=C,... or one number per property (default: the test's own)")
    p.add_argument("--max-spread", type=float, default=None, help="also require consistency <= this")
    p.add_argument("--pass-rule", metavar="{" + ",".join(PASS_RULES) + "}", default=None,
                   help="abs: |corr| >= cutoff; signed: corr >= cutoff (default: the test's own)")
    args = p.parse_args(argv)
    args.run = run_location(args.run, write=False)
    stored = stored_cases(args.run) if args.run else reference_cases(args.reference_csv)
    method = stored.method
    if args.cutoffs is not None:
        method = method.with_cutoffs(parse_cutoffs(args.cutoffs, method.property_names))
    if args.max_spread is not None:
        method = replace(method, max_spread=args.max_spread)
    if args.pass_rule is not None:
        method = replace(method, pass_rule=args.pass_rule)
    print(results_table(recheck(stored, method), stored.accuracy))
    if stored.note:
        print(f"({stored.note})")


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
