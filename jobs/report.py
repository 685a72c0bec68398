"""Write RUN/report.md with PNG figures: the results table, per-group table, correlation
histograms, passes per group, and an image grid of the best cases' edits.

    python -m jobs.report --run RUN [--bundle DIR]
"""
from __future__ import annotations

import sys
from pathlib import Path

from compute.report import write_report
from jobs.cli import parser, run_main
from jobs.cli.bundles import resolve_bundle


def main(argv=None) -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, required=True, help="run directory with cases.parquet and summary.json")
    p.add_argument("--bundle", type=Path, default=None, help="model bundle (default: built-in synthetic model)")
    args = p.parse_args(argv)
    print(f"wrote {write_report(args.run, resolve_bundle(args.bundle))}")


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
