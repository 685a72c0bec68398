"""Export a generator + scorer pair to an ONNX model bundle.

    python -m jobs.export --model synthetic|synthetic-attributes --out DIR [--resolution 64] [--weights W.pt]
    python -m jobs.export --model ohlora --generator G.pth --scorer C.pth --out DIR
    python -m jobs.export --editor RUN --out DIR [--bundle B]

`synthetic` is the built-in model; `synthetic-attributes` the same world with a scorer
that uses other score names and adds the identity traits; `ohlora` is the reference's genforce StyleGAN (256 px,
3-dim label) with its Property Score CNN, loaded strictly from the user's checkpoints.
`--editor RUN` writes instead a deployable editor of a tested run (compute/editor.py): one
ONNX graph that edits a face along the run's directions, with no torch involved.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from jobs.cli import UsageError, parser, run_main


def main(argv=None) -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--model", default=argparse.SUPPRESS,
                   help="synthetic, synthetic-attributes (other score names, identity traits as extra "
                        "outputs) or ohlora (default: synthetic)")
    p.add_argument("--out", type=Path, required=True, help="bundle (or --editor: editor) directory to create")
    p.add_argument("--resolution", type=int, default=None,
                   help="synthetic: image size (multiple of 64; default 64)")
    p.add_argument("--weights", type=Path, default=None,
                   help="synthetic: scorer weights (default: the shipped ones)")
    p.add_argument("--generator", type=Path, default=None,
                   help="ohlora: generator checkpoint (stylegan_gen_vector_find_v7.pth)")
    p.add_argument("--scorer", type=Path, default=None,
                   help="ohlora: Property Score CNN checkpoint (stylegan_gen_fine_tuned_v2_cnn.pth)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--editor", type=Path, default=None, metavar="RUN",
                   help="write the editor of this tested run instead of a model bundle")
    p.add_argument("--bundle", type=Path, default=None,
                   help="--editor: the run's model bundle (default: the built-in bundle whose hash the run recorded)")
    args = p.parse_args(argv)
    if args.editor is not None:
        return export_editor(args)
    if args.bundle is not None:
        raise UsageError("--bundle goes with --editor RUN (a model bundle is exported from --model)")
    args.model = getattr(args, "model", "synthetic")
    started = time.perf_counter()
    print(f"exporting {args.model} to {args.out} (torch -> ONNX, then a parity check in ONNX Runtime)",
          flush=True)
    from export.models import export_model  # torch only now: --help and input errors stay fast
    from export.onnx_bundle import ExportError

    try:
        manifest = export_model(args.model, args.out, args.resolution, args.weights, args.overwrite,
                                args.generator, args.scorer)
    except ExportError as exc:
        raise UsageError(str(exc)) from exc
    parity = manifest["parity"]
    print(f"wrote bundle {args.out} ({manifest['model']}, {manifest['resolution']} px, "
          f"scores {', '.join(manifest['score_names'])}) in {time.perf_counter() - started:.0f}s")
    print(f"parity torch vs ONNX Runtime on {parity['codes']} codes: max abs diff "
          f"w {parity['w']:.2e}, image {parity['image']:.2e}, scores {parity['scores']:.2e} "
          f"(tolerance {parity['tolerance']:g})")


def export_editor(args) -> None:
    given = [f"--{k}" for k in ("model", "resolution", "weights", "generator", "scorer")
             if getattr(args, k, None) is not None]
    if given:
        raise UsageError(f"{', '.join(given)} belong(s) to a model bundle export; --editor RUN exports a run's editor "
                         f"(its model bundle goes in --bundle)")
    from compute.editor import export_editor as write_editor

    started = time.perf_counter()
    manifest = write_editor(args.editor, args.out, args.bundle, args.overwrite)
    parity = manifest["parity"]
    print(f"wrote editor {args.out} (editor.onnx, editor_fp16.onnx, manifest.json) of run {args.editor} in "
          f"{time.perf_counter() - started:.0f}s: space {manifest['space']}, properties "
          f"{', '.join(p['name'] for p in manifest['properties'])}, model {manifest['source_bundle']['model']}")
    print(f"groups ({', '.join(manifest['group_by']) or 'no grouping'}): {' '.join(manifest['groups'])}")
    print(f"parity vs the test stage on {len(parity['case_ids'])} cases x {len(parity['weights'])} weights: "
          f"max abs diff image {parity['image_max_abs_diff']:.2e}, scores {parity['scores_max_abs_diff']:.2e} "
          f"(tolerance {parity['tolerance']:g}); groups found = stored for {parity['groups_equal']} of "
          f"{len(parity['case_ids'])}; fp16 vs fp32 image {parity['fp16_image_max_abs_diff']:.2e}")


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
