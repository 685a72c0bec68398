"""Write RUN/report.md with PNG figures: the results table, per-group table, correlation
histograms, passes per group, and an image grid of the best cases' edits.

    python -m jobs.report --run RUN [--bundle DIR]

The images are drawn through the run's own bundle (recorded in RUN/run.json); --bundle is
for a run whose bundle moved, and must have the recorded manifest hash.
"""
from __future__ import annotations

import sys

from compute.report import write_report
from jobs.cli import location_arg, parser, run_location, run_main
from jobs.cli.bundles import run_bundle


def main(argv=None) -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--run", type=location_arg, required=True, help="run directory with cases.parquet and summary.json")
    p.add_argument("--bundle", type=location_arg, default=None,
                   help="model bundle (default: the one the run recorded; runs made before runs recorded it: "
                        "the built-in synthetic model); must have the run's manifest hash")
    args = p.parse_args(argv)
    args.run = run_location(args.run)
    print(f"wrote {write_report(args.run, run_bundle(args.run, args.bundle))}")


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
