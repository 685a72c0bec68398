"""Render picked faces through an editor with chosen property weights.

    python -m jobs.render --picks picks.csv --bundle EDITOR_DIR --set eyes=0.8,mouth=-0.5 --out DIR
    python -m jobs.render --picks picks.csv --bundle EDITOR_DIR --sweep pose [--steps 7] --out DIR
    python -m jobs.render --picks ohlora_z_vectors.csv [--groups ohlora_z_group_names.csv] --bundle EDITOR_DIR ...

EDITOR_DIR is what `python -m jobs.export --editor RUN` wrote. Picks come from the gallery
(picks.csv; its older picks.csv and picks.json are read too) or are the reference's
z-vectors CSV with its group names. Each face keeps its picked group; properties not set
are 0. --sweep draws one strip per face over the property's tested range, each frame
labelled with its weights, and writes sweep_NAME.csv: every frame's weights and the scores
of its image. PNG files are named by case id (the reference's: by row).
"""
from __future__ import annotations

import sys
from pathlib import Path

from compute.editor import load_editor
from compute.picks import read_picks
from compute.render_picks import check_picks, parse_weights, render_picks
from compute.transfer import fetched_file
from jobs.cli import UsageError, location_arg, parser, run_location, run_main
from jobs.cli.bundles import local_bundle


def main(argv=None) -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--picks", type=location_arg, required=True,
                   help="picks.csv from the gallery (or its older picks.json), or the reference's z-vectors CSV")
    p.add_argument("--groups", type=Path, default=None,
                   help="the reference's group names CSV beside its z-vectors CSV (without it the editor "
                        "finds each face's group)")
    p.add_argument("--bundle", type=location_arg, required=True,
                   help="editor directory, or s3://bucket/prefix (python -m jobs.export --editor RUN)")
    p.add_argument("--set", dest="weights", default=None, metavar="NAME=W,...",
                   help="property weights, e.g. eyes=0.8,mouth=-0.5; unset properties are 0")
    p.add_argument("--sweep", default=None, metavar="NAME",
                   help="draw each face over this property's tested range, frames side by side and labelled with "
                        "their weights; also writes sweep_NAME.csv of every frame's weights and scores")
    p.add_argument("--steps", type=int, default=7, help="frames per --sweep strip")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads")
    p.add_argument("--out", type=location_arg, required=True,
                   help="directory (or s3://bucket/prefix) for the PNG files (and the sweep's CSV)")
    args = p.parse_args(argv)
    if args.steps < 2:
        raise UsageError(f"--steps must be at least 2, got {args.steps}")
    out = run_location(args.out)  # a store that cannot be written: refused before any work
    editor = load_editor(local_bundle(args.bundle))  # an editor in a store: fetched once per manifest
    weights, warnings = parse_weights(args.weights, editor)
    with fetched_file(args.picks) as picks_path:  # a picks file in an object store: read from a local copy
        picks = read_picks(picks_path, args.groups)
    warnings += check_picks(picks, editor)
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    written = render_picks(editor, picks, weights, out, args.sweep, args.steps, args.threads)
    shown = ", ".join(f"{k}={v:g}" for k, v in weights.items() if args.sweep != k)
    pngs = [p for p in written if p.suffix == ".png"]
    print(f"wrote {len(pngs)} PNG files to {args.out} ({shown}"
          + (f"; {args.sweep} swept over {args.steps} steps, weights and scores in "
             f"{written[-1].name}" if args.sweep else "") + ")")


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
