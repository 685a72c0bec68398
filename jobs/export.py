"""Export a generator + scorer pair to an ONNX model bundle.

    python -m jobs.export --model synthetic|synthetic-attributes --out DIR [--resolution 64] [--weights W.pt]
    python -m jobs.export --model ohlora --generator G.pth --scorer C.pth --out DIR

`synthetic` is the built-in model; `synthetic-attributes` the same world with a scorer
that uses other score names and adds the identity traits; `ohlora` is the reference's genforce StyleGAN (256 px,
3-dim label) with its Property Score CNN, loaded strictly from the user's checkpoints.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from jobs.cli import UsageError, parser, run_main


def main(argv=None) -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--model", default="synthetic",
                   help="synthetic, synthetic-attributes (other score names, identity traits as extra "
                        "outputs) or ohlora")
    p.add_argument("--out", type=Path, required=True, help="bundle directory to create")
    p.add_argument("--resolution", type=int, default=None,
                   help="synthetic: image size (multiple of 64; default 64)")
    p.add_argument("--weights", type=Path, default=None,
                   help="synthetic: scorer weights (default: the shipped ones)")
    p.add_argument("--generator", type=Path, default=None,
                   help="ohlora: generator checkpoint (stylegan_gen_vector_find_v7.pth)")
    p.add_argument("--scorer", type=Path, default=None,
                   help="ohlora: Property Score CNN checkpoint (stylegan_gen_fine_tuned_v2_cnn.pth)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    args = p.parse_args(argv)
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


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
