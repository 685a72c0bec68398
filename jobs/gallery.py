"""Write RUN/gallery.html: a static page to tick passed faces and download them as picks.

    python -m jobs.gallery --run RUN [--top 100] [--bundle DIR]

One row per passed case (the best --top by sum of |corr|) with its edit strips,
correlations (a negative one flagged) and consistency, under column heads that stay in
view and sort on a click, with a legend of the group letters; the ticked cases download
as one file, picks.csv, which jobs.render reads. The page opens from disk and fetches nothing.
"""
from __future__ import annotations

import sys

from compute.gallery import count_passed, write_gallery
from jobs.cli import UsageError, location_arg, parser, run_location, run_main
from jobs.cli.bundles import run_bundle


def main(argv=None) -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--run", type=location_arg, required=True, help="run directory with the test's cases.parquet")
    p.add_argument("--top", type=int, default=100, help="show the best N passed cases by sum of |corr|")
    p.add_argument("--bundle", type=location_arg, default=None,
                   help="model bundle the run was made with (default: the one the run recorded, else the "
                        "built-in synthetic model; checked against the bundle hash the run recorded)")
    args = p.parse_args(argv)
    args.run = run_location(args.run)
    if args.top < 1:
        raise UsageError(f"--top must be at least 1, got {args.top}")
    if not args.run.is_dir():
        raise UsageError(f"no run directory {args.run}")
    out = write_gallery(args.run, run_bundle(args.run, args.bundle), args.top)
    passed, tested = count_passed(args.run)
    print(f"wrote {out}: {min(passed, args.top)} cases to pick from ({passed} of {tested} passed)")


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
