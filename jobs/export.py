"""Export a generator + scorer pair to an ONNX model bundle.

    python -m jobs.export --model synthetic --out DIR [--resolution 64] [--weights W.pt]
    python -m jobs.export --model ohlora --generator G.pth --scorer C.pth --out DIR

`synthetic` is the built-in model; `ohlora` is the reference's genforce StyleGAN (256 px,
3-dim label) with its Property Score CNN, loaded strictly from the user's checkpoints.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from jobs.cli import UsageError, parser, run_main

MODELS = ("synthetic", "ohlora")


def _check_options(model: str, resolution, weights, generator, scorer) -> None:
    if model not in MODELS:
        raise UsageError(f"unknown --model {model!r}; choose from: {', '.join(MODELS)}")
    if model == "synthetic" and (generator or scorer):
        raise UsageError("--generator and --scorer are for --model ohlora; the synthetic model "
                         "takes --weights (scorer) and --resolution")
    if model == "ohlora":
        if resolution or weights:
            raise UsageError("--resolution and --weights are for --model synthetic; the ohlora "
                             "model is 256 px and takes --generator and --scorer")
        if not generator or not scorer:
            raise UsageError("--model ohlora needs both checkpoints: --generator G.pth --scorer C.pth")


def export_model(model: str, out: Path, resolution: int | None = None, weights: Path | None = None,
                 overwrite: bool = False, generator: Path | None = None, scorer: Path | None = None) -> dict:
    """Export a known model to `out`; returns the manifest. Raises UsageError on bad input."""
    _check_options(model, resolution, weights, generator, scorer)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UsageError(f"--out {out} exists and is not empty; pass --overwrite to replace it")
    # torch is imported here, not at module level, so `--help` and input errors stay fast.
    from export.checkpoints import CheckpointError
    from export.onnx_bundle import ExportError, export_bundle

    try:
        if model == "ohlora":
            from export.ohlora import ohlora_spec

            spec = ohlora_spec(generator, scorer)
        else:
            from export.scorer import WEIGHTS
            from export.synthetic import DEFAULT_RESOLUTION, synthetic_spec

            spec = synthetic_spec(resolution or DEFAULT_RESOLUTION, weights or WEIGHTS)
        return export_bundle(spec, out, overwrite=overwrite)
    except (CheckpointError, ExportError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    except OSError as exc:
        raise UsageError(f"cannot write --out {out}: {exc.strerror or exc}") from exc


def main(argv=None) -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--model", default="synthetic", help=f"one of: {', '.join(MODELS)}")
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
    manifest = export_model(args.model, args.out, args.resolution, args.weights, args.overwrite,
                            args.generator, args.scorer)
    parity = manifest["parity"]
    print(f"wrote bundle {args.out} ({manifest['model']}, {manifest['resolution']} px, "
          f"scores {', '.join(manifest['score_names'])}) in {time.perf_counter() - started:.0f}s")
    print(f"parity torch vs ONNX Runtime on {parity['codes']} codes: max abs diff "
          f"w {parity['w']:.2e}, image {parity['image']:.2e}, scores {parity['scores']:.2e} "
          f"(tolerance {parity['tolerance']:g})")


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
