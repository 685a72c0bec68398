"""Draw a grid of sample faces from a model bundle, with their scores.

    python -m jobs.faces [--bundle DIR] [--count 16] [--seed 0] [--out faces.png]

Runs entirely in ONNX Runtime: codes -> mapping -> synthesis -> scorer. Without --bundle it
uses the built-in synthetic model, exporting it first if needed.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from compute.plots import fig_text, pyplot, to_rgb
from compute.seeding import draw_codes
from compute.sessions import make_session, run_single, synthesize
from compute.storage import Place, as_place, check_reachable
from jobs.cli import UsageError, location_arg, parser, run_main
from jobs.cli.bundles import resolve_bundle


def render_faces(bundle, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images [count, 3, R, R] in [-1, 1] and scores [count, P] for codes (seed, 0..count-1)."""
    mapping, synthesis, scorer = (make_session(bundle.graph_bytes(s), threads=2)
                                  for s in ("mapping", "synthesis", "scorer"))
    z = draw_codes(seed, np.arange(count), bundle.z_dim)
    images = synthesize(synthesis, run_single(mapping, z))
    return images, run_single(scorer, images)


def save_grid(images: np.ndarray, scores: np.ndarray, names: list[str], out: Place) -> None:
    plt = pyplot()
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols, 2.3 * rows), squeeze=False)
    shown = range(min(3, len(names)))  # the first scores: space for three in a title
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, score in zip(axes.flat, images, scores):
        ax.imshow(to_rgb(image))
        ax.set_title(fig_text(" ".join(f"{names[i][:1]}{score[i]:+.1f}" for i in shown)), fontsize=8)
    fig.suptitle(fig_text("sample faces (scores: " + ", ".join(f"{names[i][:1]}={names[i]}" for i in shown) + ")"),
                 fontsize=9)
    fig.tight_layout()
    out.parent.mkdir()
    with out.open_write() as f:  # whole or not at all; never through a planted name or symlink
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def main(argv=None) -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--bundle", type=location_arg, default=None, help="bundle directory (default: built-in model)")
    p.add_argument("--count", type=int, default=16, help="number of faces")
    p.add_argument("--seed", type=int, default=0, help="code seed; face i is code (seed, i)")
    p.add_argument("--out", type=location_arg, default=Path("runs/faces.png"), help="PNG to write (or s3://...)")
    args = p.parse_args(argv)
    if not 1 <= args.count <= 1024:
        raise UsageError(f"--count must be in [1, 1024], got {args.count}")
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    out = as_place(args.out)
    if out.suffix.lower() != ".png" or out.is_dir():
        raise UsageError(f"--out must name a .png file, got {args.out}")
    check_reachable(out.parent)
    bundle = resolve_bundle(args.bundle)
    images, scores = render_faces(bundle, args.count, args.seed)
    save_grid(images, scores, bundle.score_names, out)
    print(f"wrote {args.out}: {args.count} faces from {bundle.path}")


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
